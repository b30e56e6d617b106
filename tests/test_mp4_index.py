"""The MP4 sample-table index against PyAV's: equal on every layout it reads, None (PyAV indexes instead) on every
other; and the codec sampler's bit-cost path with it: the same sample as with PyAV's index, without importing PyAV."""

import io
import json
import subprocess
import sys
import textwrap
from fractions import Fraction

import av
import numpy as np
import pytest
from synthetic_media import HEIGHT, WIDTH, encode_video, remux, rotate_mp4
from test_containers import real_clip

from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec
from llava_onevision2.processing.codec_sampling_llava_onevision2 import CodecSamplingConfig, sample_codec_video
from llava_onevision2.processing.mp4_index_llava_onevision2 import read_mp4_video
from llava_onevision2.processing.video_decoding_llava_onevision2 import index_video_stream, open_video

FRAMES, RATE, GOP = 48, 24, 12


@pytest.fixture(scope="module")
def h264() -> bytes:
    return encode_video(num_frames=FRAMES, rate=RATE, gop=GOP)  # libx264 defaults: B-frames, an edit list


def with_audio_track(video: bytes) -> bytes:
    """The video's packets after an audio track (the video is not the file's first track) that outlasts it."""
    source = av.open(io.BytesIO(video))
    buffer = io.BytesIO()
    target = av.open(buffer, mode="w", format="mp4")
    audio = target.add_stream("mp2", rate=16000)
    audio.layout = "mono"
    stream_out = target.add_stream_from_template(source.streams.video[0])
    for _ in range(60):  # 60 x 1152 samples at 16 kHz: 4.3 s, longer than the 2 s of video
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        target.mux(audio.encode(frame))
    target.mux(audio.encode())
    for packet in source.demux(video=0):
        if packet.dts is not None:
            packet.stream = stream_out
            target.mux(packet)
    target.close()
    return buffer.getvalue()


def without_edit_list(video: bytes) -> bytes:
    """The same file with its edit list box renamed to a free box, so B-frame times start where `ctts` puts them."""
    moov = video.rindex(b"moov")
    edts = video.index(b"edts", moov)
    return video[:edts] + b"free" + video[edts + 4 :]


READABLE = {
    "H.264 with B-frames, MP4": lambda h264: h264,
    "H.264, MOV": lambda h264: remux(h264, "mov"),
    "H.264, no B-frames": lambda h264: encode_video(num_frames=30, rate=10, gop=10, codec="libx264"),
    "HEVC": lambda h264: encode_video(num_frames=30, rate=RATE, gop=GOP, codec="libx265"),
    "variable frame rate": lambda h264: encode_video(num_frames=6, pts_ms=[0, 40, 80, 200, 240, 400]),
    "rotated a quarter clockwise": lambda h264: rotate_mp4(h264, 90),
    "rotated half a turn": lambda h264: rotate_mp4(h264, 180),
    "rotated a quarter anticlockwise": lambda h264: rotate_mp4(h264, 270),
    "after a longer audio track": with_audio_track,
    "B-frames without an edit list": without_edit_list,
    "street scene (bikes.mp4)": lambda h264: real_clip("bikes.mp4"),
    "handheld (carphone_pristine.mp4)": lambda h264: real_clip("carphone_pristine.mp4"),
    "animation (bigbuckbunny.mp4)": lambda h264: real_clip("bigbuckbunny.mp4"),
}


def pyav_index_and_rotation(path: str):
    container = open_video(path)
    try:
        index = index_video_stream(container, path)
    finally:
        container.close()
    with av.open(path) as container:
        rotation = next(container.decode(video=0)).rotation or 0
    return index, rotation


@pytest.mark.parametrize("name", list(READABLE))
def test_the_sample_tables_give_pyavs_index(name, h264, tmp_path):
    path = tmp_path / "video.mp4"
    path.write_bytes(READABLE[name](h264))
    tables = read_mp4_video(path)
    assert tables is not None, f"{name}: a layout the tables should read"
    expected, rotation = pyav_index_and_rotation(str(path))
    index = tables.index
    for field in ("pts", "dts", "keyframe", "decode_rank"):
        np.testing.assert_array_equal(getattr(index, field), getattr(expected, field), err_msg=field)
    assert (index.time_base, index.width, index.height, index.codec) == (
        expected.time_base,
        expected.width,
        expected.height,
        expected.codec,
    )
    assert index.average_rate == expected.average_rate
    # the movie header rounds to its own timescale; FFmpeg may refine the duration from the tracks
    assert index.declared_duration == pytest.approx(expected.declared_duration, abs=0.15)
    assert index.container_format == expected.container_format
    assert tables.rotation == rotation


