"""The pass pipeline: a list literal of pure IR -> IR functions, run in order by one loop that names and
logs each step (and verifies the IR between steps under DS4C_VERIFY=1)."""

from __future__ import annotations

import logging
import time

from ds4c.passes.attention import fuse_attention, fuse_decomposed_attention, write_attention_output_transposed
from ds4c.passes.cleanup import eliminate_dead_code, remove_noops
from ds4c.passes.cse import eliminate_common_subexpressions
from ds4c.passes.matmul import (
    fold_rmsnorm_into_matmul,
    fuse_matmul_epilogue,
    fuse_swiglu,
    lower_linear,
    merge_sibling_matmuls,
    select_gemv,
    unflatten_linear,
)
from ds4c.passes.norms import fuse_rmsnorm, fuse_softmax
from ds4c.passes.pointwise import fuse_pointwise
from ds4c.passes.precision import assign_precision
from ds4c.passes.reinplace import reinplace_state_writes
from ds4c.passes.rope import fuse_rope, fuse_rope_into_decode_attention, fuse_rope_kv_write
from ds4c.passes.rows import select_rows_early

from .ir import Graph, maybe_verify

log = logging.getLogger("ds4c.pipeline")


def default_passes(precision: str = "bf16") -> list:
    return [
        remove_noops,
        reinplace_state_writes,
        eliminate_common_subexpressions,
        unflatten_linear,  # aot_autograd's view-mm-view linear layers as linear ops, before any matching
        select_rows_early,  # before the fusions: they see the rows that are read, not all T
        fuse_rmsnorm,  # before lower_linear: folding into matmul prologues needs the norms found
        fuse_attention,
        fuse_decomposed_attention,  # before fuse_softmax, which would take the softmax alone
        write_attention_output_transposed,
        fuse_rope,
        fuse_rope_kv_write,  # after reinplace_state_writes: the cache writes are in place by now
        fuse_rope_into_decode_attention,
        lower_linear,
        fuse_swiglu,  # before merging siblings: gate/up become one dual matmul instead
        merge_sibling_matmuls,
        fuse_softmax,
        fuse_pointwise,  # after the pattern fusions, which need their ATen ops intact
        fuse_matmul_epilogue,
        fold_rmsnorm_into_matmul,
        assign_precision(precision),
        select_gemv,
        eliminate_dead_code,
    ]


def run_pipeline(g: Graph, passes: list) -> Graph:
    """Run each pass in order; returns the final graph (the input graph is not changed)."""
    maybe_verify(g)
    for p in passes:
        t0 = time.perf_counter()
        before = g.number_of_nodes()
        g = p(g)
        maybe_verify(g)
        log.debug("%-28s %5d -> %5d nodes  %.1f ms", p.__name__, before, g.number_of_nodes(),
                  1e3 * (time.perf_counter() - t0))
    return g
