"""Decoding long videos in keyframe-aligned segments, one process per segment.

The codec sampler decodes nearly every frame of a long video up to its last candidate on one core: the released
bit-cost reader (codec-video-prep's patched FFmpeg) holds the GIL while it decodes, and PyAV's decoder works through
one stream in order. A segment that starts at one of the stream's keyframes needs nothing decoded before it, so
segments can be decoded at once by separate processes. Each runs in a Python child process started with
`subprocess` (this file run as a script: no `multiprocessing` start method that re-imports the caller's `__main__`
or forks a process that holds threads), the last one in the calling process; requests and results travel as
temporary pickle files. Callers check what comes back and fall back to a single pass when anything is unexpected.
This file imports nothing else of the package.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
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


def segment_processes(requested: int | None, frames_to_decode: int) -> int:
    """How many processes decode the span (this one included): `requested` when given, else one per CPU this process
    may use, with at least SEGMENT_MIN_FRAMES frames each. The CPUs are shared with the other ranks on the node
    (`$LOCAL_WORLD_SIZE`, set by torchrun and accelerate: an evaluation on 8 GPUs runs 8 samplers at once), and a
    daemonic process (a DataLoader worker, whose siblings already use the other CPUs) decodes in one pass."""
    if requested is not None:
        return requested
    if multiprocessing.current_process().daemon:
        return 1
    cpus = usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    return max(1, min(cpus, frames_to_decode // SEGMENT_MIN_FRAMES))


# A child starts about this many frames' decoding time late (Python, numpy and the decoder's import, then handing its
# result back): the run kept in the calling process, which starts at once, is that much longer.
CHILD_START_FRAMES = 300


def plan_segments(wanted: list[int], keyframes: list[int], count: int) -> list[tuple[int, list[int]]]:
    """Split sorted `wanted` frame ids into at most `count` runs, each starting at a keyframe (the one nearest each
    planned split; the first run at frame 0) and planned to finish together: every run covers the same frame span,
    except the last, which the calling process decodes and which is up to CHILD_START_FRAMES longer. Returns
    `[(first frame, wanted ids from it up to the next run's first frame)]`."""
    span = wanted[-1] + 1
    head_start = min(CHILD_START_FRAMES, span // (4 * count))  # short spans (only when asked for) split about evenly
    child_span = max(1, (span - head_start) // count)
    starts = {0}
    for part in range(1, count):
        target = part * child_span
        if keyframes:
            starts.add(min(keyframes, key=lambda k: (abs(k - target), k)))
    starts = sorted(starts)
    runs = []
    for start, following in zip(starts, starts[1:] + [span]):
        ids = [i for i in wanted if start <= i < following]
        if ids:
            runs.append((start, ids))
    return runs


def call(target: str, request: dict):
    """`target` is "module:function"; the module is imported by name (the caller's `__name__`, which also resolves
    in a child given the caller's sys.path, for an installed package and for remote code alike)."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(request)


def run_segments(target: str, requests: list[dict], timeout: float) -> tuple[list | None, str | None]:
    """`target(request)` for every request at once: the last in this process, each other in a child process.
    Returns `(results in request order, None)`, or `(None, why)` when a child failed. Children still running
    `timeout` seconds after they started are killed and `subprocess.TimeoutExpired` is raised."""
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
        except BaseException:
            for child in children:
                child.kill()
                child.wait()
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
