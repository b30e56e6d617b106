"""HEVC pictures' bits per span of coding tree blocks, read from slice segment headers (x265 streams encoded at test
time), and `framediff` spending each span's own bits."""

import io

import av
import numpy as np
import pytest
from synthetic_media import rotate_mp4

from llava_onevision2.processing import codec_sampling_llava_onevision2 as codec
from llava_onevision2.processing.hevc_slices_llava_onevision2 import (
    BitReader,
    PictureSpanReader,
    PictureSpans,
    SliceSegment,
    rbsp_to_nal_offset,
    segment_spans,
    without_emulation_prevention,
)
from llava_onevision2.processing.video_decoding_llava_onevision2 import index_video_stream, nal_length_size

WIDTH, HEIGHT = 256, 192


def noisy_top_frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """Frames whose top third is fresh noise every frame and the rest flat: the top CTB rows cost nearly all bits."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        frame = np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8)
        frame[: HEIGHT // 3] = rng.integers(0, 255, (HEIGHT // 3, WIDTH, 3), dtype=np.uint8)
        frames.append(frame)
    return frames


def encode_x265(params: str = "", container_format: str = "mp4", frames: int = 12) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream("libx265", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"x265-params": "log-level=error" + (":" + params if params else "")}
        for picture in noisy_top_frames(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def spans_of(data: bytes) -> list[PictureSpans | None]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        reader = PictureSpanReader(stream.codec_context.extradata, nal_length_size(stream))
        return [reader.spans(bytes(packet)) for packet in container.demux(stream) if packet.size]


@pytest.mark.parametrize(
    "params, ctb, rows",
    [
        ("", 64, 3),  # x265's defaults: wavefront parallel processing, one substream per CTB row
        ("ctu=32", 32, 6),
        ("ctu=16:slices=4", 16, 12),  # slices with wavefronts: still one substream per row
        ("bframes=0:weightp=0", 64, 3),
        ("keyint=4:bframes=3:b-pyramid=1:ref=4", 64, 3),  # reference sets predicted from one another
    ],
)
def test_every_picture_is_split_into_its_ctb_rows_with_the_noisy_rows_costing_the_bits(params, ctb, rows):
    data = encode_x265(params)
    pictures = spans_of(data)
    assert len(pictures) == 12 and all(picture is not None for picture in pictures)
    for picture in pictures:
        assert (1 << picture.ctb_log2, picture.width_ctbs, picture.height_ctbs) == (ctb, WIDTH // ctb, rows)
        assert [(first, count) for first, count, _ in picture.spans] == [
            (row * picture.width_ctbs, picture.width_ctbs) for row in range(rows)
        ]
        bits = np.array([span_bits for _, _, span_bits in picture.spans])
        noisy, flat = bits[: rows // 3], bits[rows // 3 :]
        assert noisy.min() > 20 * flat.max()  # rows in picture order: the noise is in the top third


def test_mp4_and_mpeg_ts_of_one_stream_give_the_same_spans():
    """Parameter sets from the MP4 configuration record and in-band in MPEG-TS give the same reading."""
    assert spans_of(encode_x265(container_format="mp4")) == spans_of(encode_x265(container_format="mpegts"))


def test_a_single_substream_picture_has_no_spans():
    assert all(picture is None for picture in spans_of(encode_x265("wpp=0")))


def test_spans_cover_the_slice_data_byte_for_byte():
    """Each picture's spans add up to its slice NAL units less their headers: at most a few dozen bytes each."""
    data = encode_x265()
    with av.open(io.BytesIO(data)) as container:
        index = index_video_stream(container, "clip")
    by_decode_order = index.packet_bytes[np.argsort(index.decoding_ranks())]
    for picture, nal_bytes in zip(spans_of(data), by_decode_order):
        span_bytes = sum(span_bits for _, _, span_bits in picture.spans) // 8
        assert 0 < nal_bytes - span_bytes < 64


def test_damaged_packets_give_no_spans_and_raise_nothing():
    data = encode_x265(frames=4)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        packets = [bytes(packet) for packet in container.demux(stream) if packet.size]
        extradata, length_size = stream.codec_context.extradata, nal_length_size(stream)
    rng = np.random.default_rng(1)
    readable = 0
    for trial in range(300):
        reader = PictureSpanReader(extradata, length_size)
        packet = bytearray(packets[trial % len(packets)])
        if trial % 3 == 0:
            packet = packet[: int(rng.integers(5, 40))]  # cut inside the slice header
        else:
            for position in rng.integers(length_size + 2, min(len(packet), 40), size=3):  # bits flipped in it
                packet[position] ^= 1 << int(rng.integers(0, 8))
        spans = reader.spans(bytes(packet))
        readable += spans is not None
        if spans is not None:
            assert all(count > 0 and bits > 0 for _, count, bits in spans.spans)
    assert readable < 300  # damage was seen


def test_emulation_prevention_bytes_are_removed_and_counted_back():
    payload = bytes([0x12, 0x00, 0x00, 0x03, 0x01, 0x00, 0x00, 0x03, 0x00, 0x7F])
    rbsp, removed = without_emulation_prevention(payload)
    assert rbsp == bytes([0x12, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x7F]) and removed == [3, 7]
    assert [rbsp_to_nal_offset(offset, removed) for offset in (0, 3, 4, 6, 7)] == [0, 4, 5, 8, 9]
    reader = BitReader(bytes([0b00111000, 0b10000000]))  # ue 0b00111 = 6, then se 0b0001000 = +4
    assert (reader.ue(), reader.se()) == (6, 4)


