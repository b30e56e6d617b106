"""Peak memory of `convert encoder-plus-llm` on 8B-shaped weights (bf16), measured in a child process.

    python bench/convert_bench.py [--text-layers 2] [--vision-layers 4] [--max-shard-mib 512] [--output r.json]

The source folders are written at the 8B widths (vision 1024 / 4096 MLP, text 4096 / 12288 MLP, vocabulary 151,936,
so the largest tensors are the real ones) with fewer layers, each tensor group in its own small file. The child
imports the project, records its resident memory, converts, and reports its peak. Reported: peak above the import
baseline, next to the output shard size, the largest tensor and the checkpoint size.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_report  # noqa: E402

MIB = 1024**2
VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, patch_size=14)
TEXT = dict(
    model_type="qwen3",
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=12288,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


def random_bf16(*shape) -> torch.Tensor:
    return torch.empty(*shape, dtype=torch.bfloat16).normal_(0, 0.02)


def write_encoder(folder: Path, layers: int) -> None:
    folder.mkdir()
    d, m = VISION["hidden_size"], VISION["intermediate_size"]
    save_file(
        {
            "vision_model.embeddings.patch_embedding.weight": random_bf16(d, 3, 14, 14),
            "vision_model.layernorm_pre.weight": random_bf16(d),
            "vision_model.layernorm_pre.bias": random_bf16(d),
        },
        str(folder / "model-embed.safetensors"),
    )
    for i in range(layers):
        p = f"vision_model.encoder.layers.{i}."
        tensors = {
            p + f"self_attn.{n}_proj.{k}": random_bf16(d, d) if k == "weight" else random_bf16(d)
            for n in ("q", "k", "v", "out")
            for k in ("weight", "bias")
        }
        tensors |= {
            p + "mlp.fc1.weight": random_bf16(m, d),
            p + "mlp.fc1.bias": random_bf16(m),
            p + "mlp.fc2.weight": random_bf16(d, m),
            p + "mlp.fc2.bias": random_bf16(d),
        }
        tensors |= {p + f"layer_norm{j}.{k}": random_bf16(d) for j in (1, 2) for k in ("weight", "bias")}
        save_file(tensors, str(folder / f"model-layer{i}.safetensors"))
    config = {**VISION, "num_hidden_layers": layers, "model_type": "onevision_encoder"}
    (folder / "config.json").write_text(json.dumps(config))


def write_language_model(folder: Path, layers: int, tokenizer_from: Path) -> None:
    folder.mkdir()
    h, m, v = TEXT["hidden_size"], TEXT["intermediate_size"], TEXT["vocab_size"]
    kv = TEXT["num_key_value_heads"] * TEXT["head_dim"]
    save_file({"model.embed_tokens.weight": random_bf16(v, h)}, str(folder / "model-embed.safetensors"))
    save_file(
        {"lm_head.weight": random_bf16(v, h), "model.norm.weight": random_bf16(h)},
        str(folder / "model-head.safetensors"),
    )
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors = {
            p + "self_attn.q_proj.weight": random_bf16(h, h),
            p + "self_attn.k_proj.weight": random_bf16(kv, h),
            p + "self_attn.v_proj.weight": random_bf16(kv, h),
            p + "self_attn.o_proj.weight": random_bf16(h, h),
            p + "self_attn.q_norm.weight": random_bf16(128),
            p + "self_attn.k_norm.weight": random_bf16(128),
            p + "mlp.gate_proj.weight": random_bf16(m, h),
            p + "mlp.up_proj.weight": random_bf16(m, h),
            p + "mlp.down_proj.weight": random_bf16(h, m),
            p + "input_layernorm.weight": random_bf16(h),
            p + "post_attention_layernorm.weight": random_bf16(h),
        }
        save_file(tensors, str(folder / f"model-layer{i}.safetensors"))
    (folder / "config.json").write_text(json.dumps({**TEXT, "num_hidden_layers": layers}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tokenizer_from / name).read_bytes())


def memory_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. (ru_maxrss would carry the parent's peak across exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(encoder: str, llm: str, output: str, shard_bytes: int) -> None:
    from llava_onevision2.hub_upload.convert import convert_encoder_plus_llm

    baseline = memory_mib("VmRSS")
    report = convert_encoder_plus_llm(encoder, llm, output, max_shard_size=shard_bytes)
    print(json.dumps({"baseline_mib": baseline, "peak_mib": memory_mib("VmHWM"), "shards": report["shards"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--max-shard-mib", type=int, default=512)
    parser.add_argument("--output")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child[:3], int(args.child[3]))
        return
    from llava_onevision2.training.toy import build_toy_processor

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        build_toy_processor(str(root / "tokenizer"))
        write_encoder(root / "encoder", args.vision_layers)
        write_language_model(root / "llm", args.text_layers, root / "tokenizer")
        source_bytes = sum(f.stat().st_size for f in (root / "encoder").glob("*.safetensors"))
        source_bytes += sum(f.stat().st_size for f in (root / "llm").glob("*.safetensors"))
        shard = args.max_shard_mib * MIB
        result = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(root / "encoder"),
                str(root / "llm"),
                str(root / "out"),
                str(shard),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(result.stdout.strip().splitlines()[-1])
    largest = TEXT["vocab_size"] * TEXT["hidden_size"] * 2
    above = measured["peak_mib"] - measured["baseline_mib"]
    emit_report(
        {
            "checkpoint_mib": round(source_bytes / MIB),
            "max_shard_mib": args.max_shard_mib,
            "largest_tensor_mib": round(largest / MIB),
            "import_baseline_mib": round(measured["baseline_mib"]),
            "peak_mib": round(measured["peak_mib"]),
            "peak_above_baseline_mib": round(above),
            "peak_above_baseline_over_checkpoint": round(above * MIB / source_bytes, 3),
            "peak_above_baseline_over_largest_tensor": round(above * MIB / largest, 3),
            "output_shards": measured["shards"],
        },
        args.output,
    )


if __name__ == "__main__":
    main()
