"""Decoding in keyframe-aligned runs, shared among processes for long videos.

A run of decoding that starts at one of the stream's keyframes needs nothing decoded before it. So the frames a
sampler wants are read as runs, each from the keyframe before its first frame: a new run starts wherever that skips
more frames than a restart costs (GOPs without wanted frames, and GOP tails after the last one), which on video with a
keyframe every second or two leaves most frames undecoded. With long GOPs (x264's default is 250 frames) a long
video's runs still cover nearly every frame up to the last wanted one, on one core: the released bit-cost reader
(codec-video-prep's patched FFmpeg) holds the GIL while it decodes, and PyAV's decoder works through one stream in
order. So the runs are shared out among processes that decode at once (`plan_segments`): the last share in the
calling process, each other one in a Python child started with `subprocess` (this file run as a script: no
`multiprocessing` start method that re-imports the caller's `__main__` or forks a process that holds threads);
requests and results travel as temporary pickle files. Callers check what comes back and fall back to a single pass
when anything is unexpected. This file imports nothing else of the package.
"""

from __future__ import annotations

import bisect
import importlib
import itertools
import os
import pickle
import sys
import time

# Frames one process decodes before starting another pays off: a child's start-up (Python, numpy, the decoder) costs
# 0.1-0.3 s, about what one decoder spends on 300 frames of 720p; a margin of several times keeps short clips
# in-process.
SEGMENT_MIN_FRAMES = 1500


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def in_daemonic_process() -> bool:
    """Whether this is a daemonic `multiprocessing` process (a DataLoader worker). Such a process has imported
    `multiprocessing`; where nothing has, the answer is no without paying for the import (6 ms of a fresh process
    that samples one short clip)."""
    module = sys.modules.get("multiprocessing")
    return module is not None and module.current_process().daemon


