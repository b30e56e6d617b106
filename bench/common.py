"""Shared pieces of the benchmark scripts (run from the repository root or from bench/)."""

import json
from pathlib import Path

# A tiny model for CPU smoke runs of the benchmarks (random weights; shapes only).
TINY_CONFIG = {
    "vision_config": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, out_hidden_size=128
    ),
    "text_config": dict(
        model_type="qwen3",
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
    ),
    "image_token_id": 5,
    "video_token_id": 6,
}


def emit_report(report: dict, output: str | None) -> None:
    """Print the JSON report and, when asked, write it to `output`."""
    text = json.dumps(report, indent=2)
    print(text)
    if output:
        Path(output).write_text(text + "\n")
