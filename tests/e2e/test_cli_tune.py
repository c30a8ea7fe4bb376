"""`ds4c tune MODEL --precision`: the kernel problems it tunes are those `ds4c compile --precision` emits."""

from ds4c import kernel_templates
from ds4c.cli import _problems_from
from ds4c.tuning_db.key import token_value


def _weights(precision: str) -> set:
    return {(t if isinstance(t, str) else t.name, p.get("w_dtype"))
            for t, p in _problems_from("tiny-llama", 8, 24, precision)}


def test_mixed_precision_tunes_the_int8_ffn_kernels():
    bf16, mixed = _weights("bf16"), _weights("mixed")
    assert ("gemv", "int8") in mixed and ("gemv", "int8") not in bf16
    assert ("gemv", "same") in mixed  # attention projections and the lm_head stay in the model's dtype
    assert {t for t, _ in bf16} == {t for t, _ in mixed}


def test_every_emitted_template_names_token_dims_its_problems_have():
    """A lookup borrows across a template's token dimensions: each must be an int key of the problems that
    the compiler emits (a misspelt one silently turns borrowing off)."""
    emitted = {}
    for precision in ("bf16", "mixed"):
        for t, p in _problems_from("tiny-llama", 64, 128, precision):
            emitted.setdefault(t if isinstance(t, str) else t.name, []).append(p)
    assert {"matmul", "gemv", "rmsnorm", "rope_kv", "flash_attention", "decode_attention_rope"} <= set(emitted)
    for name, problems in emitted.items():
        dims = kernel_templates.get(name).token_dims
        assert dims, f"{name} has no token dimension"
        for p in problems:
            assert all(type(token_value(p, d)) is int for d in dims), (name, dims, p)
