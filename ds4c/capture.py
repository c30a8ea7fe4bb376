"""Capture: a PyTorch callable -> an ATen-level FX graph -> the networkx IR (ds4c/ir.py).

Two entries: `export_graph` (torch.export, for checkpoints: parameters and buffers keep their state-dict
names, buffer writes show up as mutations) and `graph_from_fx` (any ATen FX graph, used by the
torch.compile backend after aot_autograd). First stage of the pipeline.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.export.graph_signature import InputKind, OutputKind

from .errors import Ds4cError
from .ir import Graph, Op, Ref, TensorType, add_node

# ATen ops that carry no computation in an inference graph: dropped while building the IR.
_IGNORED = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
            "aten.sym_constrain_range_for_size.default"}


@dataclass(frozen=True)
class Captured:
    graph: Graph
    constants: dict[str, torch.Tensor]  # lifted tensor constants by role name (small, saved in the plan)


def _tensor_type(v) -> TensorType | None:
    if isinstance(v, torch.Tensor):
        return TensorType(tuple(int(s) for s in v.shape), v.dtype, tuple(int(s) for s in v.stride()))
    return None


def _outputs_of(node: fx.Node) -> tuple:
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return tuple(_tensor_type(v) for v in val)
    t = _tensor_type(val)
    if t is None and val is not None and not isinstance(val, (int, float, bool)):
        raise Ds4cError(f"node {node.name} ({node.target}) produces {type(val).__name__}, not a tensor")
    return (t,)


def _convert(value, refs: dict[str, Ref]):
    if isinstance(value, fx.Node):
        return refs[value.name]
    if isinstance(value, (list, tuple)):
        return tuple(_convert(v, refs) for v in value)
    if isinstance(value, torch.SymInt | torch.SymFloat):
        raise Ds4cError("graph has symbolic sizes; ds4c compiles static shapes")
    return value


def fx_constants(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """The tensors gm's get_attr nodes read (constants aot_autograd lifted onto the module), by the role
    graph_from_fx gives their inputs: "const:<attribute>"."""
    return {f"const:{n.target}": _attribute(gm, n) for n in gm.graph.nodes if n.op == "get_attr"}


def _attribute(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    if not isinstance(value, torch.Tensor):
        raise Ds4cError(f"node {node.name} reads {node.target}, a {type(value).__name__}, not a tensor")
    return value


def graph_from_fx(gm: fx.GraphModule, roles: dict[str, str] | None = None,
                  user_outputs: int | None = None, mutation_names: list[str] | None = None) -> Graph:
    """Build the IR from an ATen FX graph. roles: placeholder name -> role (default "user"); a tensor that
    a get_attr node reads becomes an input of role "const:<attribute>" (`fx_constants` gives the values).
    The first `user_outputs` outputs are graph outputs, the rest are the new values of `mutation_names`
    (in order)."""
    roles = roles or {}
    g = Graph()
    g.graph.update(inputs=[], roles={}, outputs=[], mutations={}, stats={})
    refs: dict[str, Ref] = {}
    for i, node in enumerate(gm.graph.nodes):
        if node.op == "placeholder":
            t = _tensor_type(node.meta.get("val"))
            if t is None:
                raise Ds4cError(f"input {node.name} is not a tensor (symbolic shapes are not supported)")
            name = add_node(g, node.name, Op("input", outputs=(t,)), float(i))
            g.graph["inputs"].append(name)
            g.graph["roles"][name] = roles.get(node.name, "user")
            refs[node.name] = Ref(name)
        elif node.op == "get_attr":
            name = add_node(g, node.name, Op("input", outputs=(_tensor_type(_attribute(gm, node)),)), float(i))
            g.graph["inputs"].append(name)
            g.graph["roles"][name] = f"const:{node.target}"
            refs[node.name] = Ref(name)
        elif node.op == "call_function" and node.target is operator.getitem:
            src, idx = node.args
            refs[node.name] = Ref(refs[src.name].node, idx)
        elif node.op == "call_function":
            target = str(node.target) if isinstance(node.target, torch._ops.OpOverload) else None
            if target is None:
                raise Ds4cError(f"node {node.name} calls {node.target}, which is no torch operator (a higher-order "
                                "op, as a custom op that writes its arguments becomes, or a Python function)")
            if any(a.alias_info is not None and a.alias_info.is_write for a in node.target._schema.arguments) \
                    and not target.startswith("aten."):
                raise Ds4cError(f"node {node.name} calls {target}, a custom op that writes its arguments")
            if target in _IGNORED:
                continue
            op = Op(target, args=_convert(tuple(node.args), refs),
                    kwargs=tuple((k, _convert(v, refs)) for k, v in node.kwargs.items()),
                    outputs=_outputs_of(node))
            refs[node.name] = Ref(add_node(g, node.name, op, float(i)))
        elif node.op == "output":
            outs = node.args[0]
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            n_user = len(outs) if user_outputs is None else user_outputs
            if not all(isinstance(o, fx.Node) for o in outs):
                raise Ds4cError("a graph output is not a tensor (a constant or a size); ds4c returns tensors")
            g.graph["outputs"] = [_convert(o, refs) for o in outs[:n_user]]
            for state, o in zip(mutation_names or [], outs[n_user:], strict=True):
                g.graph["mutations"][state] = _convert(o, refs)
        else:
            raise Ds4cError(f"unsupported FX node {node.op} {node.target}")
    return g


def export_graph(module: torch.nn.Module, args: tuple) -> Captured:
    """Capture module(*args) with torch.export at functional ATen level; parameters and buffers keep
    their names in module.state_dict()."""
    try:
        with warnings.catch_warnings():  # torch's own pytree deprecation notice, not the user's concern
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            ep = torch.export.export(module, args, strict=False)
            ep = ep.run_decompositions({})
    except Exception as e:  # export failures are the user's model's problem: say what failed
        raise Ds4cError(f"torch.export of {type(module).__name__} failed: {e}") from e
    what = type(module).__name__
    sig = ep.graph_signature
    roles, constants = {}, {}
    prefix = ""
    for spec in sig.input_specs:
        name = spec.arg.name
        state = (spec.target or "").removeprefix(prefix)
        if spec.kind == InputKind.PARAMETER:
            roles[name] = f"param:{state}"
        elif spec.kind == InputKind.BUFFER:
            roles[name] = f"buffer:{state}"
        elif spec.kind in (InputKind.CONSTANT_TENSOR,):
            roles[name] = f"const:{state}"
            constants[f"const:{state}"] = ep.constants[spec.target]
        else:
            roles[name] = "user"
    user_outputs = sum(1 for s in sig.output_specs if s.kind == OutputKind.USER_OUTPUT)
    mutations = []
    for s in sig.output_specs:
        if s.kind == OutputKind.BUFFER_MUTATION:
            mutations.append(f"buffer:{s.target.removeprefix(prefix)}")
        elif s.kind != OutputKind.USER_OUTPUT:
            raise Ds4cError(f"{what}: unsupported output kind {s.kind}")
    # torch.export lists mutation outputs first; graph_from_fx wants user outputs first.
    order = [i for i, s in enumerate(sig.output_specs) if s.kind == OutputKind.USER_OUTPUT] + \
            [i for i, s in enumerate(sig.output_specs) if s.kind == OutputKind.BUFFER_MUTATION]
    gm = ep.graph_module
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outs = list(out_node.args[0])
    out_node.args = (tuple(outs[i] for i in order),)
    return Captured(graph_from_fx(gm, roles, user_outputs, mutations), constants)
