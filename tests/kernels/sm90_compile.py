"""Compile generated kernels for a Hopper GPU (sm_90) on a machine without one (a helper script).

Run without TRITON_INTERPRET: each case's module is launched with its Triton kernels replaced by recorders,
and every recorded launch is compiled ahead of time with triton.compile for the target. Reads a JSON list
of [template, problem, config, extra launch kwargs] on stdin; writes, per launch, the kernel name, whether
its PTX waits on a predecessor, its metadata's launch_pdl and its shared memory in bytes (checked
against the GPU only when a kernel loads, so callers compare it with the target's limit).

    python tests/kernels/sm90_compile.py < cases.json
"""

from __future__ import annotations

import json
import os
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from triton.tools.tensor_descriptor import TensorDescriptor

from ds4c.kernel_templates import _blas, get
from ds4c.runtime.loader import load_source

TARGET = GPUTarget("cuda", 90, 32)
POINTERS = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int64: "*i64",
            torch.int32: "*i32", torch.int8: "*i8"}
LAUNCH_OPTIONS = {"num_warps", "num_stages", "launch_pdl"}


def _signature(fn: JITFunction, args: tuple, kwargs: dict) -> tuple[dict, dict]:
    values = dict(zip(fn.arg_names, args, strict=False))  # the rest come as keywords
    values.update({k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS})
    sig, consts = {}, {}
    for p in fn.params:
        v = values[p.name]
        if p.is_constexpr:
            sig[p.name], consts[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = POINTERS[v.dtype]
        elif isinstance(v, TensorDescriptor):
            sig[p.name] = f"tensordesc<{POINTERS[v.base.dtype][1:]}{list(v.block_shape)}>"
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i64" if abs(v) >= 2**31 else "i32"
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {p.name} of type {type(v).__name__}")
    return sig, consts


def compile_case(template: str, problem: dict, config: dict, extra: dict) -> list[dict]:
    t = get(template)
    mod = load_source(t.source(problem))
    launches = []
    kernels = {}

    class Recorder:
        def __init__(self, name: str):
            self.name = name

        def __getitem__(self, grid):
            return lambda *a, **k: launches.append((self.name, a, k))

    for owner in (mod, _blas):  # the generated module's kernels, and the vendor-BLAS path's epilogue kernel
        for name, fn in list(vars(owner).items()):
            if isinstance(fn, JITFunction):
                kernels[name] = fn
                setattr(owner, name, Recorder(name))
    try:
        outs, ins = t.make_inputs(problem, torch.device("cpu"), torch.Generator().manual_seed(0))
        mod.launch(*outs, *ins, **t.launch_kwargs(problem), **config, **extra)
    finally:
        for name, fn in kernels.items():
            for owner in (mod, _blas):
                if isinstance(vars(owner).get(name), Recorder):
                    setattr(owner, name, fn)
    out = []
    for name, args, kwargs in launches:
        fn = kernels[name]
        sig, consts = _signature(fn, args, kwargs)
        options = {k: v for k, v in kwargs.items() if k in LAUNCH_OPTIONS}
        c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=TARGET, options=options)
        out.append({"kernel": name, "launch_pdl": bool(c.metadata.launch_pdl),
                    "gdc_wait": "griddepcontrol.wait" in c.asm["ptx"], "cubin_bytes": len(c.asm["cubin"]),
                    "shared": c.metadata.shared})
    return out


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run without TRITON_INTERPRET=1: the interpreter replaces what triton.compile needs")
    cases = json.load(sys.stdin)
    json.dump([compile_case(*case) for case in cases], sys.stdout)


if __name__ == "__main__":
    main()
