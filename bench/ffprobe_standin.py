"""A PyAV stand-in for the two `ffprobe` queries the released `cv-preinfer` makes, for benchmarking it where no
FFmpeg binaries are installed (`bench/codec_bench.py --ffprobe-standin` puts it on PATH as `ffprobe`).

Answered: `-show_entries stream=...[:format=...] -of json|default=...` (codec name, size, bit rates, average frame
rate, frame count, duration) and `-show_entries frame=key_frame,best_effort_timestamp_time -of csv=p=0`, optionally
with `-skip_frame nokey` (keyframes only). Anything else exits with status 1 and says so, as a failed probe would.
"""

import json
import sys

import av


def option(args: list[str], name: str, default: str = "") -> str:
    return args[args.index(name) + 1] if name in args else default


def stream_entries(container, stream) -> dict:
    rate = stream.average_rate
    frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    return {
        "codec_name": stream.codec_context.name,
        "width": stream.codec_context.width,
        "height": stream.codec_context.height,
        "bit_rate": str(stream.bit_rate or 0),
        "avg_frame_rate": f"{rate.numerator}/{rate.denominator}" if rate else "0/0",
        "nb_frames": str(frames),
    }


def format_entries(container) -> dict:
    return {"bit_rate": str(container.bit_rate or 0), "duration": f"{(container.duration or 0) / 1e6:.6f}"}


def print_streams(container, stream, entries: str, output_format: str) -> None:
    stream_part, _, format_part = entries[len("stream=") :].partition(":format=")
    values = stream_entries(container, stream)
    if output_format == "json":
        report = {"streams": [{key: values[key] for key in stream_part.split(",") if key in values}]}
        if format_part:
            extra = format_entries(container)
            report["format"] = {key: extra[key] for key in format_part.split(",") if key in extra}
        print(json.dumps(report))
    else:
        for key in stream_part.split(","):
            print(values[key])


def print_frames(container, stream, entries: str, keyframes_only: bool) -> None:
    keys = entries[len("frame=") :].split(",")
    for frame in container.decode(stream):
        if keyframes_only and not frame.key_frame:
            continue
        stamp = f"{float(frame.pts * stream.time_base):.6f}" if frame.pts is not None else "N/A"
        values = {"key_frame": "1" if frame.key_frame else "0", "best_effort_timestamp_time": stamp}
        print(",".join(values[key] for key in keys))


def main(args: list[str]) -> int:
    entries, output_format = option(args, "-show_entries"), option(args, "-of", "default")
    try:
        container = av.open(args[-1])
    except (OSError, av.FFmpegError) as error:
        print(f"{args[-1]}: {error}", file=sys.stderr)
        return 1
    with container:
        stream = container.streams.video[0]
        if entries.startswith("stream="):
            print_streams(container, stream, entries, output_format)
        elif entries.startswith("frame="):
            print_frames(container, stream, entries, "-skip_frame" in args)
        else:
            print(f"ffprobe stand-in: query not supported: {' '.join(args)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
