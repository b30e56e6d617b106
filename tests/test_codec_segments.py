"""Long videos decoded in keyframe-aligned segments by several processes: the same result as one pass, for the
released bit-cost reader and for PyAV, and a fall-back to one pass whenever a segment goes wrong.

The child processes import the reader themselves, so the stand-in for codec-video-prep here is a real package on
disk (put on sys.path, which the children inherit): it decodes with PyAV and logs every call with its process id.
"""

import json
import multiprocessing
import os
import sys
import textwrap
import time
from dataclasses import replace

import numpy as np
import pytest
from synthetic_media import encode_moving_box, encode_video, remux

from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec
from llava_onevision2.processing import codec_segments_llava_onevision2 as segments
from llava_onevision2.processing.codec_sampling_llava_onevision2 import CodecSamplingConfig, sample_codec_video

SMALL = CodecSamplingConfig(
    target_canvas=8,
    group_size=16,
    max_pixels=320 * 192,
    min_group_frames=8,
    max_group_frames=16,
    cache_root=None,
)  # score_source "auto": the released bit-cost wherever a reader (here mostly the stand-in) is importable

STAND_IN = '''
"""A stand-in for codec-video-prep's reader: PyAV decodes from the start; a segment returns only its own span. As
the real reader does, a read from the first frame counts frames and a segment numbers them by presentation time
times the average frame rate."""
import json, math, os
import av
import numpy as np

TYPES = {1: "I", 2: "P", 3: "B"}


def log(entry):
    with open(os.environ["STAND_IN_LOG"], "a") as handle:
        handle.write(json.dumps({**entry, "pid": os.getpid()}) + "\\n")


def items_for(path, frame_ids, first, end, export_pixels, out_w, out_h, by_time):
    wanted, items = set(frame_ids), []
    drop = int(os.environ.get("STAND_IN_DROP_FRAME", -1))
    with av.open(path) as container:
        per_frame = container.streams.video[0].time_base * container.streams.video[0].average_rate
        frames = sorted(container.decode(video=0), key=lambda frame: frame.pts)
    for count, frame in enumerate(frames):
        number = math.floor(frame.pts * per_frame + 0.5) if by_time else count
        if number not in wanted or not first <= number < end or (number == drop and first > 0):
            continue
        costs = np.full((12, 21), 1 + number % 7, dtype=np.int32)
        costs[:, 10:] *= 40
        item = {
            "frame_idx": number,
            "pict_type": TYPES.get(int(frame.pict_type), "?"),
            "width": frame.width,
            "height": frame.height,
            "bitcost": {"mb_bit_cost": costs, "sub_mb_bit_cost": np.zeros((48, 80), np.float32)},
        }
        if export_pixels:
            item["pixels"] = frame.to_ndarray(width=out_w, height=out_h, format="bgr24", interpolation="AREA")
        items.append(item)
    return items


def read_video_fast_selected(path, frame_ids, thread_count=1, export_bitcost=0, thread_type="auto",
                             keyframe_pts=None, export_pixels=0, out_w=0, out_h=0):
    log({"call": "whole", "first": 0})
    return items_for(path, frame_ids, 0, 1 << 30, export_pixels, out_w, out_h, by_time=False)


def read_video_fast_selected_segment(path, frame_ids, seek_frame, end_frame, thread_count=1, export_bitcost=0,
                                     thread_type="auto", export_pixels=0, out_w=0, out_h=0):
    log({"call": "segment", "first": seek_frame, "end": end_frame})
    return items_for(path, frame_ids, seek_frame, end_frame, export_pixels, out_w, out_h, by_time=True)
'''


