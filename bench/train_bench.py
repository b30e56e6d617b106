"""Training throughput: real (non-padding) tokens per second and model FLOPs utilisation, with and without packing.

    python bench/train_bench.py --preset tiny                                   # CPU smoke numbers
    python bench/train_bench.py --device cuda --preset 8b --seq-len 8192 --peak-tflops 989

Synthetic samples of varied lengths (each with one image of `--image-size` pixels) are batched two ways in the same
run: padded to the longest sample (`packing: false`) and packed into rows of `--seq-len` tokens (`packing: true`).
Each configuration runs `--steps` AdamW steps after a warm-up; tokens/s counts only real tokens. MFU uses the usual
6 x parameters x tokens for the language model plus 6 x vision parameters x patches, over `--peak-tflops`.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_model_options, build_bench_model, emit_report  # noqa: E402

from llava_onevision2.training.collator import MultimodalCollator


def synthetic_samples(config, count: int, seq_len: int, image_size: int, generator) -> list[dict]:
    vision = config.vision_config
    grid = image_size // vision.patch_size // vision.spatial_merge_size * vision.spatial_merge_size
    patches = grid * grid
    tokens = patches // vision.spatial_merge_size**2
    samples = []
    for _ in range(count):
        text = int(torch.randint(seq_len // 8, seq_len // 2 - tokens, (1,), generator=generator))
        ids = torch.randint(10, config.text_config.vocab_size, (text + tokens,), generator=generator)
        ids[:tokens] = config.image_token_id
        samples.append(
            {
                "input_ids": ids.numpy(),
                "labels": ids.numpy(),
                "pixel_values": torch.randn(
                    patches, vision.num_channels * vision.patch_size**2, generator=generator
                ).numpy(),
                "image_grid_thw": torch.tensor([[1, grid, grid]]).numpy(),
            }
        )
    return samples


def flops_per_step(model, batch) -> float:
    vision_params = sum(p.numel() for p in model.model.visual.parameters())
    text_params = sum(p.numel() for n, p in model.named_parameters() if "visual" not in n)
    tokens = int((batch["labels"] != -100).sum())
    patches = int(batch["pixel_values"].shape[0])
    return 6.0 * (text_params * tokens + vision_params * patches)


def measure(model, batches, device, steps: int) -> dict:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def step(batch):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = flops = 0
    for index in range(steps):
        batch = batches[index % len(batches)]
        step(batch)
        tokens += int((batch["labels"] != -100).sum())
        flops += flops_per_step(model, batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"tokens_per_second": round(tokens / seconds, 1), "achieved_tflops": round(flops / seconds / 1e12, 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--samples-per-step", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak (e.g. 989 for H100 bf16)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    model = build_bench_model(args.preset, args.device, args.dtype, args.attn)
    config, dtype = model.config, model.dtype
    model.config.use_cache = False
    generator = torch.Generator().manual_seed(0)
    samples = [
        synthetic_samples(config, args.samples_per_step, args.seq_len, args.image_size, generator) for _ in range(3)
    ]
    results = {}
    for packing in (False, True):
        collate = MultimodalCollator(pad_token_id=0, packing=packing, max_length=args.seq_len)
        batches = [collate(group) for group in samples]
        result = measure(model, batches, args.device, args.steps)
        result["rows_per_step"] = int(batches[0]["input_ids"].shape[0])
        result["padding_share"] = round(1 - float((batches[0]["labels"] != -100).float().mean()), 3)
        if args.peak_tflops:
            result["mfu"] = round(result["achieved_tflops"] / args.peak_tflops, 4)
        results[f"packing_{str(packing).lower()}"] = result
    report = {
        "preset": args.preset,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "seq_len": args.seq_len,
        "samples_per_step": args.samples_per_step,
        "image_size": args.image_size,
        **results,
        "packing_speedup": round(
            results["packing_true"]["tokens_per_second"] / results["packing_false"]["tokens_per_second"], 2
        ),
    }
    emit_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
