"""`ds4c convert GGUF OUT_DIR`: turn a llama.cpp GGUF into a Hugging Face checkpoint folder ds4c can load."""

from __future__ import annotations

import click
import torch

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@click.command("convert")
@click.argument("gguf", type=click.Path(dir_okay=False, path_type=str))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--dtype", type=click.Choice(sorted(_DTYPES)), default="bfloat16", show_default=True,
              help="dtype of the written weights (GGUF tensors are dequantized first)")
def convert(gguf: str, out_dir: str, dtype: str) -> None:
    """Convert the llama-architecture GGUF file GGUF into the checkpoint folder OUT_DIR."""
    from ds4c.errors import Ds4cError
    from ds4c.gguf_convert import convert_gguf

    try:
        out = convert_gguf(gguf, out_dir, _DTYPES[dtype])
    except Ds4cError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {out} (model.safetensors, config.json, tokenizer.json, tokenizer_config.json)")