def test_the_tables_see_the_edit_that_shifts_b_frames(h264, tmp_path):
    """x264's B-frames put the first frame's composition time one reordering delay late; the MP4's edit list takes it
    back, so presentation starts at 0 and the first decode time is negative, as PyAV reports."""
    path = tmp_path / "video.mp4"
    path.write_bytes(h264)
    index = read_mp4_video(path).index
    assert index.pts[0] == 0 and index.dts.min() < 0
    assert index.time_base == Fraction(1, 12288) and index.average_rate == RATE


UNREADABLE = {
    "fragmented MP4": lambda h264: remux(h264, "mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof"}),
    "a cut whose edit drops frames": lambda h264: remux(h264, "mp4", skip=5),
    "Matroska": lambda h264: remux(h264, "matroska"),
    "MPEG-TS": lambda h264: remux(h264, "mpegts"),
    "MPEG-4 Part 2 in MP4": lambda h264: encode_video(num_frames=10, codec="mpeg4"),
    "truncated before its moov": lambda h264: h264[: len(h264) // 2],
    "empty": lambda h264: b"",
    "not a video": lambda h264: b"\x00\x00\x00\x10notaboxatall" * 100,
}


def test_a_file_cut_short_after_its_tables_is_left_to_pyav(h264, tmp_path, monkeypatch):
    """With the tables first (`faststart`, as phones and web video write them), a cut-off download keeps its tables;
    they would promise frames whose data is gone. PyAV's index lists only what is there (and the sampler then says
    the file looks truncated)."""
    whole = tmp_path / "faststart.mp4"
    with av.open(io.BytesIO(h264)) as source, av.open(str(whole), "w", options={"movflags": "faststart"}) as target:
        stream_out = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream_out
                target.mux(packet)
    data = whole.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")
    assert read_mp4_video(whole) is not None
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert read_mp4_video(cut) is None
    from test_codec_sampling import fake_bitcost_reader

    monkeypatch.setattr(codec, "bitcost_reader", lambda: fake_bitcost_reader([]))
    with pytest.raises(ValueError, match="cut.mp4 looks truncated"):
        sample_codec_video(str(cut), SMALL)


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_other_layouts_are_left_to_pyav(name, h264, tmp_path):
    path = tmp_path / "video.mp4"
    path.write_bytes(UNREADABLE[name](h264))
    assert read_mp4_video(path) is None
    assert read_mp4_video(tmp_path / "missing.mp4") is None


SMALL = CodecSamplingConfig(target_canvas=8, group_size=16, max_pixels=160 * 96, cache_root=None, progress=False)


def fingerprint(sample):
    return sample.canvases.tobytes(), sample.positions.tobytes(), sample.groups, sample.candidate_ids, sample.report


@pytest.mark.parametrize("name", ["H.264 with B-frames, MP4", "rotated a quarter clockwise", "H.264, MOV"])
def test_the_bitcost_path_samples_as_with_pyavs_index(name, h264, tmp_path, monkeypatch):
    from test_codec_sampling import fake_bitcost_reader

    path = tmp_path / "video.mp4"
    path.write_bytes(READABLE[name](h264))
    monkeypatch.setattr(codec, "bitcost_reader", lambda: fake_bitcost_reader([]))
    with monkeypatch.context() as patch:  # the tables' run must not demux the file or open it with PyAV
        patch.setattr(codec, "open_video", lambda *args: pytest.fail("the tables' path opened the video with PyAV"))
        with_tables = codec.sample_video(str(path), SMALL, True, sample_tables=True)
    with_pyav = codec.sample_video(str(path), SMALL, True, sample_tables=False)
    assert with_tables.report["score_source"] == "bitcost" and not with_tables.report["warnings"]
    assert fingerprint(with_tables) == fingerprint(with_pyav)
    assert with_tables.selected == with_pyav.selected


