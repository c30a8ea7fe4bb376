"""The executor's index_copy_: 8-byte words where whole rows of a narrower dtype move (a prompt's KV-cache
write), ATen's element copy elsewhere; the same bytes in the same places either way."""

import pytest
import torch

from ds4c.runtime.executor import _as_words, index_copy_


def _cache_and_rows(dtype, d, device, strided_src):
    cache = torch.randn(1, 3, 17, d, device=device).to(dtype)
    if strided_src:  # v as a slice of a merged projection: [1, T, 3*(d+8)] viewed [1, 3, T, d]
        wide = torch.randn(1, 5, 3, d + 8, device=device).to(dtype)
        src = wide[..., 8:].transpose(1, 2)
    else:
        src = torch.randn(1, 3, 5, d, device=device).to(dtype)
    return cache, src


@pytest.mark.parametrize("dtype,d,wide", [(torch.bfloat16, 16, True), (torch.float16, 12, True),
                                          (torch.float32, 6, True), (torch.bfloat16, 6, False),
                                          (torch.float64, 4, False), (torch.int8, 24, True)])
@pytest.mark.parametrize("strided_src", [False, True], ids=["contiguous", "strided"])
def test_same_bytes_as_aten(dtype, d, wide, strided_src, device):
    cache, src = _cache_and_rows(dtype, d, device, strided_src)
    index = torch.tensor([0, 16, 3, 4, 9], device=device)
    expected = cache.clone().index_copy_(2, index, src)
    assert (_as_words(cache) is not None and _as_words(src) is not None) is wide
    out = index_copy_(cache, 2, index, src)
    assert out is cache and torch.equal(cache.view(torch.uint8), expected.view(torch.uint8))


def test_the_last_dim_and_odd_offsets_take_atens_path(device):
    cache = torch.zeros(2, 8, dtype=torch.bfloat16, device=device)
    src = torch.randn(2, 3, device=device).to(torch.bfloat16)
    index = torch.tensor([1, 5, 6], device=device)
    expected = cache.clone().index_copy_(1, index, src)
    assert torch.equal(index_copy_(cache, -1, index, src), expected)
    flat = torch.zeros(41, dtype=torch.bfloat16, device=device)
    assert _as_words(flat[1:].view(10, 4)) is None  # 2-byte offset: no 8-byte view of it
