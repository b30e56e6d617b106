"""The released bit-cost reader on long videos: the span split at keyframes and read by several processes at once.

The released reader (codec-video-prep's patched FFmpeg) decodes every frame from the start to the last wanted one,
on one core and without releasing the GIL, so threads cannot share its work. Each segment here starts at one of the
stream's keyframes, where decoding needs nothing earlier, and runs in its own Python child process (a plain
`subprocess`: no `multiprocessing` start method re-imports the caller's `__main__` or forks a process that holds
threads). The children hand their frames back through temporary pickle files. A segmented read is checked like a
single one; anything unexpected (a failed child, a wanted frame missing from a segment, a keyframe the reader
numbers differently) makes the caller fall back to the single sequential read. This file imports nothing else.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
import time

# Frames one process decodes before starting another pays off: a child's start-up (Python, numpy, the reader) costs
# 0.1-0.2 s, about what a single decoder spends on 200 frames of 720p; a margin of several times keeps short clips
# in-process.
SEGMENT_MIN_FRAMES = 1500


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def segment_processes(requested: int | None, frames_to_decode: int) -> int:
    """How many processes read the span (this one included): `requested` when given, else one per usable CPU with at
    least SEGMENT_MIN_FRAMES frames each, and 1 inside a daemonic worker (a DataLoader worker: its siblings already
    use the other CPUs)."""
    if requested is not None:
        return requested
    if multiprocessing.current_process().daemon:
        return 1
    return max(1, min(usable_cpus(), frames_to_decode // SEGMENT_MIN_FRAMES))


def plan_segments(wanted: list[int], keyframes: list[int], count: int) -> list[tuple[int, list[int]]]:
    """Split sorted `wanted` frame ids into at most `count` runs of about equal frame span, each starting at a
    keyframe (the one nearest each equal split, the first run at frame 0): `[(first frame, wanted ids from it up to
    the next run's first frame)]`."""
    span = wanted[-1] + 1
    starts = {0}
    for part in range(1, count):
        target = part * span // count
        if keyframes:
            starts.add(min(keyframes, key=lambda k: (abs(k - target), k)))
    starts = sorted(starts)
    runs = []
    for start, following in zip(starts, starts[1:] + [span]):
        ids = [i for i in wanted if start <= i < following]
        if ids:
            runs.append((start, ids))
    return runs


def trimmed(items: list[dict], frame_ids: set, pixel_ids: set, bitcost_key: str) -> list[dict]:
    """The reader's items for `frame_ids` only, keeping pictures only for `pixel_ids` and of the bit-cost grids only
    `bitcost_key`: a frame that rides along to check numbering needs its picture type, not its picture."""
    kept = []
    for item in items:
        frame_id = int(item["frame_idx"])
        if frame_id not in frame_ids:
            continue
        item = dict(item)
        if frame_id not in pixel_ids:
            item.pop("pixels", None)
        bitcost = item.get("bitcost") or {}
        item["bitcost"] = {bitcost_key: bitcost[bitcost_key]} if bitcost_key in bitcost else {}
        kept.append(item)
    return kept


def read_run(request: dict) -> list[dict]:
    """One run through the released reader, trimmed (in whichever process runs it)."""
    from codec_video_prep.cv_reader_fast import read_video_fast_selected_segment

    items = read_video_fast_selected_segment(
        request["path"], request["frame_ids"], request["seek_frame"], request["end_frame"], **request["options"]
    )
    return trimmed(items, set(request["frame_ids"]), set(request["pixel_ids"]), request["bitcost_key"])


def read_segments(
    path: str, runs: list[tuple[int, list[int]]], options: dict, pixel_ids: set, bitcost_key: str, timeout: float
) -> tuple[list[dict] | None, str | None]:
    """Read the runs at once, the last in this process and each other one in a child process:
    `(trimmed items of all runs in frame order, None)`, or `(None, why)` when a child failed or a run left out a
    wanted frame (the caller then reads sequentially). Children still running `timeout` seconds after they started
    are killed and `subprocess.TimeoutExpired` is raised."""
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="llava-ov2-codec-") as folder:
        requests = [
            {
                "path": os.fspath(path),
                "frame_ids": frame_ids,
                "seek_frame": seek_frame,
                "end_frame": frame_ids[-1] + 1,
                "options": options,
                "pixel_ids": sorted(pixel_ids & set(frame_ids)),
                "bitcost_key": bitcost_key,
                "output": os.path.join(folder, f"segment-{number}.pkl"),
                "sys_path": sys.path,
            }
            for number, (seek_frame, frame_ids) in enumerate(runs)
        ]
        children = []
        try:
            for request in requests[:-1]:
                with open(request["output"] + ".log", "wb") as log:
                    # this file run as a script: no multiprocessing start method (no re-import of the caller's
                    # __main__, no fork of a process holding threads)
                    command = [sys.executable, os.path.abspath(__file__), json.dumps(request)]
                    children.append(subprocess.Popen(command, stdout=log, stderr=log))
            segments = {len(requests) - 1: read_run(requests[-1])}  # GIL held here; the children run on regardless
            for child in children:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except BaseException:
            for child in children:
                child.kill()
                child.wait()
            raise
        for number, child in enumerate(children):
            if child.returncode != 0:
                with open(requests[number]["output"] + ".log", "rb") as log:
                    lines = log.read().decode(errors="replace").strip().splitlines() or ["no output"]
                return None, f"the segment from frame {requests[number]['seek_frame']} failed ({lines[-1]})"
            with open(requests[number]["output"], "rb") as handle:
                segments[number] = pickle.load(handle)
    items = []
    for number, request in enumerate(requests):
        missing = set(request["frame_ids"]) - {int(item["frame_idx"]) for item in segments[number]}
        if missing:
            return None, f"the segment from frame {request['seek_frame']} left out frame {min(missing)}"
        items.extend(segments[number])
    return sorted(items, key=lambda item: int(item["frame_idx"])), None


def child_main(argument: str) -> None:
    request = json.loads(argument)
    sys.path[:0] = [entry for entry in request["sys_path"] if entry not in sys.path]
    items = read_run(request)
    with open(request["output"], "wb") as handle:
        pickle.dump(items, handle, protocol=pickle.HIGHEST_PROTOCOL)


if __name__ == "__main__":
    child_main(sys.argv[1])