@pytest.fixture
def stand_in_reader(tmp_path, monkeypatch):
    """codec-video-prep's reader replaced by the stand-in for this process and its children; yields the call log."""
    package = tmp_path / "stand_in" / "codec_video_prep"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cv_reader_fast.py").write_text(textwrap.dedent(STAND_IN))
    monkeypatch.syspath_prepend(str(package.parent))
    for name in released_modules():
        monkeypatch.delitem(sys.modules, name)  # restored afterwards where the real package was imported
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("STAND_IN_LOG", str(log))

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    yield calls
    for name in released_modules():  # the stand-in must not outlive the test
        del sys.modules[name]


def released_modules() -> list[str]:
    return [name for name in sys.modules if name == "codec_video_prep" or name.startswith("codec_video_prep.")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("segments") / "moving.mp4"
    path.write_bytes(encode_moving_box(num_frames=240, gop=30)[0])
    return str(path)


@pytest.fixture(scope="module")
def hevc_clip(tmp_path_factory):
    """x265 with its default wavefronts: framediff reads each candidate's row bits, in whichever process decodes it."""
    path = tmp_path_factory.mktemp("segments") / "moving_hevc.mp4"
    path.write_bytes(encode_moving_box(num_frames=240, gop=30, codec="libx265")[0])
    return str(path)


def fingerprint(sample):
    return sample.canvases.tobytes(), sample.positions.tobytes(), sample.groups, sample.candidate_ids


def one_pass_from_the_start(clip, config, monkeypatch):
    """The release's read: the reader in one call from the first frame to the last candidate (reached as the
    sampler's fall-back, by making the read from keyframes report a problem)."""
    with monkeypatch.context() as patch:
        patch.setattr(codec, "in_segments", lambda *args: (None, "forced for the test"))
        return sample_codec_video(clip, replace(config, decode_processes=1))


def test_segments_in_child_processes_give_the_sequential_result(stand_in_reader, clip, monkeypatch):
    sequential = one_pass_from_the_start(clip, SMALL, monkeypatch)
    assert [call["call"] for call in stand_in_reader()] == ["whole"]
    for processes in (1, 2, 3):
        log_before = len(stand_in_reader())
        split = sample_codec_video(clip, replace(SMALL, decode_processes=processes))
        assert fingerprint(split) == fingerprint(sequential) and not split.report["warnings"]
        assert split.report["score_source"] == "bitcost"
        calls = stand_in_reader()[log_before:]
        # candidates every 7-8 frames in 30-frame GOPs: each process decodes through its share in one run
        assert [call["call"] for call in calls] == ["segment"] * processes
        assert len({call["pid"] for call in calls}) == processes  # each segment in its own process
        assert {call["pid"] for call in calls if call["first"] == max(c["first"] for c in calls)} == {os.getpid()}
        assert sorted(call["first"] % 30 for call in calls) == [0] * processes  # every segment starts at a keyframe


def test_the_reader_starts_again_at_keyframes_to_skip_frames_no_candidate_needs(
    stand_in_reader, tmp_path, monkeypatch
):
    """Short GOPs (6 frames, as phone and screen-capture encoders use) and a candidate every 30 frames: the reader
    restarts at the keyframe before each candidate instead of decoding the frames in between, with the one-pass
    result."""
    path = tmp_path / "short_gops.mp4"
    path.write_bytes(encode_moving_box(num_frames=480, gop=6, width=160, height=96)[0])
    config = replace(SMALL, target_canvas=4)  # 16 candidates
    sequential = one_pass_from_the_start(str(path), config, monkeypatch)
    log_before = len(stand_in_reader())
    restarted = sample_codec_video(str(path), replace(config, decode_processes=1))
    assert fingerprint(restarted) == fingerprint(sequential) and not restarted.report["warnings"]
    calls = stand_in_reader()[log_before:]
    assert len(calls) == len(restarted.candidate_ids) and all(call["first"] % 6 == 0 for call in calls)
    assert [call["end"] - 1 for call in calls] == restarted.candidate_ids  # each run stops at its candidate
    assert restarted.report["frames_decoded"] < sequential.report["frames_decoded"] / 4


def test_runs_read_video_whose_timestamps_do_not_start_at_zero(stand_in_reader, clip, tmp_path):
    """Remuxed to fragmented MP4 (no edit list), the clip's first frame is stamped two frames in (its B-frame delay),
    so a read from a keyframe numbers every frame two higher than our index does: requests and results are
    translated. MPEG-TS, stamped the same way, is read once from the first frame (the real reader's keyframe seeks
    there return nothing)."""
    with open(clip, "rb") as handle:
        data = handle.read()
    mp4 = sample_codec_video(clip, replace(SMALL, decode_processes=1))
    fragmented = tmp_path / "fragmented.mp4"
    fragmented.write_bytes(remux(data, "mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof"}))
    index = codec.index_video_stream(codec.open_video(str(fragmented)), str(fragmented))
    assert list(codec.reader_frame_numbers(index)[:3]) == [2, 3, 4]
    for processes in (1, 2):
        log_before = len(stand_in_reader())
        split = sample_codec_video(str(fragmented), replace(SMALL, decode_processes=processes))
        assert fingerprint(split) == fingerprint(mp4) and not split.report["warnings"]
        assert [call["call"] for call in stand_in_reader()[log_before:]] == ["segment"] * processes
    ts = tmp_path / "clip.ts"
    ts.write_bytes(remux(data, "mpegts"))
    log_before = len(stand_in_reader())
    from_start = sample_codec_video(str(ts), replace(SMALL, decode_processes=2))
    assert fingerprint(from_start) == fingerprint(mp4) and not from_start.report["warnings"]
    assert [call["call"] for call in stand_in_reader()[log_before:]] == ["whole"]


