"""Peer benchmark: our model against transformers' own Qwen3-VL at equal vision depth / width and the same Qwen3
language model, on one image, 16 frames and 64 frames (frames sent as images, each its own attention window in
both models). Random weights; nothing is downloaded.

    python bench/peer_bench.py                 # CPU-sized shapes (a few minutes on 2 cores)
    python bench/peer_bench.py --device cuda --vision-depth 24 --vision-width 1024 --text-width 4096 --text-layers 36

Both models get the same pixel rows (patch 14, no temporal merging, merge 2), the same grids and the same token ids;
Qwen3-VL keeps what makes it Qwen3-VL (learned position embeddings, deepstack mergers at 1/3, 2/3 and 8/9 of the
depth, M-RoPE). Every (model, workload) runs in its own child process, alternating, for its own peak memory; the
best of the rounds is kept. Reported per workload: prefill ms, decode ms/token (between the first and the last
decoding step of one `generate`, so no prefill noise), peak memory, and Qwen3-VL / ours for each (above 1 means ours is ahead).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time_ms, decode_ms_per_token, emit_report  # noqa: E402

IMAGE, VIDEO, VISION_START, VISION_END = 5, 6, 3, 4
PATCH, MERGE = 14, 2


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1024**3
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def build(kind: str, args):
    text = dict(
        vocab_size=4096,
        hidden_size=args.text_width,
        intermediate_size=args.text_width * 3,
        num_hidden_layers=args.text_layers,
        num_attention_heads=args.text_width // 64,
        num_key_value_heads=max(1, args.text_width // 128),
        head_dim=64,
    )
    vision = dict(hidden_size=args.vision_width, intermediate_size=args.vision_width * 4)
    tokens = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device != "cpu" else torch.float32)
    torch.manual_seed(0)
    if kind == "ours":
        from llava_onevision2.modeling import LlavaOnevision2Config, LlavaOnevision2ForConditionalGeneration

        config = LlavaOnevision2Config(
            vision_config=dict(
                **vision,
                num_hidden_layers=args.vision_depth,
                num_attention_heads=args.vision_width // 64,
                patch_size=PATCH,
                spatial_merge_size=MERGE,
                out_hidden_size=args.text_width,
            ),
            text_config=dict(model_type="qwen3", **text),
            vision_end_token_id=VISION_END,
            **tokens,
        )
        cls = LlavaOnevision2ForConditionalGeneration
    else:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        depth = args.vision_depth
        config = Qwen3VLConfig(
            vision_config=dict(
                **vision,
                depth=depth,
                num_heads=args.vision_width // 64,
                patch_size=PATCH,
                temporal_patch_size=1,
                spatial_merge_size=MERGE,
                out_hidden_size=args.text_width,
                deepstack_visual_indexes=sorted({max(0, depth // 3), max(0, 2 * depth // 3), max(0, 8 * depth // 9)}),
            ),
            text_config=dict(
                **text, rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [12, 10, 10]}
            ),
            vision_end_token_id=VISION_END,
            **tokens,
        )
        cls = Qwen3VLForConditionalGeneration
    with torch.device(args.device):
        return cls._from_config(config, dtype=dtype, attn_implementation=args.attn).eval()


def workload(frames: int, side: int, text_tokens: int, device: str, dtype) -> dict:
    """`frames` images of `side` x `side` pixels, each `<vision_start><image_pad> x k<vision_end>`, then text."""
    grid_side = side // (PATCH * MERGE) * MERGE
    grid = torch.tensor([[1, grid_side, grid_side]] * frames)
    per_frame = grid_side * grid_side // MERGE**2
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(frames * grid_side * grid_side, 3 * PATCH * PATCH, generator=generator).to(dtype)
    ids = [7, 8, 9]
    for _ in range(frames):
        ids += [VISION_START] + [IMAGE] * per_frame + [VISION_END]
    ids += torch.randint(10, 4000, (text_tokens,), generator=generator).tolist()
    input_ids = torch.tensor([ids])
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "mm_token_type_ids": (input_ids == IMAGE).int().to(device),
        "pixel_values": pixel_values.to(device),
        "image_grid_thw": grid.to(device),
    }


def child(kind: str, frames: int, args) -> dict:
    model = build(kind, args)
    inputs = workload(
        frames, args.frame_size if frames > 1 else args.image_size, args.text_tokens, args.device, model.dtype
    )
    if kind == "ours":
        inputs.pop("mm_token_type_ids")

    with torch.inference_mode():
        prefill = best_time_ms(lambda: model(**inputs, logits_to_keep=1), args.device, args.repeats)
        decode = min(decode_ms_per_token(model, inputs, args.new_tokens, args.device) for _ in range(args.repeats))
    return {
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "prefill_ms": round(prefill, 1),
        "decode_ms_per_token": round(decode, 2),
        "peak_gib": round(peak_memory_gib(args.device), 3),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--vision-depth", type=int, default=4)
    parser.add_argument("--vision-width", type=int, default=256)
    parser.add_argument("--text-width", type=int, default=512)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=896)
    parser.add_argument("--frame-size", type=int, default=224)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    return parser, parser.parse_args(argv)


def main(argv=None) -> None:
    parser, args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args)))
        return
    passthrough = [
        token
        for action in parser._actions
        if action.dest not in ("help", "output", "child") and getattr(args, action.dest) is not None
        for token in (action.option_strings[0], str(getattr(args, action.dest)))
    ]
    results = {}
    shapes = {k: getattr(args, k) for k in ("vision_depth", "vision_width", "text_width", "text_layers", "attn")}
    report = {"device": args.device, "torch": torch.__version__, "shapes": shapes, "results": results}
    for frames in (1, 16, 64):
        name = "image" if frames == 1 else f"{frames} frames"
        runs = {"ours": [], "qwen3_vl": []}
        for _ in range(args.rounds):
            for kind in runs:  # alternate, so drift hits both alike
                out = subprocess.run(
                    [sys.executable, __file__, *passthrough, "--child", kind, str(frames)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
        best = {
            kind: {key: min(r[key] for r in rs) if key != "prompt_tokens" else rs[0][key] for key in rs[0]}
            for kind, rs in runs.items()
        }
        best["qwen3_vl_over_ours"] = {
            key: round(best["qwen3_vl"][key] / best["ours"][key], 2)
            for key in ("prefill_ms", "decode_ms_per_token", "peak_gib")
        }
        results[name] = best
        # written after every workload, so a run stopped at a time limit keeps the rows it finished
        emit_report(report, args.output, quiet=True)
    emit_report(report, args.output)


if __name__ == "__main__":
    main()
