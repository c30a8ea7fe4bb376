"""The template contract: a Triton source file with named holes plus, beside it, its search space, validity
predicate, heuristic default, torch reference and input maker.

A *problem* is a JSON-able dict that fully describes one kernel instance: sizes, dtypes and the hole values
(an epilogue expression, a flag). Everything below is a pure function of the problem:

    source = template.source(problem)                # Triton module text
    mod    = runtime.loader.load_source(source)      # defines launch(*outputs, *inputs, **kwargs)
    outs, ins = template.make_inputs(problem, device, generator)
    mod.launch(*outs, *ins, **template.launch_kwargs(problem), **config)
    refs = template.reference(problem, ins)          # float32/float64 tensors, same shapes as outs

`config` holds tile sizes and the like (UPPER_CASE names for constexprs; num_warps, num_stages); its keys are
exactly `template.space.names`. The runtime calls `launch` the same way, with buffers from the plan.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources

import jinja2
import torch

from ds4c.device import GpuInfo

Problem = dict
Config = dict


@dataclass(frozen=True)
class SearchSpace:
    """Candidate values per tunable parameter, in a fixed order. Data only: no code is ever read from it."""

    params: tuple[tuple[str, tuple[int, ...]], ...]
    # parameters added after configs were stored, with the value a stored config lacking one meant; the
    # tuning database completes what it reads (complete) before checking it (contains)
    implied: tuple[tuple[str, int], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.params)

    def grid(self) -> Iterator[Config]:
        """Every combination, in a stable order (the exhaustive search)."""
        for values in itertools.product(*(vals for _, vals in self.params)):
            yield dict(zip(self.names, values, strict=True))

    def size(self) -> int:
        n = 1
        for _, vals in self.params:
            n *= len(vals)
        return n

    def complete(self, config: object) -> object:
        """config with the implied parameters it lacks filled in (anything but a dict: unchanged)."""
        if not isinstance(config, dict):
            return config
        missing = {k: v for k, v in self.implied if k not in config}
        return {**config, **missing} if missing else config

    def contains(self, config: object) -> bool:
        """True when config is a dict with exactly these keys, each an int among the candidates."""
        if not isinstance(config, dict) or set(config) != set(self.names):
            return False
        allowed = dict(self.params)
        return all(type(v) is int and v in allowed[k] for k, v in config.items())


@dataclass(frozen=True)
class Template:
    name: str
    file: str  # "rmsnorm.py.j2" in this package
    space: SearchSpace
    holes: Callable[[Problem], dict]  # problem -> jinja variables
    valid: Callable[[Config, Problem, GpuInfo], bool]  # prunes before anything compiles
    default: Callable[[Problem, GpuInfo], Config]  # works without tuning; must satisfy valid
    make_inputs: Callable[[Problem, torch.device, torch.Generator], tuple[list, list]]
    reference: Callable[[Problem, list], list]
    launch_kwargs: Callable[[Problem], dict]  # problem scalars passed to launch (eps, scale, ...)
    cost: Callable[[Problem], tuple[float, float]]  # (flops, minimum bytes moved), for rooflines
    # launch(*outs, *ins): the last `writes` of make_inputs' outs are written in place (KV caches, only some
    # rows): in a graph they are the kernel's first args, and its reference marks untouched elements NaN
    writes: int = 0
    # one config per implementation other than the tiles (IMPL != 0) that the tuner measures right after the
    # default; None: every valid config with IMPL != 0 (right where each such implementation has one config)
    alternatives: Callable[[Problem, GpuInfo], list[Config]] | None = None
    # the problem keys that count tokens or cache positions: what varies between calls of one kernel in a
    # model or between models compiled for other lengths (batch*sequence rows, a cache's capacity). A tuning
    # lookup may borrow a config tuned for other values of them; the first one measures the distance. A name
    # may index a list-valued key: "shape[0]" is the leading dimension of the problem's "shape".
    token_dims: tuple[str, ...] = ()

    def source(self, problem: Problem) -> str:
        return render(self.file, **self.holes(problem))

    def source_hash(self, problem: Problem) -> str:
        return hashlib.sha256(self.source(problem).encode()).hexdigest()[:16]


def _template_text(file: str) -> str:
    return (resources.files("ds4c.kernel_templates") / file).read_text()


# The loader lets a template pull in another file of this package ({% include "matmul_tma.py.j2" %}).
_ENV = jinja2.Environment(loader=jinja2.FunctionLoader(_template_text), undefined=jinja2.StrictUndefined,
                          keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


@functools.cache
def _compiled(file: str) -> jinja2.Template:
    return _ENV.get_template(file)


def render(file: str, **holes: object) -> str:
    """Fill the named holes of a template file of this package (each file is parsed once per process)."""
    return _compiled(file).render(**holes)


def problem_key(problem: Problem) -> str:
    """Stable text of a problem: sorted-key JSON."""
    return json.dumps(problem, sort_keys=True, separators=(",", ":"))


def dtype_of(name: str) -> torch.dtype:
    """torch dtype from its short name ("bfloat16"); only float and int8 dtypes are accepted."""
    allowed = {"float32", "float16", "bfloat16", "float64", "int8", "float8_e4m3fn", "int32", "int64"}
    if name not in allowed:
        raise ValueError(f"dtype {name!r} is not one ds4c kernels take")
    return getattr(torch, name)


def randn(shape, dtype: torch.dtype, device, gen: torch.Generator, std: float = 1.0) -> torch.Tensor:
    """Fresh normal random values (generated in fp32 on CPU for reproducibility, then moved)."""
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * std).to(dtype).to(device)