def test_variable_frame_rate_is_read_once_from_the_first_frame(stand_in_reader, tmp_path):
    """Frames closer together than the average frame interval would share a number in a read from a keyframe, so
    the reader reads once from the first frame, numbering frames by count as our index does."""
    pts_ms = (
        [round(i * 1000 / 30) for i in range(60)]
        + [2000 + 10 * i for i in range(40)]
        + [2400 + 33 * i for i in range(60)]
    )
    path = tmp_path / "vfr.mp4"
    path.write_bytes(encode_video(num_frames=len(pts_ms), pts_ms=pts_ms, width=160, height=96))
    index = codec.index_video_stream(codec.open_video(str(path)), str(path))
    assert codec.reader_frame_numbers(index) is None
    sample = sample_codec_video(str(path), replace(SMALL, decode_processes=1))
    assert sample.report["score_source"] == "bitcost" and not sample.report["warnings"]
    assert [call["call"] for call in stand_in_reader()] == ["whole"]


def test_a_failed_child_falls_back_to_one_sequential_read(stand_in_reader, clip, monkeypatch):
    sequential = one_pass_from_the_start(clip, SMALL, monkeypatch)
    monkeypatch.setattr(segments.sys, "executable", "/bin/false")  # the child exits 1 without output
    split = sample_codec_video(clip, replace(SMALL, decode_processes=2))
    assert fingerprint(split) == fingerprint(sequential)
    assert any("fell back to one process" in w and "exited with 1" in w for w in split.report["warnings"])
    assert stand_in_reader()[-1]["call"] == "whole"


def test_a_segment_missing_a_frame_falls_back_to_one_sequential_read(stand_in_reader, clip, monkeypatch):
    sequential = one_pass_from_the_start(clip, SMALL, monkeypatch)
    dropped = sequential.candidate_ids[-5]  # a candidate late in the clip: read by a segment that does not start at 0
    monkeypatch.setenv("STAND_IN_DROP_FRAME", str(dropped))
    split = sample_codec_video(clip, replace(SMALL, decode_processes=2))
    assert fingerprint(split) == fingerprint(sequential)
    assert any(f"left out frame {dropped}" in warning for warning in split.report["warnings"])


