"""The GPU check, prepared to run in one short lease of the device machine (H200; under 8 minutes).

What it measures, at the 8B shapes with random weights in bfloat16:
1. `bench/model_bench.py`'s workloads with sdpa: vision tower on 64 frames of 448x448 (65,536 patches), prefill of
   the ~16.5k-token video prompt, 64 greedy tokens after a 1,810-token image prompt (eager default and static cache
   + torch.compile), peak memory of each;
2. the flash-attention paths: the vision tower's one-varlen-call branch (flash-attn when installed, else PyTorch's
   own varlen flash kernel under the same calling convention) against sdpa: max |difference|, cosine, speed; and,
   when flash-attn is installed, the whole model's prefill logits;
3. the vision tower with each way of applying its rotary embedding (`bench/rotary_bench.py`: the fused Triton
   kernel, the model's default on CUDA, against the PyTorch rotations), same bits, time and peak memory;
4. the DataLoader hand-off (`bench/handoff_bench.py`, issue 11): the toy model's training step fed by workers, with
   and without `pin_memory`, and the time the loop waits for batches the workers have already made;
5. our goals beside the upstream H200 figures (vision 216 ms, prefill 869 ms at 21.2 GiB, 33 ms/token).

On the device (its image has torch 2.11 and transformers 5.17; transformers 5.25 and what it needs beyond the image
travel as wheels, downloaded here for Python 3.12 / manylinux x86_64 with `pip download --no-deps --only-binary=:all:`):

    echo /.whl/ >> .git/info/exclude
    # into .whl: transformers==5.25.0 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 truststore click==8.5.1
    #            hf-xet==1.8.0 idna anyio==4.16.0 h11==0.16.0 regex==2026.11.19 kernels==0.19.1 tomlkit
    # run (carry .whl):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target /tmp/site .whl/*.whl . \\
        && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --output $OUT/gpu_check.json

That run took 94 s on an H200 (2026-12-04, `bench/h200/`, before the rotary and hand-off phases were added); the
report is rewritten after each phase. `bench/gpu_lease.sh` runs the install, this check and the peer benchmark at the
8B widths in one device call.

`python bench/gpu_check.py --device cpu --preset tiny --frames 4` runs the same code paths on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time_ms, emit_report  # noqa: E402
from handoff_bench import measure as handoff_measure  # noqa: E402
from handoff_bench import parse_args as handoff_args  # noqa: E402
from model_bench import build_model, run, visual_prompt  # noqa: E402
from model_bench import parse_args as model_bench_args  # noqa: E402
from rotary_bench import measure as rotary_measure  # noqa: E402
from rotary_bench import parse_args as rotary_args  # noqa: E402

GOALS_H200_8B = {"vision_ms": 150.0, "video_prefill_ms": 800.0, "decode_ms_per_token": 11.0}
UPSTREAM_PEAK_GIB = 21.2


def torch_varlen_flash(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """PyTorch's varlen flash kernel behind transformers' flash-attention calling convention ([1, heads, N, d]).

    On a CPU (smoke runs) the kernel is missing, so each window runs through SDPA instead.
    """
    cu = kwargs["cu_seq_lens_q"].to(torch.int32)
    if query.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [N, heads, d]
        out = varlen_attn(q, k, v, cu, cu, kwargs["max_length_q"], kwargs["max_length_k"], **scale_option(scaling, q))
        return out[None], None  # [1, N, heads, d]
    bounds = cu.tolist()
    windows = [
        torch.nn.functional.scaled_dot_product_attention(*(x[:, :, a:b] for x in (query, key, value)), scale=scaling)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(windows, dim=2).transpose(1, 2), None


def scale_option(scaling: float, query: torch.Tensor) -> dict:
    """`scale=` where this torch's varlen kernel takes it (2.12+); older ones always use 1/sqrt(head_dim)."""
    from torch.nn.attention.varlen import varlen_attn

    if "scale" in inspect.signature(varlen_attn).parameters:
        return {"scale": scaling}
    if abs(scaling - query.shape[-1] ** -0.5) > 1e-9:
        raise ValueError(f"this torch's varlen_attn has no scale argument and the model scales by {scaling}")
    return {}


