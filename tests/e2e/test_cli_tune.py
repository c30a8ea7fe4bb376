"""`ds4c tune MODEL --precision`: the kernel problems it tunes are those `ds4c compile --precision` emits."""

from ds4c.cli import _problems_from


def _weights(precision: str) -> set:
    return {(t if isinstance(t, str) else t.name, p.get("w_dtype"))
            for t, p in _problems_from("tiny-llama", 8, 24, precision)}


def test_mixed_precision_tunes_the_int8_ffn_kernels():
    bf16, mixed = _weights("bf16"), _weights("mixed")
    assert ("gemv", "int8") in mixed and ("gemv", "int8") not in bf16
    assert ("gemv", "same") in mixed  # attention projections and the lm_head stay in the model's dtype
    assert {t for t, _ in bf16} == {t for t, _ in mixed}
