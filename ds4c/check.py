"""Kernel-by-kernel checking of a bound plan graph: run it step by step and compare every kernel's output
with its template's reference on the very inputs it read. Finds the first kernel that goes wrong in a
whole model (used by the GPU check and by `ds4c.check.check_graph` in tests)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ds4c import kernel_templates
from ds4c.precision import TOLERANCE, rel_error
from ds4c.runtime.executor import Executable
from ds4c.runtime.plan import Kernel


@dataclass(frozen=True)
class KernelCheck:
    step: int
    kernel: str
    template: str
    rel_error: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.rel_error <= self.bound


def check_graph(exe: Executable, kernels: dict[str, Kernel], *inputs: torch.Tensor) -> list[KernelCheck]:
    """Run exe on inputs; one KernelCheck per kernel step (outputs are kept so later steps run normally)."""
    out: list[KernelCheck] = []

    def after(i, step, env):
        if step.kind != "kernel":
            return
        k = kernels[step.fn]
        t = kernel_templates.get(k.template)
        ins = [env[a["t"]] if isinstance(a, dict) else env[a.name] for a in step.args]
        # a kernel that writes its first args in place (KV caches) checks them as outputs, where its
        # reference defines them (the rows it wrote)
        outs = [env[name] for name in step.outputs] + ins[:t.writes]
        refs = t.reference(k.problem, ins[t.writes:])
        for got, ref in zip(outs, refs, strict=False):
            bound = TOLERANCE[got.dtype].rel
            if k.problem.get("w_dtype") in ("int8", "float8_e4m3fn"):
                bound = max(bound, TOLERANCE[getattr(torch, k.problem["w_dtype"])].rel)
            ref = ref.detach().cpu()  # references may be computed on the kernel's device
            defined = ~torch.isnan(ref)
            err = rel_error(got.detach().cpu()[defined], ref[defined])
            out.append(KernelCheck(i, step.fn, k.template, err, bound))

    exe(*inputs, after_step=after)
    return out