def test_children_keep_only_what_the_sampler_reads(stand_in_reader, clip):
    """A keyframe that rides along to check numbering comes back without its picture; of the bit-cost grids only the
    one in use comes back."""
    shares = segments.plan_segments([5, 33, 64, 89], [0, 30, 60], 3)
    assert shares == [[(0, [5])], [(30, [33])], [(60, [64, 89])]]
    options = {"export_bitcost": 1, "thread_type": "slice", "export_pixels": 1, "out_w": 84, "out_h": 56}
    requests = [
        {
            "path": clip,
            "runs": [(first, codec.with_keyframes(ids, first, [0, 30, 60])) for first, ids in runs],
            "options": options,
            "pixel_ids": [i for _, ids in runs for i in ids],
            "bitcost_key": "mb_bit_cost",
        }
        for runs in shares
    ]
    assert [request["runs"] for request in requests] == [[(0, [0, 5])], [(30, [30, 33])], [(60, [60, 64, 89])]]
    results, problem = segments.run_segments(f"{codec.__name__}:read_released_run", requests, timeout=60)
    items = [item for share in results for run in share for item in run]
    assert problem is None and [item["frame_idx"] for item in items] == [0, 5, 30, 33, 60, 64, 89]
    assert [("pixels" in item) for item in items] == [False, True] * 3 + [True]
    assert all(list(item["bitcost"]) == ["mb_bit_cost"] for item in items)
    assert items[1]["pixels"].shape == (56, 84, 3)
    assert len({call["pid"] for call in stand_in_reader()}) == 3


def test_children_past_their_time_are_killed_and_the_timeout_raised():
    """`time:sleep` as the target: the child sleeps 30 s, the calling process 0 s, the time given is 1 s."""
    start = time.monotonic()
    with pytest.raises(segments.SegmentsTimedOut, match="still running after 1.0 s"):
        segments.run_segments("time:sleep", [30.0, 0.0], timeout=1.0)
    assert time.monotonic() - start < 15  # killed, not waited for
    assert issubclass(segments.SegmentsTimedOut, TimeoutError)


def test_a_single_request_runs_in_this_process_without_a_temporary_folder(monkeypatch):
    """A lambda cannot be pickled: it reaches the target only if nothing was written for a child; and the folder
    that children's requests and results travel through is not even made."""
    import tempfile

    def no_folder(*args, **kwargs):
        raise AssertionError("a temporary folder was made for a single request")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_folder)
    assert segments.run_segments("builtins:callable", [lambda: None], timeout=1.0) == ([True], None)


@pytest.mark.parametrize("signal", ["framediff", "residual", "framediff on HEVC"])
def test_stock_signals_decoded_in_segments_give_the_one_pass_result(clip, hevc_clip, signal):
    """Without the released reader: PyAV decodes each run (with the frames before it that scoring needs) in its own
    process; candidates, scores and canvases come out as from one pass."""
    if signal == "framediff on HEVC":
        clip, signal = hevc_clip, "framediff"
    config = replace(SMALL, score_source=signal)
    one_pass = sample_codec_video(clip, replace(config, decode_processes=1))
    for processes in (2, 3):
        split = sample_codec_video(clip, replace(config, decode_processes=processes))
        assert fingerprint(split) == fingerprint(one_pass) and not split.report["warnings"]
        assert split.report["frames_decoded"] >= one_pass.report["frames_decoded"]  # runs re-decode a little


def test_stock_decoding_falls_back_to_one_pass_when_a_segment_fails(clip, monkeypatch):
    config = replace(SMALL, score_source="framediff")
    one_pass = sample_codec_video(clip, replace(config, decode_processes=1))
    monkeypatch.setattr(segments.sys, "executable", "/bin/false")
    split = sample_codec_video(clip, replace(config, decode_processes=2))
    assert fingerprint(split) == fingerprint(one_pass)
    assert any("decoding in segments fell back to one process" in w for w in split.report["warnings"])


