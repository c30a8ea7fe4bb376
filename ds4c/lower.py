"""Lowering: the optimised IR -> one GraphPlan of the runtime (steps, planned buffers), plus the kernels it
launches. Last stage before the plan is saved; the tuning database is consulted through `choose`.

Memory plan: every kernel output is a buffer; a view or in-place op (VIEW_OPS, or any op whose schema says
its outputs alias an argument: split, unbind, narrow, detach, add_, ...) aliases the buffer it reads. A
buffer's lifetime runs from the step that writes it to the last step that reads it or any alias of it.
Buffers whose lifetimes do not overlap share bytes of one arena (first fit, 256-byte aligned). Buffers that
escape (graph outputs) are allocated fresh per call instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ds4c.kernel_templates.base import problem_key
from ds4c.passes.match import VIEW_OPS, aliased_argument
from ds4c.runtime.plan import Buffer, GraphPlan, Kernel, Step, TensorArg

from .codegen import TRITON, Target
from .ir import Graph, Ref, op_of, ordered

ALIGN = 256
# template -> how its launch wants tensors shaped: "rows" flattens leading dims of the named args
_FLATTEN = {
    "matmul": ("rows", {0}), "gemv": ("rows", {0}),
    "rmsnorm": ("rows", {0, 2}), "softmax": ("rows", {0}),
}

# template -> the args that are rope tables, which its launch takes as [T, D] (T = 1 where the problem has none)
_TABLES = {"rope": (1, 2), "rope_kv": (5, 6), "decode_attention_rope": (5, 6)}

_RESHAPE = {"aten.view.default": "aten.reshape.default", "aten._unsafe_view.default": "aten.reshape.default"}

Chooser = Callable[[str, dict], tuple[dict, str]]  # (template, problem) -> (config, "tuned"|"nearest"|"default")


@dataclass
class KernelTable:
    """Kernels shared by all graphs of one plan: one source per distinct (template, problem)."""

    kernels: dict  # id -> Kernel
    sources: dict  # id -> source text
    target: Target = TRITON

    def add(self, template: str, problem: dict, choose: Chooser) -> str:
        key = problem_key({"template": template, "problem": problem})
        kid = f"{template}_{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        if kid not in self.kernels:
            config, how = choose(template, problem)
            self.sources[kid] = self.target.source(template, problem)
            self.kernels[kid] = Kernel(template, problem, dict(config), how, f"kernels/{kid}.py")
        return kid


def _name(ref: Ref) -> str:
    return ref.node if ref.index == 0 else f"{ref.node}:{ref.index}"


def _arg(v):
    if isinstance(v, Ref):
        return TensorArg(_name(v))
    if isinstance(v, tuple):
        return tuple(_arg(x) for x in v)
    if isinstance(v, list):
        return [_arg(x) for x in v]
    return v


class _Emitter:
    def __init__(self, g: Graph):
        self.g = g
        self.steps: list[Step] = []
        self.buffers: dict[str, Buffer] = {}  # kernel outputs, offsets assigned later
        self.alias: dict[str, str] = {}  # env name -> root buffer/value name
        self.n = 0

    def tmp(self, base: str) -> str:
        self.n += 1
        return f"{base}.{self.n}"

    def reshape(self, src: str, shape: tuple[int, ...], copy_ok: bool) -> str:
        out = self.tmp(src)
        self.steps.append(Step("aten", "aten.reshape.default" if copy_ok else "aten.view.default",
                               (TensorArg(src), list(shape)), {}, (out,)))
        self.alias[out] = self.alias.get(src, src)
        return out


def lower(g: Graph, table: KernelTable, choose: Chooser) -> GraphPlan:
    """Steps for every node in order, then liveness-based buffer offsets."""
    em = _Emitter(g)
    for name in ordered(g):
        op = op_of(g, name)
        if op.target == "input":
            continue
        outs = tuple(None if t is None else (name if i == 0 else f"{name}:{i}") for i, t in enumerate(op.outputs))
        if not op.is_kernel:
            at = 0 if op.target in VIEW_OPS else aliased_argument(op.target)
            src = op.args[at] if at is not None and len(op.args) > at and isinstance(op.args[at], Ref) else None
            # Kernels write contiguous outputs where the ATen op they replaced may have had other
            # strides, so a view chosen for those strides becomes a reshape (still a view when it can be).
            target = _RESHAPE.get(op.target, op.target)
            em.steps.append(Step("aten", target, tuple(_arg(a) for a in op.args),
                                 {k: _arg(v) for k, v in op.kwargs}, outs))
            for o in outs:
                if o is not None:
                    em.alias[o] = em.alias.get(_name(src), _name(src)) if src is not None else o
            continue
        _emit_kernel(em, name, op, table, choose)
    return _plan_memory(g, em)


def _emit_kernel(em: _Emitter, name: str, op, table: KernelTable, choose: Chooser) -> None:
    kid = table.add(op.template, op.problem, choose)
    args = [_name(a) for a in op.args]
    out_t = op.outputs[0]
    flatten = _FLATTEN.get(op.template)
    out_shape = out_t.shape
    if flatten is not None:
        lead = 1
        for s in out_t.shape[:-1]:
            lead *= s
        out_shape = (lead, out_t.shape[-1])
        for i in range(len(args)):
            at = op_of(em.g, op.args[i].node).outputs[op.args[i].index]
            extra = op.template in ("matmul", "gemv") and i >= len(args) - op.problem["n_extra"]
            if (i in flatten[1] or extra) and len(at.shape) != 2:
                args[i] = em.reshape(args[i], (-1, at.shape[-1]), copy_ok=True)
    if op.template in _TABLES:
        p = op.problem
        for i in _TABLES[op.template]:
            args[i] = em.reshape(args[i], (p.get("T", 1), p["D"]), copy_ok=True)
    fresh = len(op.outputs) - op.writes
    if flatten is not None and fresh != 1:
        raise ValueError(f"{name}: a {op.template} kernel has one fresh output, this one has {fresh}")
    buf = name if out_shape == out_t.shape else em.tmp(name)
    bufs = [buf] + [_name(Ref(name, i)) for i in range(1, fresh)]  # a buffer per fresh output
    for b, shape, t in zip(bufs, [out_shape] + [o.shape for o in op.outputs[1:fresh]], op.outputs, strict=False):
        em.buffers[b] = Buffer(b, tuple(shape), str(t.dtype).removeprefix("torch."), 0)
        em.alias[b] = b
    kwargs = table.target.launch_kwargs(op.template, op.problem)
    em.steps.append(Step("kernel", kid, tuple(TensorArg(a) for a in args), kwargs, tuple(bufs)))
    if buf != name:
        em.steps.append(Step("aten", "aten.view.default", (TensorArg(buf), list(out_t.shape)), {}, (name,)))
        em.alias[name] = buf
    for i in range(op.writes):  # written in place: the outputs name the args (views, no launch)
        out = _name(Ref(name, fresh + i))
        em.steps.append(Step("aten", "aten.alias.default", (TensorArg(args[i]),), {}, (out,)))
        em.alias[out] = em.alias.get(args[i], args[i])


def _reads(step: Step) -> list[str]:
    names: list[str] = []

    def walk(v):
        if isinstance(v, TensorArg):
            names.append(v.name)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    walk(step.args)
    walk(step.kwargs)
    return names


def _plan_memory(g: Graph, em: _Emitter) -> GraphPlan:
    steps = em.steps
    outputs = [_name(r) for r in g.graph["outputs"]]
    mutations = [(state, _name(r)) for state, r in g.graph["mutations"].items()]
    escaping = {em.alias.get(n, n) for n in outputs + [m[1] for m in mutations]}
    last_use: dict[str, int] = {}  # env name -> last step reading it
    root_last: dict[str, int] = {}  # root -> last step reading any alias
    first_def: dict[str, int] = {}
    for i, s in enumerate(steps):
        for r in _reads(s):
            last_use[r] = i
            root = em.alias.get(r, r)
            root_last[root] = i
        for o in s.outputs:
            if o is not None:
                first_def.setdefault(em.alias.get(o, o), i)
    keep = set(outputs) | {m[1] for m in mutations}
    frees: dict[int, list[str]] = {}
    for n, i in last_use.items():
        if n not in keep:
            frees.setdefault(i, []).append(n)
    steps = [Step(s.kind, s.fn, s.args, s.kwargs, s.outputs, tuple(sorted(frees.get(i, []))))
             for i, s in enumerate(steps)]
    buffers, arena = _assign_offsets(em, first_def, root_last, escaping)
    # a parameter no step reads (one the plan reads only as a derived, quantised weight) is no input: the
    # runner need not hold it
    roles = g.graph["roles"]
    inputs = tuple((n, roles[n]) for n in g.graph["inputs"]
                   if not roles[n].startswith("param:") or n in last_use or n in keep)
    return GraphPlan(inputs, tuple(outputs), tuple(mutations), tuple(steps), tuple(buffers), arena)


def _nbytes(b: Buffer) -> int:
    n = 1
    for s in b.shape:
        n *= s
    return n * torch.empty((), dtype=getattr(torch, b.dtype)).element_size()


def _assign_offsets(em: _Emitter, first_def, root_last, escaping) -> tuple[list[Buffer], int]:
    placed: list[tuple[int, int, int, int]] = []  # (start, end, offset, size)
    out: list[Buffer] = []
    arena = 0
    for b in sorted(em.buffers.values(), key=lambda b: first_def.get(b.name, 0)):
        if b.name in escaping:
            out.append(Buffer(b.name, b.shape, b.dtype, None))
            continue
        start = first_def.get(b.name, 0)
        end = max(root_last.get(b.name, start), start)
        size = (_nbytes(b) + ALIGN - 1) // ALIGN * ALIGN
        busy = sorted((o, o + s) for (s0, e0, o, s) in placed if not (e0 < start or s0 > end))
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        placed.append((start, end, offset, size))
        arena = max(arena, offset + size)
        out.append(Buffer(b.name, b.shape, b.dtype, offset))
    return out, arena
