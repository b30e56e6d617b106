"""Video-to-model-inputs benchmark: our sampled decoding against decoding every frame, in one run, as JSON.

    python bench/video_bench.py                      # encodes a 10-minute 720p H.264 test video once (cached)
    python bench/video_bench.py --path movie.mp4     # any file you have

Each method runs in its own child process so that its peak RSS is its own:
- `sampled`: `LlavaOnevision2VideoProcessor` at `--fps` capped at `--max-frames` (index by demuxing, seek per GOP,
  convert only the sampled frames), through resize / normalise / patchify to `pixel_values_videos`;
- `decode_all`: the same frames and processing, but reached by decoding every frame of the file in order (what a
  reader without seeking does; frames are still dropped as they go, so its memory is not the naive worst case);
- `whole_clip`: the same frames decoded at full size and held together (`read_video`), then given to the processor
  as decoded frames (what a caller that decodes first does, and what our file path did before it resized frames as
  they are decoded). On high-resolution video the full-size clip outweighs the model inputs: try
  `--width 1920 --height 1080 --minutes 0.7 --fps 10 --max-frames 384`.

`pixel_values_mib` is the size of the model inputs; peak RSS includes the imports (about 0.7 GiB of torch and
transformers).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from llava_onevision2.training.synthetic_video import encode_frames

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_report  # noqa: E402

CACHE = Path(__file__).resolve().parent / "results"


def encode_test_video(
    path: Path, minutes: float, width: int, height: int, rate: int, keyframe_interval: int | None = None
) -> None:
    """A moving gradient with a bouncing box: cheap to encode, realistic GOP structure (x264 defaults, or a keyframe
    every `keyframe_interval` frames)."""
    frames = int(minutes * 60 * rate)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]

    def images():
        for index in range(frames):
            shift = index * 2
            base = ((x + shift) % 256 * 0.5 + (y + shift) % 256 * 0.5).astype(np.uint8)
            image = np.stack([base, np.roll(base, index, axis=1), 255 - base], axis=-1)
            top = (index * 7) % (height - 80)
            left = (index * 11) % (width - 80)
            image[top : top + 80, left : left + 80] = 255
            yield image

    options = {"preset": "ultrafast", "crf": "28"}
    encode_frames(images(), path, rate=rate, options=options, keyframe_interval=keyframe_interval)


def run_method(method: str, path: str, fps: float, max_frames: int) -> dict:
    from llava_onevision2.processing import video_decoding_llava_onevision2 as decoding
    from llava_onevision2.processing.video_processing_llava_onevision2 import LlavaOnevision2VideoProcessor

    if method == "decode_all":
        # Same index and targets, but a decoder that never seeks: every frame up to the last target is decoded.
        def decode_every_frame(container, index, wanted, name, store):
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            wanted_set, positions, decoded = set(wanted), [], 0
            pts_to_position = {int(p): i for i, p in enumerate(index.pts)}
            container.seek(int(index.pts[0]), stream=stream, backward=True)  # the index pass left it at the end
            for frame in container.decode(stream):
                decoded += 1
                position = pts_to_position.get(int(frame.pts), -1)
                if position in wanted_set:
                    store.add(decoding.frame_to_rgb(frame), position)
                    positions.append(position)
            return store.result(), positions, decoded

        decoding.decode_frames = decode_every_frame
    processor = LlavaOnevision2VideoProcessor(pad_to_even_frames=False)
    start = time.perf_counter()
    if method == "whole_clip":
        clip = decoding.read_video(path, fps=fps, max_frames=max_frames)
        out = processor(clip.frames, video_metadata={"fps": clip.fps}, do_sample_frames=False, return_metadata=True)
    else:
        out = processor(path, fps=fps, max_frames=max_frames, return_metadata=True)
    seconds = time.perf_counter() - start
    metadata = out["video_metadata"][0]
    clip_frames = len(metadata.frames_indices)
    return {
        "method": method,
        "seconds": round(seconds, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "sampled_frames": clip_frames,
        "source_frames": metadata.total_num_frames,
        "pixel_values_videos": list(out["pixel_values_videos"].shape),
        "pixel_values_mib": round(out["pixel_values_videos"].nbytes / 2**20, 1),
    }


def frames_decoded_by_sampled_reader(path: str, fps: float, max_frames: int) -> int:
    from llava_onevision2.processing.video_decoding_llava_onevision2 import read_video

    return read_video(path, fps=fps, max_frames=max_frames).frames_decoded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default=None, help="video file (default: a generated 10-minute 720p H.264 clip)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--rate", type=int, default=30)
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--max-frames", type=int, default=64)
    parser.add_argument("--output", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_method(args.child, args.path, args.fps, args.max_frames)))
        return 0

    path = args.path
    if path is None:
        CACHE.mkdir(exist_ok=True)
        path = str(CACHE / f"test_{args.minutes:g}min_{args.height}p_{args.rate}fps.mp4")
        if not os.path.exists(path):
            start = time.perf_counter()
            encode_test_video(Path(path), args.minutes, args.width, args.height, args.rate)
            print(f"encoded {path} in {time.perf_counter() - start:.1f}s", file=sys.stderr)

    results = {}
    for method in ("sampled", "decode_all", "whole_clip"):
        command = [
            sys.executable,
            __file__,
            "--child",
            method,
            "--path",
            path,
            "--fps",
            str(args.fps),
            "--max-frames",
            str(args.max_frames),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        results[method] = json.loads(completed.stdout.strip().splitlines()[-1])
    results["sampled"]["frames_decoded"] = frames_decoded_by_sampled_reader(path, args.fps, args.max_frames)
    results["decode_all"]["frames_decoded"] = results["decode_all"]["source_frames"]
    report = {
        "video": path,
        "duration_s": round(float(Fraction(results["sampled"]["source_frames"], args.rate)), 1),
        "fps": args.fps,
        "max_frames": args.max_frames,
        **results,
        "speedup_decode_all_over_sampled": round(results["decode_all"]["seconds"] / results["sampled"]["seconds"], 2),
        "rss_ratio_decode_all_over_sampled": round(
            results["decode_all"]["peak_rss_mib"] / results["sampled"]["peak_rss_mib"], 2
        ),
        "rss_ratio_whole_clip_over_sampled": round(
            results["whole_clip"]["peak_rss_mib"] / results["sampled"]["peak_rss_mib"], 2
        ),
    }
    emit_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