def test_a_picture_size_the_reader_disagrees_with_is_sampled_again_with_pyav(h264, tmp_path, monkeypatch):
    """Where the sample description's size is not what the decoder produces (it can differ from the stream's own
    parameter sets), the reader's pictures say so and the sample is taken as without the tables."""
    from test_codec_sampling import fake_bitcost_reader

    path = tmp_path / "video.mp4"
    path.write_bytes(h264)
    tables = read_mp4_video(path)
    wrong = type(tables)(index=codec.replace(tables.index, width=tables.index.width * 2), rotation=0)
    monkeypatch.setattr(codec, "read_mp4_video", lambda source: wrong)
    calls = []
    monkeypatch.setattr(codec, "bitcost_reader", lambda: fake_bitcost_reader(calls))
    sample = sample_codec_video(str(path), SMALL, keep_candidates=True)
    assert len(calls) == 2  # the read with the tables' geometry, then the one with PyAV's
    expected = codec.sample_video(str(path), SMALL, True, sample_tables=False)
    assert fingerprint(sample) == fingerprint(expected)
    geometry = codec.geometry_of(0, wrong.index.width, wrong.index.height, SMALL)
    problem = codec.released_reader_pass(str(path), wrong.index, [1, 2], SMALL, geometry, "video", float("inf"))[3]
    assert f"decodes {WIDTH}x{HEIGHT} pictures where the stream index has {2 * WIDTH}x{HEIGHT}" in problem


STAND_IN = """
import numpy as np

WIDTH, HEIGHT = SIZE


def items(frame_ids, export_pixels, out_w, out_h):
    costs = np.ones((4, 6))
    costs[:, 3:] = 50.0
    # not flat; a hash, as numpy.random would import hashlib, which the test requires the sampler not to import
    texture = lambda i: (np.arange(out_h * out_w * 3, dtype=np.uint64) * 2654435761 + 97 * i) % 251
    picture = lambda i: texture(i).astype(np.uint8).reshape(out_h, out_w, 3)
    pixels = lambda i: {"pixels": picture(i)} if export_pixels else {}
    bits = {"mb_bit_cost": costs}
    return [
        {"frame_idx": i, "pict_type": "I", "width": WIDTH, "height": HEIGHT, "bitcost": bits, **pixels(i)}
        for i in frame_ids
    ]


def read_video_fast_selected(path, frame_ids, export_pixels=0, out_w=0, out_h=0, **options):
    return items(frame_ids, export_pixels, out_w, out_h)


def read_video_fast_selected_segment(path, frame_ids, first, end, export_pixels=0, out_w=0, out_h=0, **options):
    return items(frame_ids, export_pixels, out_w, out_h)
"""


def test_a_fresh_process_samples_an_mp4_without_importing_pyav(h264, tmp_path):
    """The point of the tables: in a fresh process the bit-cost path neither imports PyAV nor demuxes the file (here
    with a stand-in reader module that imports nothing heavy either); nor does a short clip import what only threads,
    child processes and the cache use, or numpy.ma."""
    path = tmp_path / "video.mp4"
    path.write_bytes(h264)
    package = tmp_path / "stand_in" / "codec_video_prep"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cv_reader_fast.py").write_text(STAND_IN.replace("SIZE", f"{WIDTH}, {HEIGHT}"))
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(package.parent)!r})
        from llava_onevision2.processing.codec_sampling_llava_onevision2 import CodecSamplingConfig, sample_codec_video
        sample = sample_codec_video({str(path)!r}, CodecSamplingConfig(cache_root=None, progress=False))
        from llava_onevision2.processing.order_statistics_llava_onevision2 import PERCENTILE_RULE
        unused = ("multiprocessing", "concurrent.futures", "subprocess", "tempfile", "hashlib", "json")
        # numpy.ma: where the installed numpy's percentile arithmetic is one the sampler was checked against
        unused += ("numpy.ma",) if PERCENTILE_RULE else ()
        unused_imports = [m for m in unused if m in sys.modules]
        import json
        print(json.dumps({{"score_source": sample.report["score_source"], "warnings": sample.report["warnings"],
                           "av_imported": "av" in sys.modules, "canvases": len(sample.canvases),
                           "unused_imports": unused_imports}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["score_source"] == "bitcost" and report["warnings"] == [] and report["canvases"] > 0
    assert report["av_imported"] is False
    # no threads, child process or cache on this path, and no numpy.ma (which numpy's median, percentile and unique
    # import): about 40 ms of imports spared
    assert report["unused_imports"] == []