def segment_processes(requested: int | None, frames_to_decode: int) -> int:
    """How many processes decode the span (this one included): `requested` when given, else one per CPU this process
    may use, with at least SEGMENT_MIN_FRAMES frames each. The CPUs are shared with the other ranks on the node
    (`$LOCAL_WORLD_SIZE`, set by torchrun and accelerate: an evaluation on 8 GPUs runs 8 samplers at once), and a
    daemonic process (a DataLoader worker, whose siblings already use the other CPUs) decodes in one pass."""
    if requested is not None:
        return requested
    if in_daemonic_process():
        return 1
    cpus = usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    return max(1, min(cpus, frames_to_decode // SEGMENT_MIN_FRAMES))


# A child starts about this many frames' decoding time late (Python, numpy and the decoder's import, then handing its
# result back): the share kept in the calling process, which starts at once, is that much larger.
CHILD_START_FRAMES = 300

# Starting again at a later keyframe (opening the file and the decoder, decoding the keyframe) costs about what
# decoding this many frames does: 9.5 ms a restart against 0.46 ms a frame for the released reader on 720p H.264.
# Frames that follow a wanted frame are skipped, by a restart at the next wanted frame's keyframe, only where more
# than this many lie before that keyframe; shorter stretches are decoded through.
RESTART_COST_FRAMES = 20

Run = tuple[int, list[int]]  # (the keyframe a decoder starts at, the wanted frame ids it decodes on to)


def keyframe_at_or_before(keyframes: list[int], frame: int) -> int:
    """The last keyframe at or before `frame` (0 when the list has none there: decoding starts at the stream's
    beginning)."""
    preceding = bisect.bisect_right(keyframes, frame) - 1
    return keyframes[preceding] if preceding >= 0 else 0


def gop_pieces(wanted: list[int], keyframes: list[int]) -> list[tuple[Run, int, bool]]:
    """Sorted `wanted` frame ids grouped by the keyframe before them, in order: `((keyframe, ids), frames to decode,
    restart)`. `restart` says the piece starts a decoder at its keyframe (more than RESTART_COST_FRAMES frames lie
    between the previous piece's last id and this keyframe); otherwise the previous piece's decoder runs on into it.
    `frames to decode` counts what the piece adds, a restart's cost included."""
    groups: list[Run] = []
    for frame in wanted:
        keyframe = keyframe_at_or_before(keyframes, frame)
        if groups and groups[-1][0] == keyframe:
            groups[-1][1].append(frame)
        else:
            groups.append((keyframe, [frame]))
    pieces, previous_last = [], None
    for keyframe, ids in groups:
        restart = previous_last is None or keyframe - previous_last - 1 > RESTART_COST_FRAMES
        frames = ids[-1] - keyframe + 1 + RESTART_COST_FRAMES if restart else ids[-1] - previous_last
        pieces.append(((keyframe, ids), frames, restart))
        previous_last = ids[-1]
    return pieces


def frames_to_decode(wanted: list[int], keyframes: list[int]) -> int:
    """About how many frames decoding `wanted` takes, restarts counted as RESTART_COST_FRAMES each."""
    return sum(frames for _, frames, _ in gop_pieces(wanted, keyframes))


def join_pieces(pieces: list[tuple[Run, int, bool]]) -> list[Run]:
    """One run per decoder: a piece that does not restart extends the run before it (a share's first piece always
    starts a run of its own)."""
    runs: list[Run] = []
    for (keyframe, ids), _, restart in pieces:
        if runs and not restart:
            runs[-1][1].extend(ids)
        else:
            runs.append((keyframe, list(ids)))
    return runs


def plan_segments(wanted: list[int], keyframes: list[int], count: int) -> list[list[Run]]:
    """The decoding of sorted `wanted` frame ids, shared out in order among at most `count` processes.

    Each process gets a list of runs, each starting at a keyframe: a decoder runs from one wanted frame to the next,
    and restarts at the keyframe before the next where that skips more than RESTART_COST_FRAMES frames (a long
    video's GOPs without candidates, and the tail of each GOP after its last one). The shares are planned to finish
    together, counting the frames each decodes: every share is cut at a keyframe about as far into that work as the
    others, except the last, which the calling process decodes and which is up to CHILD_START_FRAMES larger."""
    pieces = gop_pieces(wanted, keyframes)
    work = [frames for _, frames, _ in pieces]
    total = sum(work)
    # small amounts of work (split only when asked for) are shared about evenly
    head_start = min(CHILD_START_FRAMES, total // (4 * count))
    share = max(1, (total - head_start) // count)
    done_before = [0, *itertools.accumulate(work)]
    cuts = {0}
    for part in range(1, count):
        if len(pieces) > 1:
            cuts.add(min(range(1, len(pieces)), key=lambda index: (abs(done_before[index] - part * share), index)))
    cuts = sorted(cuts)
    return [join_pieces(pieces[start:end]) for start, end in zip(cuts, cuts[1:] + [len(pieces)])]


def call(target: str, request: dict):
    """`target` is "module:function"; the module is imported by name (the caller's `__name__`, which also resolves
    in a child given the caller's sys.path, for an installed package and for remote code alike)."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(request)


class SegmentsTimedOut(TimeoutError):
    """Child processes still decoding when the time given to `run_segments` ran out (they have been killed)."""


def run_segments(target: str, requests: list[dict], timeout: float) -> tuple[list | None, str | None]:
    """`target(request)` for every request at once: the last in this process, each other in a child process.
    Returns `(results in request order, None)`, or `(None, why)` when a child failed. Children still running
    `timeout` seconds after they started are killed and `SegmentsTimedOut` is raised."""
    if len(requests) == 1:
        return [call(target, requests[0])], None
    # imported here: a video read in one pass starts no child, and these imports are 13 ms of a fresh process
    import subprocess
    import tempfile

    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="llava-ov2-segments-") as folder:
        jobs = []
        for number, request in enumerate(requests[:-1]):
            job = {"target": target, "request": request, "output": os.path.join(folder, f"segment-{number}.out.pkl")}
            job_path = os.path.join(folder, f"segment-{number}.job.pkl")
            with open(job_path, "wb") as handle:
                pickle.dump(sys.path, handle)  # first: the child needs it to unpickle the request's classes
                pickle.dump(job, handle, protocol=pickle.HIGHEST_PROTOCOL)
            jobs.append((job, job_path))
        children = []
        try:
            for _, job_path in jobs:
                with open(job_path + ".log", "wb") as log:
                    command = [sys.executable, os.path.abspath(__file__), job_path]
                    children.append(subprocess.Popen(command, stdout=log, stderr=log))
            last = call(target, requests[-1])  # may hold the GIL throughout; the children run on regardless
            for child in children:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as expired:
            stop_children(children)
            raise SegmentsTimedOut(f"segment children still running after {timeout:.1f} s") from expired
        except BaseException:
            stop_children(children)
            raise
        results = []
        for child, (job, job_path) in zip(children, jobs):
            if child.returncode != 0:
                with open(job_path + ".log", "rb") as log:
                    lines = log.read().decode(errors="replace").strip().splitlines() or ["no output"]
                return None, f"a child process exited with {child.returncode} ({lines[-1]})"
            with open(job["output"], "rb") as handle:
                results.append(pickle.load(handle))
    return results + [last], None


def stop_children(children: list) -> None:
    for child in children:
        child.kill()
        child.wait()


def child_main(job_path: str) -> None:
    with open(job_path, "rb") as handle:
        parent_path = pickle.load(handle)
        sys.path[:0] = [entry for entry in parent_path if entry not in sys.path]
        job = pickle.load(handle)
    result = call(job["target"], job["request"])
    with open(job["output"], "wb") as handle:
        pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)


if __name__ == "__main__":
    child_main(sys.argv[1])
