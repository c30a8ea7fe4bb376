"""--plot: bar charts of one bench record, the engines side by side (matplotlib, imported here only)."""

from __future__ import annotations

from pathlib import Path

PANELS = (  # (record key, title, roofline key or None)
    ("ttft_ms", "time to first token, ms (lower is better)", "prefill_ms"),
    ("decode_tok_s", "decode tokens/s (higher is better)", "decode_tok_s"),
    ("j_per_token", "energy, J/token", None),
    ("peak_mem_gib", "peak memory, GiB", None),
)


def plot_record(rec: dict, out: Path) -> Path:
    """Write a PNG with one bar chart per figure; the roofline floor drawn as a dashed line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib (pip install matplotlib)") from e
    names = list(rec["engines"])
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    for ax, (key, title, floor_key) in zip(axes, PANELS, strict=True):
        vals = [rec["engines"][n].get(key) for n in names]
        ax.bar(names, [v or 0.0 for v in vals], color="tab:blue")
        for i, v in enumerate(vals):
            ax.annotate("n/a" if v is None else f"{v:.3g}", (i, v or 0.0), ha="center", va="bottom",
                        fontsize=8)
        if floor_key and rec["roofline"].get(floor_key):
            ax.axhline(rec["roofline"][floor_key], color="tab:red", linestyle="--", label="roofline")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    w = rec["workload"]
    fig.suptitle(f"{w['config']} on {rec['gpu']}: prompt {w['prompt_len']}, decode {w['decode_len']}",
                 fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
