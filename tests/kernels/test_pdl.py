"""Programmatic dependent launch (pdl=True) of the decode kernels: launched back to back inside one CUDA
graph, each launch may start while the previous one finishes, and every launch must still equal the
reference. Needs a Hopper (or newer) GPU: elsewhere the launches are plain and the flag is never passed."""

from __future__ import annotations

import pytest
import torch

from ds4c.device import current_gpu
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates import get
from ds4c.precision import TOLERANCE, rel_error
from ds4c.runtime.graphs import capture
from ds4c.runtime.llm import pdl_supported
from ds4c.runtime.loader import load_source

PROBLEMS = [
    ("gemv", C.problem(1, 1000, 1536, "bfloat16", rms_eps=1e-5)),
    ("gemv", C.problem(1, 768, 512, "bfloat16", dual=True, epilogue=C.SWIGLU)),
    ("gemv", C.problem(1, 512, 1408, "bfloat16", n_extra=1, epilogue=("add", "e0", "acc"))),
    ("decode_attention", {"B": 1, "Hq": 8, "Hkv": 2, "S_max": 1024, "D": 128, "dtype": "bfloat16",
                          "scale": 128 ** -0.5}),
    ("decode_attention_rope", {"B": 1, "Hq": 8, "Hkv": 2, "S_max": 1024, "D": 128, "dtype": "bfloat16",
                               "scale": 128 ** -0.5, "cos_dtype": "bfloat16"}),
]

needs_hopper = pytest.mark.skipif(not torch.cuda.is_available() or not pdl_supported(torch.device("cuda")),
                                  reason="programmatic dependent launch needs a CUDA GPU of capability >= 9.0")


@needs_hopper
@pytest.mark.parametrize("name,problem", PROBLEMS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PROBLEMS)])
def test_pdl_chain_in_a_graph_equals_reference(name, problem):
    template = get(name)
    device = torch.device("cuda")
    gpu = current_gpu()
    mod = load_source(template.source(problem))
    assert mod.SUPPORTS_PDL
    config = template.default(problem, gpu)
    kwargs = {**template.launch_kwargs(problem), **config, "pdl": True}
    sets = [template.make_inputs(problem, device, torch.Generator().manual_seed(int(s)))
            for s in torch.randint(0, 2**31, (4,))]
    for outs, _ in sets:
        for o in outs:
            o.fill_(float("nan"))

    def chain() -> None:  # 4 launches, each writing its own outputs: PDL overlaps neighbours
        for outs, ins in sets:
            mod.launch(*outs, *ins, **kwargs)

    graph, _ = capture(chain)
    graph.replay()
    torch.cuda.synchronize()
    for outs, ins in sets:
        for o, r in zip(outs, template.reference(problem, ins), strict=True):
            assert rel_error(o, r) <= TOLERANCE[o.dtype].rel
