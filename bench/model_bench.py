"""Model benchmark: vision-tower time, prefill time, decode ms/token and peak memory, as JSON.

Random weights at the shapes of a preset; nothing is downloaded.

    python bench/model_bench.py --preset tiny                                  # CPU, seconds
    python bench/model_bench.py --device cuda --preset 8b --dtype bfloat16     # release shapes on one GPU

Workloads (the 8B figures of the upstream code were measured on the same ones):
- video: `--frames` frames of `--frame-size` pixels square, each frame its own grid row (the frames path), plus
  `--text-tokens` text tokens; the vision tower and the prefill of the whole prompt are timed.
- image: one `--image-hw` image plus the text tokens, then `--new-tokens` greedy tokens; decode ms/token is timed
  between the first and the last decoding step inside `generate` (the prefill is outside it). Timed twice: the
  default (dynamic cache, eager) and `cache_implementation="static"` with the decoding steps compiled.

Ratios are measured within one run: `compiled_over_eager_decode` compares the two decode figures;
`window_loop_vs_batched` re-times the vision tower with one attention call per
window (the upstream scheme) against ours (one call per distinct window length). On CUDA with the 8b preset the
upstream H200 figures are printed beside ours; compare them only on an H200 in bfloat16 with sdpa.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_model_options, best_time_ms, build_bench_model, decode_ms_per_token, emit_report  # noqa: E402

from llava_onevision2.modeling import LlavaOnevision2ForConditionalGeneration
from llava_onevision2.modeling.modeling_llava_onevision2 import LlavaOnevision2VisionAttention

# Upstream code, one H200, bf16, sdpa, 8B shapes (see issue 2).
UPSTREAM_H200_8B = {
    "vision_ms": 216.0,
    "video_prefill_ms": 869.0,
    "video_prefill_peak_gib": 21.2,
    "decode_ms_per_token": 33.0,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--frames", type=int, default=None, help="video frames (default 64 on CUDA, 8 on CPU)")
    parser.add_argument("--frame-size", type=int, default=448)
    parser.add_argument("--image-hw", default="1008x1344", help="image height x width in pixels")
    parser.add_argument("--text-tokens", type=int, default=82)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-window-loop", action="store_true", help="do not time the per-window-loop variant")
    parser.add_argument("--skip-compiled-decode", action="store_true", help="do not time static cache + compile")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def build_model(args) -> LlavaOnevision2ForConditionalGeneration:
    return build_bench_model(args.preset, args.device, args.dtype, args.attn).eval()


@contextmanager
def peak_memory(device: str, into: dict, key: str):
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    yield
    if device.startswith("cuda"):
        into[key] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:  # process-wide high-water mark, a coarse upper bound on CPU
        into[key + "_process_rss"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def visual_prompt(model, grid: torch.Tensor, text_tokens: int, device: str):
    """Random pixels for `grid` and a prompt with one image placeholder per merged token."""
    vision = model.config.vision_config
    num_patches = int(grid.prod(-1).sum())
    dtype = model.dtype
    pixel_values = torch.randn(num_patches, vision.num_channels * vision.patch_size**2, device=device, dtype=dtype)
    num_visual = num_patches // vision.spatial_merge_size**2
    text = torch.randint(10, 200, (text_tokens,), device=device)
    image = torch.full((num_visual,), model.config.image_token_id, device=device)
    input_ids = torch.cat([text[: text_tokens // 2], image, text[text_tokens // 2 :]])[None]
    return {"input_ids": input_ids, "pixel_values": pixel_values, "image_grid_thw": grid.to(device)}


def compile_config():
    """Fullgraph, static-shape compilation of the decoding steps, on any device (transformers' default is CUDA)."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=True, dynamic=False)
    config._compile_all_devices = True
    return config


def per_window_loop(self, attention_interface, query, key, value, windows, dropout):
    """The upstream scheme, for comparison only: one attention call per window."""
    bounds = windows.cu_seqlens.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        chunk = [x[start:end].transpose(0, 1)[None] for x in (query, key, value)]
        out, _ = attention_interface(
            self, *chunk, attention_mask=None, scaling=self.scaling, dropout=dropout, is_causal=False
        )
        outputs.append(out[0])
    return torch.cat(outputs)


def run(args) -> dict:
    model = build_model(args)
    device = args.device
    vision = model.config.vision_config
    unit = vision.patch_size * vision.spatial_merge_size
    frames = args.frames or (64 if device.startswith("cuda") else 8)
    side = (args.frame_size // unit) * vision.spatial_merge_size
    video = visual_prompt(model, torch.tensor([[1, side, side]] * frames), args.text_tokens, device)
    height, width = (int(v) for v in args.image_hw.split("x"))
    image_grid = torch.tensor(
        [[1, height // unit * vision.spatial_merge_size, width // unit * vision.spatial_merge_size]]
    )
    image = visual_prompt(model, image_grid, args.text_tokens, device)

    result = {
        "preset": args.preset,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "dtype": str(model.dtype).replace("torch.", ""),
        "attn": args.attn,
        "torch": torch.__version__,
        "video_patches": int(video["pixel_values"].shape[0]),
        "video_prompt_tokens": int(video["input_ids"].shape[1]),
        "image_prompt_tokens": int(image["input_ids"].shape[1]),
        "new_tokens": args.new_tokens,
    }
    with torch.inference_mode():
        encode = lambda: model.model.get_image_features(video["pixel_values"], video["image_grid_thw"])  # noqa: E731
        with peak_memory(device, result, "vision_peak_gib"):
            result["vision_ms"] = best_time_ms(encode, device, args.repeats)
        with peak_memory(device, result, "video_prefill_peak_gib"):
            result["video_prefill_ms"] = best_time_ms(lambda: model(**video, logits_to_keep=1), device, args.repeats)
        image_prefill = best_time_ms(lambda: model(**image, logits_to_keep=1), device, args.repeats)

        def decode(**options) -> float:
            runs = max(1, args.repeats - 1)
            return round(
                min(decode_ms_per_token(model, image, args.new_tokens, device, **options) for _ in range(runs)), 2
            )

        with peak_memory(device, result, "generate_peak_gib"):
            decode()  # warm-up
            result["decode_ms_per_token"] = decode()
        result["image_prefill_ms"] = image_prefill
        if not args.skip_compiled_decode:
            # Static cache + torch.compile'd decoding steps (the warm-up call compiles).
            compiled = dict(cache_implementation="static", compile_config=compile_config())
            try:
                started = time.perf_counter()
                decode(**compiled)
                result["compile_warmup_seconds"] = round(time.perf_counter() - started, 1)
                result["decode_static_compiled_ms_per_token"] = decode(**compiled)
                result["compiled_over_eager_decode"] = round(
                    result["decode_static_compiled_ms_per_token"] / result["decode_ms_per_token"], 2
                )
            except Exception as error:  # noqa: BLE001 - reported beside the eager figures, which stay valid
                result["decode_static_compiled_error"] = f"{type(error).__name__}: {error}"[:2000]
        if not args.skip_window_loop and "flash" not in args.attn:
            batched = LlavaOnevision2VisionAttention._attend_batched_windows
            merged = dict(video, image_grid_thw=torch.tensor([[frames, side, side]], device=device))
            encode_merged = lambda: model.model.get_image_features(merged["pixel_values"], merged["image_grid_thw"])  # noqa: E731
            ours_merged = best_time_ms(encode_merged, device, args.repeats)
            LlavaOnevision2VisionAttention._attend_batched_windows = per_window_loop
            try:
                loop_rows = best_time_ms(encode, device, args.repeats)
                loop_merged = best_time_ms(encode_merged, device, args.repeats)
            finally:
                LlavaOnevision2VisionAttention._attend_batched_windows = batched
            result["window_loop_vs_batched"] = {
                "frames_as_rows": round(loop_rows / result["vision_ms"], 2),
                "merged_grid": round(loop_merged / ours_merged, 2),
            }
    if args.preset == "8b" and device.startswith("cuda"):
        result["upstream_h200_bf16_sdpa"] = UPSTREAM_H200_8B
        result["speedup_vs_upstream"] = {
            key: round(UPSTREAM_H200_8B[key] / result[key], 2)
            for key in ("vision_ms", "video_prefill_ms", "decode_ms_per_token")
        }
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    emit_report(run(args), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
