"""The vision tower with several ways of applying its rotary embedding, timed in one run, alternating.

- `previous`: the rotation as first written here (and as the release writes it): queries and keys one at a time,
  upcast to float32, `x * cos + rotate(x) * sin` with the rotation built by negating and stacking, cast back;
- `torch`: `rotate_with_tables_in_torch` (pair-signed sin table built once per forward, queries and keys in one
  pass, products that promote without an upcast copy, the sum accumulated in place), the model's rotation on CPU
  and wherever gradients flow;
- `fused_cast`: as `torch`, but the final sum is written straight into the output dtype (inference only);
- `triton` (CUDA with triton installed): `rotate_with_tables_in_triton`, one kernel, the model's inference default
  there;
- `compiled` (CUDA with triton installed): `torch.compile` of the PyTorch rotation, the kernel inductor writes for
  it (for comparison; inductor may contract the products into fused multiply-adds, so its bits may differ).

All give the same bits (checked here on the whole tower's output). Reported: vision ms (best of the rounds), peak
memory per variant, and `previous / variant` ratios.

    python bench/rotary_bench.py --preset tiny --frames 4                 # CPU, seconds
    python bench/rotary_bench.py --device cuda --preset 8b --frames 64    # the model bench's 8B video workload
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_model_options, best_time_ms, emit_report  # noqa: E402

from llava_onevision2.modeling import LlavaOnevision2Config, LlavaOnevision2VisionModel
from llava_onevision2.modeling import modeling_llava_onevision2 as modeling
from llava_onevision2.modeling.vision_geometry_llava_onevision2 import rotate_with_tables_in_torch, swap_pairs
from llava_onevision2.modeling.vision_rotary_kernel_llava_onevision2 import rotate_with_tables_in_triton


def previous_rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One tensor `(N, heads, d)`: upcast, `x * cos + rotate(x) * sin` with (a, b) -> (-b, a), cast back."""
    x32 = x.to(torch.float32)
    pairs = x32.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (x32 * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


def previous_attention_forward(self, hidden_states, windows, rotary_cos, rotary_signed_sin, **kwargs):
    """The attention forward before the joint rotation; `rotary_signed_sin` holds the plain sin table here."""
    num_patches = hidden_states.shape[0]
    query, key, value = self.qkv(hidden_states).view(num_patches, 3, self.num_heads, self.head_dim).unbind(1)
    query = previous_rotation(query, rotary_cos, rotary_signed_sin)
    key = previous_rotation(key, rotary_cos, rotary_signed_sin)
    interface = modeling.ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling.eager_attention_forward
    )
    output = self._attend_batched_windows(interface, query, key, value, windows, 0.0)
    return self.proj(output.reshape(num_patches, -1))


def plain_tables(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return angles.cos(), angles.sin()


def fused_cast_rotation(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    cos, signed_sin = cos.view(shape), signed_sin.view(shape)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return torch.add(x * cos, swap_pairs(x) * signed_sin, out=out)


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def compiled_rotation():
    return torch.compile(rotate_with_tables_in_torch, fullgraph=True, dynamic=False)


@contextmanager
def variant(name: str):
    attention = modeling.LlavaOnevision2VisionAttention
    saved = (attention.forward, modeling.vision_rotary_tables, modeling.rotate_with_tables)
    try:
        if name == "previous":
            attention.forward = previous_attention_forward
            modeling.vision_rotary_tables = plain_tables
        elif name == "torch":
            modeling.rotate_with_tables = rotate_with_tables_in_torch
        elif name == "fused_cast":
            modeling.rotate_with_tables = fused_cast_rotation
        elif name == "triton":
            modeling.rotate_with_tables = rotate_with_tables_in_triton
        elif name == "compiled":
            modeling.rotate_with_tables = compiled_rotation()
        yield
    finally:
        attention.forward, modeling.vision_rotary_tables, modeling.rotate_with_tables = saved


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser, attention=False)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--frame-size", type=int, default=448)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict:
    """Build the tower and time every variant; returns the report."""

    on_cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if on_cuda else torch.float32)
    config = LlavaOnevision2Config.from_preset(args.preset).vision_config
    torch.manual_seed(0)
    with torch.device(args.device):
        tower = LlavaOnevision2VisionModel._from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    side = (args.frame_size // (config.patch_size * config.spatial_merge_size)) * config.spatial_merge_size
    grid = torch.tensor([[1, side, side]] * args.frames, device=args.device)
    pixels = torch.randn(int(grid.prod(-1).sum()), config.num_channels * config.patch_size**2, device=args.device)
    pixels = pixels.to(dtype)
    names = ("previous", "torch", "fused_cast") + (("triton", "compiled") if on_cuda and triton_installed() else ())
    timings = {name: [] for name in names}
    peaks, outputs = {}, {}
    with torch.inference_mode():
        for name in names:
            with variant(name):
                if on_cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                outputs[name] = tower(pixels, grid).last_hidden_state
                if on_cuda:
                    peaks[name] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        for _ in range(args.rounds):
            for name in names:
                with variant(name):
                    timings[name].append(best_time_ms(lambda: tower(pixels, grid), args.device, args.repeats))
    best = {name: min(values) for name, values in timings.items()}
    report = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if on_cuda else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "patches": int(pixels.shape[0]),
        "vision_ms": best,
        "previous_over": {name: round(best["previous"] / best[name], 3) for name in names[1:]},
        "peak_gib": peaks,
        "bit_equal_to_previous": {name: bool(torch.equal(outputs[name], outputs["previous"])) for name in names[1:]},
    }
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    emit_report(measure(args), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