def test_slice_segments_without_wavefronts_are_one_span_each():
    from llava_onevision2.processing.hevc_slices_llava_onevision2 import PictureParameters, SequenceParameters

    sequence = SequenceParameters(1, False, 256, 192, 6, 8, [], False, [], True, True)
    picture = PictureParameters(0, False, False, 0, False, (1, 1), False, False, False, False, False, True, False,
                                False, False, False, False)  # fmt: skip
    segments = [SliceSegment(5, 0, [100]), SliceSegment(0, 0, [300])]
    assert segment_spans(segments, sequence, picture) == [(0, 5, 2400), (5, 7, 800)]
    tiled = PictureParameters(**{**vars(picture), "tiles": True})
    assert segment_spans(segments, sequence, tiled) is None


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_macroblocks_take_the_span_of_their_ctb_in_the_upright_picture(rotation):
    """A coded 256x128 picture in two rows of 64-pixel CTBs; cells come upright, so the span grid turns with them."""
    spans = PictureSpans(6, 4, 2, ((0, 4, 800), (4, 4, 160)))
    upright_shape = (8, 16) if rotation % 180 == 0 else (16, 8)  # macroblocks, before the spare column
    owner = codec.macroblock_spans((upright_shape[0], upright_shape[1] + 1), spans, rotation)
    assert (owner[:, -1] == -1).all()
    coded = np.repeat([[0] * 16, [1] * 16], 4, axis=0)  # coded macroblock rows 0-3: span 0, rows 4-7: span 1
    np.testing.assert_array_equal(owner[:, :-1], np.rot90(coded, k=rotation // 90))


def test_each_coded_span_is_given_exactly_its_bits_and_an_uncoded_one_none():
    spans = PictureSpans(5, 4, 3, ((0, 4, 8000), (4, 4, 640), (8, 4, 40)))  # 32-pixel CTBs: two macroblock rows each
    residual = np.zeros((6, 9))
    residual[:2, :8] = np.arange(16).reshape(2, 8) + 1.0  # first CTB row: the picture's busiest
    residual[2:4, :8] = np.arange(16).reshape(2, 8) % 4 + 1.0  # second: a little coded
    residual[4:, :8] = 0.01  # third: nothing the model codes at the picture's threshold
    bits = codec.modeled_macroblock_bits_in_spans(residual, spans, 0, codec.SKIP_BASE_BITS)
    assert bits[:2].sum() == pytest.approx(8000) and bits[2:4].sum() == pytest.approx(640)
    assert (bits[4:] == 0).all() and (bits[:, 8] == 0).all()
    whole = codec.modeled_macroblock_bits(residual, 8680.0, codec.SKIP_BASE_BITS)
    assert whole[2:4].sum() > 0 and whole[4:].sum() == 0
    for rows, total in ((slice(0, 2), 8000), (slice(2, 4), 640)):  # the picture's shape within each span
        np.testing.assert_allclose(bits[rows], whole[rows] * total / whole[rows].sum())


@pytest.mark.parametrize("rotation", [0, 90])
def test_framediff_reads_the_spans_of_every_hevc_candidate(tmp_path, monkeypatch, rotation):
    """Portrait phone video included: its pictures are coded sideways and turned upright by the display matrix."""
    path = tmp_path / "wavefronts.mp4"
    data = encode_x265(frames=20)
    path.write_bytes(rotate_mp4(data, rotation) if rotation else data)
    seen = {}
    original = codec.modeled_macroblock_bits_in_spans

    def recording(residual, spans, rotation, skip_bits):
        seen[len(seen)] = spans
        return original(residual, spans, rotation, skip_bits)

    monkeypatch.setattr(codec, "modeled_macroblock_bits_in_spans", recording)
    config = codec.CodecSamplingConfig(
        progress=False, cache_root=None, score_source="framediff", max_pixels=WIDTH * HEIGHT
    )
    sample = codec.sample_codec_video(str(path), config)
    assert len(seen) == len(sample.candidate_ids) == 20
    assert all(len(spans.spans) == 3 for spans in seen.values())
    height, width = sample.canvases.shape[1:3]
    assert (height < width) == (rotation == 0)  # canvases upright


def test_released_row_bit_costs_equal_the_rows_spans():
    """With codec-video-prep installed: the released HEVC bit-cost summed per CTB row follows the row substreams'
    sizes (correlation 0.9998 on the real clips' x265 re-encodes, README)."""
    reader = pytest.importorskip("codec_video_prep.cv_reader_fast", reason="codec-video-prep is not installed")
    data = encode_x265(frames=12)
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".mp4") as file:
        file.write(data)
        file.flush()
        items = reader.read_video_fast_selected(file.name, list(range(12)), export_bitcost=1)
        with av.open(file.name) as container:
            index = index_video_stream(container, "clip")
    pictures = spans_of(data)
    by_presentation = [pictures[rank] for rank in index.decoding_ranks()]
    for item, picture in zip(sorted(items, key=lambda item: item["frame_idx"]), by_presentation):
        released_rows = np.asarray(item["bitcost"]["ctu_bit_cost"], dtype=float).sum(axis=1)
        ours = np.array([span_bits for _, _, span_bits in picture.spans], dtype=float)
        assert np.corrcoef(released_rows, ours)[0, 1] > 0.99
