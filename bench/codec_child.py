"""The timed process of `bench/codec_bench.py` for our sampler: `python bench/codec_child.py VIDEO SCORE_SOURCE`
samples one video and prints one JSON line. Its wall time is taken from outside, so this script imports only what a
user's own script would (the sampler, json to report), not the benchmark's tools: `cv-preinfer`'s time is likewise
its own process's alone.
"""

import time

STARTED = time.perf_counter()  # `seconds_after_start` counts the imports (the wall time is taken outside)

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402


def peak_rss_mib() -> float:
    """This process's own peak RSS. Linux keeps `ru_maxrss` across exec, so a child started by a large parent would
    report the parent's peak; VmHWM belongs to the running image."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def without_released_reader() -> None:
    """`score_source="stock"`: run `auto` as it runs where codec-video-prep is not installed."""
    from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec

    codec.bitcost_reader = lambda: None


def run_codec(path: str, score_source: str) -> dict:
    from llava_onevision2.processing.codec_sampling_llava_onevision2 import CodecSamplingConfig, sample_codec_video

    if score_source == "stock":
        without_released_reader()
        score_source = "auto"
    # cache off: time the sampling, not a cache hit
    config = CodecSamplingConfig(progress=False, cache_root=None, score_source=score_source)
    start = time.perf_counter()
    sample = sample_codec_video(path, config)
    seconds = time.perf_counter() - start
    frames = sorted({int(t) for t in sample.positions[:, 0] if t >= 0})
    times = dict(zip(sample.candidate_ids, sample.candidate_times))
    grid_h, grid_w = sample.grid
    return {
        "seconds": round(seconds, 2),
        "seconds_after_start": round(time.perf_counter() - STARTED, 2),  # imports included, start-up and exit not
        "peak_rss_mib": peak_rss_mib(),
        # the largest of the child processes that decode segments of a long video (any signal), beside this one
        "segment_children_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "score_source": sample.report["score_source"],
        "canvases": len(sample.canvases),
        "canvas_hw": list(sample.canvases.shape[1:3]),
        "tokens": len(sample.positions) // config.merge**2,
        "tokens_per_canvas": grid_h * grid_w // config.merge**2,
        "frames_covered": len(frames),
        "seconds_covered": len({int(times[t]) for t in frames}),
        "frames_decoded": sample.report["frames_decoded"],
        "groups": len(sample.groups),
    }


if __name__ == "__main__":
    print(json.dumps(run_codec(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "auto")))
