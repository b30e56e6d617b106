"""Eager decode: our model against transformers' own Qwen3ForCausalLM at the same language-model shapes.

Eager decoding of an 8B model on one GPU is bound by the host issuing kernels, not by the GPU, so any per-step work
our wrapper adds (position ids, input checks, visual-input plumbing) shows directly in ms/token. This bench times
greedy decoding of both models in one run, alternating, with the same prompt length and the same number of new
tokens, and prints `ours_over_qwen3` (1.0 means the wrapper adds nothing). With `--profile` it also lists the host
operations that cost the most during our model's decoding steps.

    python bench/decode_overhead.py --preset tiny                                # CPU, seconds
    python bench/decode_overhead.py --device cuda --preset 8b --profile          # the 8B shapes on one GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_model_options, build_bench_model, decode_ms_per_token, emit_report  # noqa: E402


def build_qwen3(config, device: str, dtype: torch.dtype):
    """transformers' Qwen3ForCausalLM with our language model's configuration and random weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(
            config.text_config, dtype=dtype, attn_implementation=config.text_config._attn_implementation
        ).eval()


def text_prompt(tokens: int, device: str) -> dict:
    return {"input_ids": torch.randint(10, 200, (1, tokens), device=device)}


def profile_decode(model, inputs: dict, new_tokens: int, device: str, rows: int) -> str:
    """The host operations that cost the most across one greedy `generate` (its prefill included, once)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as profiler:
        decode_ms_per_token(model, inputs, new_tokens, device)
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--prompt-tokens", type=int, default=1810, help="the model bench's image prompt length")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also print the costliest host operations (ours)")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--output")
    args = parser.parse_args(argv)

    ours = build_bench_model(args.preset, args.device, args.dtype, args.attn).eval()
    qwen3 = build_qwen3(ours.config, args.device, ours.dtype)
    inputs = text_prompt(args.prompt_tokens, args.device)
    timings = {"ours": [], "qwen3": []}
    with torch.inference_mode():
        for model in (ours, qwen3):  # warm-up
            decode_ms_per_token(model, inputs, args.new_tokens, args.device)
        for _ in range(args.rounds):
            for name, model in (("ours", ours), ("qwen3", qwen3)):
                timings[name].append(decode_ms_per_token(model, inputs, args.new_tokens, args.device))
        table = profile_decode(ours, inputs, args.new_tokens, args.device, args.profile_rows) if args.profile else None
    best = {name: round(min(values), 3) for name, values in timings.items()}
    report = {
        "preset": args.preset,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": str(ours.dtype).replace("torch.", ""),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "decode_ms_per_token": best,
        "ours_over_qwen3": round(best["ours"] / best["qwen3"], 3),
    }
    emit_report(report, args.output)
    if table:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
