"""Execute one graph of a plan: kernel launches and ATen calls (or calls of other registered torch ops,
such as a library's custom op that a torch.compile graph holds), in order, over planned buffers.

Kernel outputs live in one arena per graph, at offsets the memory planner chose (lifetimes that do not
overlap share bytes); graph outputs are allocated fresh each call. A kernel module that says RETURNS_OUTPUT
is launched with own_output=True and may return a tensor it allocated (a library's result) instead of
filling its planned buffer; later steps then read that tensor. Values nothing reads any more are
dropped as the steps go, so ATen temporaries return to the allocator early.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType

import torch

from .plan import GraphPlan, Kernel, PlanError, Step

_OP_NAME = re.compile(r"^[a-z_][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")


def resolve_op(target: str) -> Callable:
    """torch.ops.<namespace>.<op>.<overload> for a target string: an operator registered with torch (ATen's,
    or a library's custom op once that library is imported), never any other Python object."""
    if not _OP_NAME.match(target):
        raise PlanError(f"step calls {target!r}, which is not a torch operator name")
    ns, op, overload = target.split(".")
    try:
        fn = getattr(getattr(getattr(torch.ops, ns), op), overload)
    except (AttributeError, RuntimeError) as e:
        where = "this torch has" if ns == "aten" else f"no library imported here registers {ns!r}: this process has"
        raise PlanError(f"{where} no op {target}") from e
    if not isinstance(fn, torch._ops.OpOverload):
        raise PlanError(f"step calls {target!r}, which is not a torch operator")
    return fn


def _as_words(x: torch.Tensor) -> torch.Tensor | None:
    """x's bytes viewed as int64 words along its last dim, or None where its layout does not allow it."""
    size = x.element_size()
    if size >= 8 or x.dim() == 0 or x.stride(-1) != 1:
        return None
    if (x.size(-1) * size) % 8 or (x.storage_offset() * size) % 8 or any((st * size) % 8 for st in x.stride()[:-1]):
        return None
    return x.view(torch.int64)


def index_copy_(dst: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """aten.index_copy_ that moves 8-byte words when it copies whole rows of a narrower dtype (a KV-cache
    write of a prompt): the same bytes land in the same places, but ATen's kernel copies one element per
    thread, which for 2-byte elements runs at a fraction of the memory bandwidth."""
    d = dim % max(dst.dim(), 1)
    if d != dst.dim() - 1 and src.dtype == dst.dtype and src.dim() == dst.dim():
        wide_dst, wide_src = _as_words(dst), _as_words(src)
        if wide_dst is not None and wide_src is not None:
            wide_dst.index_copy_(d, index, wide_src)
            return dst
    return torch.ops.aten.index_copy_.default(dst, dim, index, src)


_FASTER = {"aten.index_copy_.default": index_copy_}  # the same op, quicker for the layouts plans meet


def _dtype(name: str) -> torch.dtype:
    d = getattr(torch, name, None)
    if not isinstance(d, torch.dtype):
        raise PlanError(f"unknown dtype {name!r}")
    return d


def _decoder(v, device: torch.device):
    """A function env -> value for one encoded argument (constants are decoded once, here)."""
    if isinstance(v, dict):
        if "t" in v:
            name = v["t"]
            return lambda env: env[name]
        if "tuple" in v:
            parts = [_decoder(x, device) for x in v["tuple"]]
            return lambda env: tuple(p(env) for p in parts)
        const = _constant(v, device)
        return lambda env: const
    if isinstance(v, list):
        parts = [_decoder(x, device) for x in v]
        return lambda env: [p(env) for p in parts]
    return lambda env: v


def _constant(v: dict, device: torch.device):
    if "dtype" in v:
        return _dtype(v["dtype"])
    if "device" in v:
        return device  # plans are device-neutral: a device argument means the executing device
    if "float" in v:
        return float(v["float"])
    if "memory_format" in v:
        return getattr(torch, v["memory_format"])
    if "layout" in v:
        return getattr(torch, v["layout"])
    raise PlanError(f"unknown encoded value {v!r}")


class Executable:
    """One graph of a plan bound to a device, kernel modules and the state/weights it reads."""

    def __init__(self, gp: GraphPlan, kernels: dict[str, ModuleType], kernel_info: dict[str, Kernel],
                 values: dict[str, torch.Tensor], device: torch.device, pdl: bool = False):
        """pdl: kernels whose module says SUPPORTS_PDL launch as programmatic dependent launches (Hopper+):
        each may start while its predecessor finishes, and waits for the predecessor's writes in-kernel."""
        self.gp, self.device, self.values, self.pdl = gp, device, values, pdl
        self.arena = torch.empty(max(gp.arena_bytes, 1), dtype=torch.uint8, device=device)
        self.buffers: dict[str, tuple] = {}
        for b in gp.buffers:
            dt = _dtype(b.dtype)
            if b.offset is None:
                self.buffers[b.name] = (None, b.shape, dt)
            else:
                n = 1
                for s in b.shape:
                    n *= s
                nbytes = n * torch.empty((), dtype=dt).element_size()
                view = self.arena[b.offset:b.offset + nbytes].view(dt).view(b.shape)
                self.buffers[b.name] = (view, b.shape, dt)
        self.static_env: dict[str, torch.Tensor] = {}
        self.user_inputs: list[str] = []
        for name, role in gp.inputs:
            if role == "user":
                self.user_inputs.append(name)
            elif role not in values:
                raise PlanError(f"plan input {name} needs {role}, which was not loaded")
            else:
                self.static_env[name] = values[role]
        self.steps = [self._compile(s, kernels, kernel_info) for s in gp.steps]

    def _compile(self, s: Step, kernels, kernel_info) -> Callable[[dict], None]:
        args = [_decoder(a, self.device) for a in s.args]
        kwargs = {k: _decoder(v, self.device) for k, v in s.kwargs.items()}
        outs = s.outputs
        if s.kind == "kernel":
            if s.fn not in kernels:
                raise PlanError(f"step launches unknown kernel {s.fn}")
            launch = kernels[s.fn].launch
            const_kw = {**{k: d({}) for k, d in kwargs.items()}, **kernel_info[s.fn].config}
            if self.pdl and getattr(kernels[s.fn], "SUPPORTS_PDL", False):
                const_kw["pdl"] = True
            own = getattr(kernels[s.fn], "RETURNS_OUTPUT", False) and len(outs) == 1
            if own:  # the kernel may hand back an output it allocated rather than fill the planned one
                const_kw["own_output"] = True
            bufs = [self.buffers[o] for o in outs]
            device = self.device

            def run(env: dict) -> None:
                out_t = [b[0] if b[0] is not None else torch.empty(b[1], dtype=b[2], device=device)
                         for b in bufs]
                r = launch(*out_t, *(a(env) for a in args), **const_kw)
                if own:
                    if not (isinstance(r, torch.Tensor) and r.shape == out_t[0].shape and r.dtype == out_t[0].dtype):
                        raise PlanError(f"kernel {s.fn} returned no output shaped {tuple(out_t[0].shape)}")
                    out_t = [r]
                for name, t in zip(outs, out_t, strict=True):
                    env[name] = t

            return run
        if s.kind != "aten":
            raise PlanError(f"unknown step kind {s.kind!r}")
        fn = _FASTER.get(s.fn) or resolve_op(s.fn)

        def run(env: dict) -> None:
            r = fn(*(a(env) for a in args), **{k: d(env) for k, d in kwargs.items()})
            if len(outs) == 1:
                env[outs[0]] = r
            else:
                for name, t in zip(outs, r, strict=False):
                    if name is not None:
                        env[name] = t

        return run

    def __call__(self, *inputs: torch.Tensor, after_step: Callable | None = None) -> list[torch.Tensor]:
        """Run the graph; after_step(index, step, env), if given, sees every step's results (debugging)."""
        if len(inputs) != len(self.user_inputs):
            raise TypeError(f"graph takes {len(self.user_inputs)} inputs, got {len(inputs)}")
        env = dict(self.static_env)
        env.update(zip(self.user_inputs, inputs, strict=True))
        for i, (run, step) in enumerate(zip(self.steps, self.gp.steps, strict=True)):
            run(env)
            if after_step is not None:
                after_step(i, step, env)
            for f in step.free:
                env.pop(f, None)
        for state, name in self.gp.mutations:
            new, dst = env[name], self.values[state]
            if new.data_ptr() != dst.data_ptr():
                dst.copy_(new)
        return [env[o] for o in self.gp.outputs]
