"""Where the vision tower's time goes: the costliest device kernels (or host operations on a CPU) of one forward.

    python bench/vision_profile.py --preset tiny --frames 4                    # CPU, seconds
    python bench/vision_profile.py --device cuda --preset 8b --frames 64       # the model bench's 8B video workload

The workload is `bench/model_bench.py`'s video: `--frames` frames of `--frame-size` pixels, each its own grid row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_model_options, best_time_ms, build_bench_model  # noqa: E402
from model_bench import visual_prompt  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--frame-size", type=int, default=448)
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args(argv)

    from torch.profiler import ProfilerActivity, profile

    model = build_bench_model(args.preset, args.device, args.dtype, args.attn).eval()
    vision = model.config.vision_config
    side = (args.frame_size // (vision.patch_size * vision.spatial_merge_size)) * vision.spatial_merge_size
    video = visual_prompt(model, torch.tensor([[1, side, side]] * args.frames), 8, args.device)
    on_cuda = args.device.startswith("cuda")
    with torch.inference_mode():
        encode = lambda: model.model.get_image_features(video["pixel_values"], video["image_grid_thw"])  # noqa: E731
        print(f"vision_ms {best_time_ms(encode, args.device, 3)}")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
        with profile(activities=activities) as profiler:
            encode()
            if on_cuda:
                torch.cuda.synchronize()
    sort_by = "self_cuda_time_total" if on_cuda else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=args.rows, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
