"""Tuning keys: which measurements apply to which kernel instance on which machine.

Sits between kernel_templates (a template plus a problem) and the database (one Optuna study per key).
A key is the sha256 of sorted-key JSON over the fields below; never Python's hash(), never pickle. Anything
that can change which config is fastest, or whether a config is correct, is a field: change one and the
old measurements no longer apply (they live on under their own key until `db prune` drops them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
import triton

from ds4c.device import GpuInfo
from ds4c.kernel_templates.base import Problem, Template

SCHEMA_VERSION = 1

@dataclass(frozen=True)
class KeyFields:
    """The readable fields a key is hashed from (stored beside each study as user attributes)."""

    schema: int
    template: str
    source_hash: str
    problem: dict
    gpu: str
    capability: tuple[int, int]
    torch: str
    triton: str

    def to_json(self) -> dict:
        d = asdict(self)
        d["capability"] = list(self.capability)
        return d

    @staticmethod
    def from_json(d: object) -> KeyFields:
        """Checked inverse of to_json (raises ValueError on anything malformed)."""
        if not isinstance(d, dict):
            raise ValueError("key fields must be an object")
        want = {"schema", "template", "source_hash", "problem", "gpu", "capability", "torch", "triton"}
        if set(d) != want:
            raise ValueError(f"key fields must be exactly {sorted(want)}")
        cap = d["capability"]
        if not (isinstance(cap, list) and len(cap) == 2 and all(type(c) is int for c in cap)):
            raise ValueError(f"bad capability {cap!r}")
        if type(d["schema"]) is not int or not isinstance(d["problem"], dict):
            raise ValueError("bad schema or problem")
        for name in ("template", "source_hash", "gpu", "torch", "triton"):
            if not isinstance(d[name], str) or len(d[name]) > 200:
                raise ValueError(f"bad {name} {d[name]!r}")
        return KeyFields(d["schema"], d["template"], d["source_hash"], d["problem"], d["gpu"],
                         (cap[0], cap[1]), d["torch"], d["triton"])

    @property
    def key(self) -> str:
        return hashlib.sha256(canonical_json(self.to_json()).encode()).hexdigest()

    def same_environment(self, other: KeyFields) -> bool:
        """Same GPU model, schema and toolchain versions (so other's measurements could apply here)."""
        return (self.schema, self.gpu, self.capability, self.torch, self.triton) == (
            other.schema, other.gpu, other.capability, other.torch, other.triton)


def canonical_json(obj: object) -> str:
    """Sorted-key, whitespace-free JSON; rejects NaN/Inf so equal objects always give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def key_fields(template: Template, problem: Problem, gpu: GpuInfo) -> KeyFields:
    """The key fields of tuning `template` on `problem` for `gpu` with the running torch and triton."""
    problem = json.loads(canonical_json(problem))  # a JSON-clean copy (tuples become lists)
    return KeyFields(SCHEMA_VERSION, template.name, template.source_hash(problem), problem, gpu.name,
                     tuple(gpu.capability), torch.__version__, triton.__version__)


def tuning_key(template: Template, problem: Problem, gpu: GpuInfo) -> str:
    return key_fields(template, problem, gpu).key


def _split_dim(dim: str) -> tuple[str, int | None]:
    """'rows' -> ('rows', None); 'shape[0]' -> ('shape', 0): a token dimension is a key or an index into a
    list-valued key."""
    if dim.endswith("]") and "[" in dim:
        key, index = dim[:-1].split("[", 1)
        return key, int(index)
    return dim, None


def _indexes(value, index: int) -> bool:
    return isinstance(value, (list, tuple)) and 0 <= index < len(value)


def token_value(problem: Problem, dim: str):
    """The value of one token dimension of problem (None where the problem lacks it)."""
    key, index = _split_dim(dim)
    v = problem.get(key)
    if index is None:
        return v
    return v[index] if _indexes(v, index) else None


def without_token_dim(template: Template, problem: Problem) -> dict:
    """The problem without the template's token dimensions (what must match for a nearest-neighbour lookup);
    an indexed dimension is left in its list as None."""
    out = dict(problem)
    for dim in template.token_dims:
        key, index = _split_dim(dim)
        if index is None:
            out.pop(key, None)
        elif _indexes(out.get(key), index):
            out[key] = [*out[key][:index], None, *out[key][index + 1:]]
    return out


def token_count(template: Template, problem: Problem) -> int | None:
    """The problem's value of the template's first token dimension; None when it has none."""
    v = token_value(problem, template.token_dims[0]) if template.token_dims else None
    return v if type(v) is int and v > 0 else None