def flash_backend() -> str:
    """ "flash-attn" when the package is importable, else PyTorch's varlen kernel registered in its place."""
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash-attn"
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS._global_mapping["flash_attention_2"] = torch_varlen_flash
    return "torch varlen_attn (flash-attn not installed)"


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.float().flatten(), b.float().flatten()
    return {
        "max_abs_difference": float((a - b).abs().max()),
        "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
    }


def flash_parity(args) -> dict:
    """The vision tower (and, with flash-attn, the whole prefill) with sdpa and with the flash path."""
    backend = flash_backend()
    model = build_model(args)
    vision = model.config.vision_config
    side = (args.frame_size // (vision.patch_size * vision.spatial_merge_size)) * vision.spatial_merge_size
    # 4-frame windows on merged rows: the varlen call sees many windows, as for training-format video.
    frames = min(args.frames, 16)
    grid = torch.tensor([[frames, side, side]])
    inputs = visual_prompt(model, grid, args.text_tokens, args.device)
    report = {"backend": backend, "frames": frames}
    with torch.inference_mode():
        encode = lambda: model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])  # noqa: E731
        sdpa_features = torch.cat(list(encode().pooler_output))
        report["vision_sdpa_ms"] = best_time_ms(encode, args.device, args.repeats)
        model.model.visual.config._attn_implementation = "flash_attention_2"
        flash_features = torch.cat(list(encode().pooler_output))
        report["vision_flash_ms"] = best_time_ms(encode, args.device, args.repeats)
        report["vision_features"] = compare(flash_features, sdpa_features)
        if backend == "flash-attn":
            model.model.visual.config._attn_implementation = "sdpa"
            sdpa_logits = model(**inputs, logits_to_keep=1).logits
            model.set_attn_implementation("flash_attention_2")
            report["prefill_flash_ms"] = best_time_ms(
                lambda: model(**inputs, logits_to_keep=1), args.device, args.repeats
            )
            report["prefill_logits"] = compare(model(**inputs, logits_to_keep=1).logits, sdpa_logits)
    return report


def guarded(report: dict, key: str, output: str | None, phase) -> None:
    """Run one phase into `report[key]`; a failure is recorded with its traceback and the later phases still run.
    The report is written after every phase, so a run stopped at its time limit still leaves what it measured."""
    started = time.perf_counter()
    try:
        report[key] = phase()
    except Exception as error:  # noqa: BLE001 - one failed phase must not lose the others' figures
        report[key] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=6)}
    report.setdefault("phase_seconds", {})[key] = round(time.perf_counter() - started, 1)
    free_device_memory()
    if output:
        emit_report(report, output, quiet=True)


def free_device_memory() -> None:
    """Drop compiled graphs (they hold the previous model's weights) and cached blocks before the next phase."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def goals(sdpa: dict) -> dict:
    """Our figures beside the goals for the 8B shapes on an H200 (issue 14) and the upstream peak memory."""
    limits = {
        **GOALS_H200_8B,
        "decode_static_compiled_ms_per_token": GOALS_H200_8B["decode_ms_per_token"],
        "video_prefill_peak_gib": UPSTREAM_PEAK_GIB,
    }
    return {
        key: {"goal": limit, "ours": sdpa.get(key), "met": sdpa.get(key) is not None and sdpa[key] <= limit}
        for key, limit in limits.items()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="8b")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--output")
    args, rest = parser.parse_known_args(argv)
    bench_args = model_bench_args(
        ["--device", args.device, "--preset", args.preset, "--frames", str(args.frames), "--skip-window-loop", *rest]
    )
    started = time.perf_counter()
    report: dict = {}
    guarded(report, "sdpa", args.output, lambda: run(bench_args))
    guarded(report, "flash", args.output, lambda: flash_parity(bench_args))
    rotary = ["--device", args.device, "--preset", args.preset, "--frames", str(args.frames), "--rounds", "2"]
    guarded(report, "rotary", args.output, lambda: rotary_measure(rotary_args(rotary)))
    handoff = ["--device", args.device, "--steps", "40"]
    guarded(report, "dataloader_handoff", args.output, lambda: handoff_measure(handoff_args(handoff)))
    if args.preset == "8b" and args.device.startswith("cuda") and "error" not in report["sdpa"]:
        report["goals"] = goals(report["sdpa"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    emit_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