def test_segment_plans_start_at_keyframes_and_cover_every_frame_once():
    wanted = list(range(0, 1000, 7))
    keyframes = [0, 250, 500, 750]
    for count in (1, 2, 3, 4, 8):
        shares = segments.plan_segments(wanted, keyframes, count)
        assert [i for runs in shares for _, ids in runs for i in ids] == wanted
        assert all(first in keyframes and ids[0] >= first for runs in shares for first, ids in runs)
        assert len(shares) == min(count, len(keyframes))
        assert all(len(runs) == 1 for runs in shares)  # a frame every 7: never worth a restart
    assert [runs[0][0] for runs in segments.plan_segments(wanted, keyframes, 2)] == [0, 500]  # equal halves
    # long spans: the share this process decodes (the last) is larger by a child's start-up, to the nearest keyframe
    long_plan = segments.plan_segments(list(range(0, 18000, 70)), list(range(0, 18000, 250)), 2)
    assert [runs[0][0] for runs in long_plan] == [0, 8750]
    # no keyframe after 0: one run whatever the count
    assert segments.plan_segments(wanted, [0], 4) == [[(0, wanted)]]


def test_runs_restart_at_a_keyframe_only_where_that_skips_more_than_a_restart_costs():
    keyframes = list(range(0, 1000, 50))
    cost = segments.RESTART_COST_FRAMES
    # 10 -> 60: frames 11..49 skipped by a restart at keyframe 50; 60 -> 80: one GOP; 80 -> 101 + cost: frames
    # 81..99 before keyframe 100 cost less than a restart, decoded through; 400: the GOPs 150..350 skipped
    wanted = [10, 60, 80, 101 + cost, 400]
    assert segments.plan_segments(wanted, keyframes, 1) == [[(0, [10]), (50, [60, 80, 101 + cost]), (400, [400])]]
    decoded = (10 + 1) + (101 + cost - 50 + 1) + 1  # from each restart's keyframe to its run's last frame
    assert segments.frames_to_decode(wanted, keyframes) == decoded + 3 * cost
    # two processes: the work is cut at a keyframe inside the middle run, where the second process starts
    assert segments.plan_segments(wanted, keyframes, 2) == [
        [(0, [10]), (50, [60, 80])],
        [(100, [101 + cost]), (400, [400])],
    ]


