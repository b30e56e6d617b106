"""Codec sampling benchmark: wall time, peak RSS and temporal coverage against uniform sampling at equal tokens.

    python bench/codec_bench.py                       # generated 1-minute 720p H.264 test video (cached)
    python bench/codec_bench.py --minutes 15          # the 15-minute memory target
    python bench/codec_bench.py --path movie.mp4

Each method runs in its own child process (its own peak RSS):
- `codec`: `sample_codec_video` with the released defaults (32 canvases, groups of 32 of 256 candidates, 4 images
  per group, max_pixels 150000);
- `uniform`: as many uniformly spaced frames as the codec path's tokens buy at the same canvas size, decoded by our
  frames reader and resized to the canvas;
- `cv-preinfer` (the released tool, from the `codec-video-prep` package) on the same file and settings, when it
  is on PATH.
Coverage: frames with at least one token, and seconds (whole seconds of the video) with at least one token.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_report  # noqa: E402
from video_bench import CACHE, encode_test_video  # noqa: E402


def run_codec(path: str) -> dict:
    from llava_onevision2.processing.codec_sampling_llava_onevision2 import CodecSamplingConfig, sample_codec_video

    config = CodecSamplingConfig(progress=False, cache_root=None)  # time the sampling, not a cache hit
    start = time.perf_counter()
    sample = sample_codec_video(path, config)
    seconds = time.perf_counter() - start
    frames = sorted({int(t) for t in sample.positions[:, 0] if t >= 0})
    times = dict(zip(sample.candidate_ids, sample.candidate_times))
    grid_h, grid_w = sample.grid
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "canvases": len(sample.canvases),
        "canvas_hw": list(sample.canvases.shape[1:3]),
        "tokens": len(sample.positions) // config.merge**2,
        "tokens_per_canvas": grid_h * grid_w // config.merge**2,
        "frames_covered": len(frames),
        "seconds_covered": len({int(times[t]) for t in frames}),
        "frames_decoded": sample.report["frames_decoded"],
        "groups": len(sample.groups),
    }


def run_uniform(path: str, num_frames: int, canvas_hw: list[int]) -> dict:
    from PIL import Image

    from llava_onevision2.processing.video_decoding_llava_onevision2 import read_video

    start = time.perf_counter()
    clip = read_video(path, num_frames=num_frames)
    canvases = np.stack(
        [np.asarray(Image.fromarray(frame).resize(canvas_hw[::-1], Image.BOX)) for frame in clip.frames]
    )
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "canvases": len(canvases),
        "frames_covered": len(clip.frame_indices),
        "seconds_covered": len({int(t) for t in clip.timestamps}),
        "frames_decoded": clip.frames_decoded,
    }


def run_cv_preinfer(path: str, binary: str) -> dict:
    """The released tool with the checkpoint's flags; run from a child so its peak RSS is its own."""
    with tempfile.TemporaryDirectory() as output:
        command = [
            binary,
            "--video",
            path,
            "--out_dir",
            output,
            "--num_sampled_frames",
            "256",
            "--grouping_mode",
            "readiness",
            "--group_size",
            "32",
            "--images_per_group",
            "4",
            "--patch",
            "14",
            "--max_pixels",
            "150000",
            "--readiness_sum_threshold",
            "0",
            "--min_group_frames",
            "8",
            "--max_group_frames",
            "64",
            "--avoid_keyframes",
            "--canvas_format",
            "jpg",
        ]
        start = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        canvases = len(list(Path(output).rglob("canvas_*")))
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "returncode": completed.returncode,
        "canvases": canvases,
        "error": completed.stderr[-300:] if completed.returncode else None,
    }


def child(method: str, path: str, extra: str) -> None:
    if method == "codec":
        result = run_codec(path)
    elif method == "cv-preinfer":
        result = run_cv_preinfer(path, extra)
    else:
        frames, height, width = (int(v) for v in extra.split(","))
        result = run_uniform(path, frames, [height, width])
    print(json.dumps(result))


def in_child(method: str, path: str, extra: str = "") -> dict:
    command = [sys.executable, __file__, "--child", method, "--path", path, "--extra", extra]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default=None)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--output", default=None)
    parser.add_argument("--cv-preinfer", default=shutil.which("cv-preinfer"), help="path of the released tool")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.path, args.extra)
        return 0

    path = args.path
    if path is None:
        CACHE.mkdir(exist_ok=True)
        path = str(CACHE / f"test_{args.minutes:g}min_720p_30fps.mp4")
        if not Path(path).exists():
            encode_test_video(Path(path), args.minutes, 1280, 720, 30)
    codec = in_child("codec", path)
    uniform_frames = max(1, codec["tokens"] // codec["tokens_per_canvas"])
    uniform = in_child("uniform", path, f"{uniform_frames},{codec['canvas_hw'][0]},{codec['canvas_hw'][1]}")
    minutes = args.minutes if args.path is None else None
    report = {
        "video": path,
        "tokens": codec["tokens"],
        "codec": codec,
        "uniform_same_tokens": uniform,
        "cv_preinfer": in_child("cv-preinfer", path, args.cv_preinfer)
        if args.cv_preinfer
        else {"status": "not installed (codec-video-prep; it also needs ffprobe on PATH)"},
        "coverage_ratio_frames": round(codec["frames_covered"] / uniform["frames_covered"], 2),
        "coverage_ratio_seconds": round(codec["seconds_covered"] / uniform["seconds_covered"], 2),
    }
    if minutes:
        report["codec_seconds_per_minute"] = round(codec["seconds"] / minutes, 2)
        report["uniform_seconds_per_minute"] = round(uniform["seconds"] / minutes, 2)
    emit_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
