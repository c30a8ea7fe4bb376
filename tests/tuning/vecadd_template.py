"""A test-only template: a Triton vector add whose space holds configs that fail in each way the tuner must
survive (BLOCK=48 does not compile: tl.arange needs a power of 2; TAIL=0 skips the last partial block, so
its poisoned outputs stay NaN), plus a valid() predicate that prunes before anything compiles."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ds4c.kernel_templates.base import SearchSpace, Template, randn

SOURCE = '''
import torch
import triton
import triton.language as tl


@triton.jit
def _add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x * SCALE + y, mask=mask)


def launch(out, x, y, *, BLOCK, TAIL, num_warps):
    n = out.numel()
    grid = (triton.cdiv(n, BLOCK) if TAIL else n // BLOCK,)
    _add[grid](x, y, out, n, BLOCK=BLOCK, num_warps=num_warps)
'''

SPACE = SearchSpace((("BLOCK", (16, 32, 48, 64, 128)), ("TAIL", (0, 1)), ("num_warps", (1, 2, 4))))


def holes(problem: dict) -> dict:
    return {"scale": problem.get("scale", 1.0)}


def valid(config: dict, problem: dict, gpu) -> bool:
    return not (config["num_warps"] == 4 and config["BLOCK"] < 32)


def default(problem: dict, gpu) -> dict:
    return {"BLOCK": 64, "TAIL": 1, "num_warps": 2}


def make_inputs(problem: dict, device, gen: torch.Generator):
    n, dt = problem["n"], getattr(torch, problem["dtype"])
    out = torch.empty(n, dtype=dt, device=device)
    return [out], [randn(n, dt, device, gen), randn(n, dt, device, gen)]


def reference(problem: dict, ins: list) -> list:
    x, y = (t.double() for t in ins)
    return [x * problem.get("scale", 1.0) + y]


def launch_kwargs(problem: dict) -> dict:
    return {}


def cost(problem: dict) -> tuple[float, float]:
    return float(problem["n"]), 12.0 * problem["n"]


@dataclass(frozen=True)
class InlineTemplate(Template):
    """A Template whose source is a string in this module rather than a file of the package."""

    def source(self, problem: dict) -> str:
        return SOURCE.replace("SCALE", repr(float(holes(problem)["scale"])))


VECADD = InlineTemplate("vecadd_test", "<inline>", SPACE, holes, valid, default, make_inputs, reference,
                        launch_kwargs, cost)


def resolve(name: str) -> Template:
    if name == VECADD.name:
        return VECADD
    raise KeyError(name)