def test_segment_process_count(monkeypatch):
    monkeypatch.setattr(segments, "usable_cpus", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert segments.segment_processes(None, 600) == 1  # too short to pay for a second process
    assert segments.segment_processes(None, 2 * segments.SEGMENT_MIN_FRAMES) == 2
    assert segments.segment_processes(None, 100 * segments.SEGMENT_MIN_FRAMES) == 4
    assert segments.segment_processes(3, 600) == 3  # asked for: honoured
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this node share the CPUs
    assert segments.segment_processes(None, 100 * segments.SEGMENT_MIN_FRAMES) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert segments.segment_processes(None, 100 * segments.SEGMENT_MIN_FRAMES) == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")

    class DataLoaderWorker:
        daemon = True

    monkeypatch.setattr(multiprocessing, "current_process", lambda: DataLoaderWorker())
    assert segments.segment_processes(None, 100 * segments.SEGMENT_MIN_FRAMES) == 1


def test_decode_processes_is_checked():
    with pytest.raises(ValueError, match="decode_processes must be None"):
        CodecSamplingConfig(decode_processes=0, cache_root=None)
    # any signal; not in the cache key, as it cannot change the result
    config = CodecSamplingConfig(decode_processes=2, score_source="framediff", cache_root=None)
    assert "decode_processes" not in config.settings()


def test_the_released_reader_split_over_processes_gives_its_sequential_result(tmp_path):
    """With the real reader. Which frames it attaches bit-costs to can depend on the list of frames asked for (on a
    240-frame clip with B-frames, a sparse list left 4 of 32 candidates without), so this clip is short enough for
    the candidates to be dense, where a single read is complete; that precondition is checked first."""
    pytest.importorskip("codec_video_prep.cv_reader_fast", reason="codec-video-prep (optional) is not installed")
    path = tmp_path / "short.mp4"
    path.write_bytes(encode_moving_box(num_frames=96, gop=16)[0])
    sequential = sample_codec_video(str(path), replace(SMALL, decode_processes=1))
    assert sequential.report["score_source"] == "bitcost" and not sequential.report["warnings"]
    for processes in (2, 3):
        split = sample_codec_video(str(path), replace(SMALL, decode_processes=processes))
        assert fingerprint(split) == fingerprint(sequential) and not split.report["warnings"]


def test_the_released_reader_restarted_at_keyframes_reads_what_one_pass_reads(tmp_path):
    """With the real reader, on a clip with B-frames: runs restarted at keyframes return each candidate's picture and
    bits as one pass from the start does. That pass leaves some B-frames without bits (which ones depends on the list
    asked for); the runs leave none."""
    reader = pytest.importorskip(
        "codec_video_prep.cv_reader_fast", reason="codec-video-prep (optional) is not installed"
    )
    path = tmp_path / "b_frames.mp4"
    path.write_bytes(encode_moving_box(num_frames=240, gop=30)[0])
    keyframes = list(range(0, 240, 30))
    candidates = [5, 38, 70, 100, 131, 177, 200, 208, 239]
    options = {"export_bitcost": 1, "thread_type": "slice", "export_pixels": 1, "out_w": 84, "out_h": 56}
    (runs,) = segments.plan_segments(candidates, keyframes, 1)
    assert len(runs) > 1
    request = {
        "path": str(path),
        "runs": [(first, codec.with_keyframes(ids, first, keyframes)) for first, ids in runs],
        "options": options,
        "pixel_ids": candidates,
        "bitcost_key": "mb_bit_cost",
    }
    restarted = {item["frame_idx"]: item for run in codec.read_released_run(request) for item in run}
    one_pass = {
        item["frame_idx"]: item
        for item in reader.read_video_fast_selected(str(path), sorted(set(candidates) | set(keyframes)), **options)
    }
    compared = 0
    for frame in candidates:
        np.testing.assert_array_equal(restarted[frame]["pixels"], one_pass[frame]["pixels"])
        assert "mb_bit_cost" in restarted[frame]["bitcost"]
        if "mb_bit_cost" in (one_pass[frame].get("bitcost") or {}):
            np.testing.assert_array_equal(
                restarted[frame]["bitcost"]["mb_bit_cost"], one_pass[frame]["bitcost"]["mb_bit_cost"]
            )
            compared += 1
    assert compared >= len(candidates) // 2


def test_segments_run_from_a_flat_remote_code_folder(tmp_path, clip):
    """Exported as remote code, the processing files sit flat in one package (transformers_modules.<repo>); the child
    processes must import the sampler under that package's name, from the caller's sys.path."""
    import importlib
    import shutil
    from pathlib import Path

    folder = tmp_path / "remote_code_repo"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for source in (Path(codec.__file__).parent).glob("*_llava_onevision2.py"):
        shutil.copy(source, folder / source.name)
    sys.path.insert(0, str(tmp_path))
    try:
        flat = importlib.import_module("remote_code_repo.codec_sampling_llava_onevision2")
        config = flat.CodecSamplingConfig(**{**SMALL.settings(), "score_source": "framediff"}, cache_root=None)
        one_pass = flat.sample_codec_video(clip, replace(config, decode_processes=1))
        split = flat.sample_codec_video(clip, replace(config, decode_processes=2))
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("remote_code_repo")]:
            del sys.modules[name]
    assert flat.__name__ == "remote_code_repo.codec_sampling_llava_onevision2"
    assert fingerprint(split) == fingerprint(one_pass) and not split.report["warnings"]
