"""PyAV reading and the video processor on videos encoded here: codecs, frame rates, rotation, bad files."""

import io

import av
import numpy as np
import PIL.Image
import pytest
import torch
from synthetic_media import (
    encode_audio_only,
    encode_empty_video_stream,
    encode_resolution_change,
    encode_video,
    frame_level,
    rotate_mp4,
    synthetic_frame,
)
from transformers.image_utils import SizeDict

from llava_onevision2.processing.video_decoding_llava_onevision2 import (
    DecodedClip,
    decode_frames,
    frame_to_rgb,
    index_video_stream,
    open_video,
    read_video,
    sample_frame_indices,
)
from llava_onevision2.processing.video_processing_llava_onevision2 import LlavaOnevision2VideoProcessor
from llava_onevision2.processing.video_samplers_llava_onevision2 import FramesSampler
from llava_onevision2.processing.vision_layout_llava_onevision2 import block_layout_positions, patchify

SMALL = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 8)


def assert_frames_are(clip, indices):
    """Each decoded frame's grey level identifies its source frame (codec rounding is a few levels)."""
    levels = clip.frames[:, -8:, :, 0].reshape(len(clip.frames), -1).mean(axis=1)
    np.testing.assert_allclose(levels, [frame_level(i) for i in indices], atol=6)


@pytest.mark.parametrize("codec", ["libx264", "libx265", "mpeg4", "libvpx-vp9"])
def test_codecs_decode_the_sampled_frames(codec):
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} encoder not in this PyAV build")
    container_format = "webm" if codec == "libvpx-vp9" else "mp4"
    data = encode_video(num_frames=60, rate=10, codec=codec, container_format=container_format)
    clip = read_video(io.BytesIO(data), fps=1.0, max_frames=32)
    assert clip.frame_indices == [0, 12, 24, 35, 47, 59]
    assert clip.timestamps == pytest.approx([i / 10 for i in clip.frame_indices])
    assert (clip.fps, clip.duration, clip.total_num_frames) == (pytest.approx(10.0), pytest.approx(6.0), 60)
    assert_frames_are(clip, clip.frame_indices)


def test_variable_frame_rate_uses_presentation_times():
    pts_ms = [0, 100, 150, 400, 1000, 1050, 1100, 2000, 2500, 3000] + [3000 + 33 * i for i in range(1, 11)]
    data = encode_video(num_frames=20, pts_ms=pts_ms)
    clip = read_video(data, num_frames=4)
    # Targets 0, 1.11, 2.22, 3.33 s -> the frames nearest in time, not evenly spaced indices.
    assert clip.frame_indices == [0, 6, 7, 19]
    assert clip.timestamps == pytest.approx([0.0, 1.1, 2.0, 3.33], abs=1e-6)
    assert_frames_are(clip, clip.frame_indices)


def test_rotation_metadata_is_applied():
    data = rotate_mp4(encode_video(num_frames=4), 90)
    clip = read_video(data)
    assert clip.frames.shape[1:] == (96, 64, 3)  # portrait after rotation
    upright = np.rot90(synthetic_frame(0), k=-1)  # 90 degrees clockwise
    assert np.abs(clip.frames[0].astype(int) - upright.astype(int)).mean() < 8


def test_sparse_sampling_seeks_instead_of_decoding_everything():
    data = encode_video(num_frames=300, rate=30, gop=30)
    clip = read_video(data, num_frames=4)
    assert clip.frame_indices == [0, 100, 199, 299]
    assert_frames_are(clip, clip.frame_indices)
    assert clip.frames_decoded < 300 // 2
    dense = read_video(data, fps=30, max_frames=300)
    assert dense.frame_indices == list(range(300)) and dense.frames_decoded == 300


def test_sample_frame_indices_rules():
    timestamps = np.arange(100) / 10  # 10 s at 10 fps
    assert len(sample_frame_indices(timestamps, 10.0, fps=1.0)) == 10
    assert len(sample_frame_indices(timestamps, 10.0, fps=1.0, max_frames=4)) == 4
    # constant frame rate: round(linspace(0, n - 1, count)) with halves to even, as the released processor
    assert sample_frame_indices(timestamps, 10.0, num_frames=3) == [0, 50, 99]
    # neither fps nor a count: the released rule (16 frames from 10 s up to 30 s)
    assert len(sample_frame_indices(timestamps, 10.0, max_frames=384)) == 16
    assert len(sample_frame_indices(timestamps, 9.9, max_frames=384)) == 8
    assert sample_frame_indices(timestamps, 10.0, keep_all=True) == list(range(100))
    assert sample_frame_indices(timestamps[:2], 0.2, fps=1.0) == [0]
    assert sample_frame_indices(timestamps[:3], 0.3, num_frames=10) == [0, 1, 2]


def test_processor_outputs_for_a_file_path(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(encode_video(num_frames=50, rate=10))
    processor = LlavaOnevision2VideoProcessor(**SMALL)
    out = processor(str(path), return_metadata=True)
    metadata = out["video_metadata"][0]
    assert metadata.frames_indices == [0, 7, 14, 21, 28, 35, 42, 49]  # released rule: 8 frames under 10 s
    assert metadata.timestamps == pytest.approx([i / 10 for i in metadata.frames_indices])
    grid = out["video_grid_thw"]
    assert grid.tolist() == [[1, 4, 6]] * 8  # evaluated format: one row per frame
    assert out["pixel_values_videos"].shape == (8 * 24, 3 * 14 * 14)
    expected = block_layout_positions(metadata.frames_indices, 4, 6, 2)
    assert torch.equal(out["video_patch_positions"], expected)
    assert metadata.source == str(path) and metadata.codec == "h264"


def test_training_format_zero_positions_and_budgets():
    data = encode_video(num_frames=40, rate=10)
    processor = LlavaOnevision2VideoProcessor(**SMALL)
    out = processor(
        data,
        video_format="training",
        temporal_positions="zero",
        num_frames=3,
        pad_to_even_frames=False,
        total_pixels=3 * 28 * 28 * 4,
        return_metadata=True,
    )
    # one multi-frame row; the 3-frame budget of 3136 pixels each shrinks 64x96 frames to 28x56
    assert out["video_grid_thw"].tolist() == [[3, 2, 4]]
    assert out["video_patch_positions"][:, 0].unique().tolist() == [0]
    assert out["video_metadata"][0].grid_rows == 1


def test_decoded_frames_inputs():
    processor = LlavaOnevision2VideoProcessor(**SMALL, max_frames=4, pad_to_even_frames=False)
    frames = [PIL.Image.fromarray(synthetic_frame(i)) for i in range(10)]
    out = processor(frames, return_metadata=True)
    assert out["video_metadata"][0].frames_indices == [0, 3, 6, 9]
    assert out["video_metadata"][0].timestamps == [0.0, 3.0, 6.0, 9.0]  # one frame per second without metadata
    array = np.stack([synthetic_frame(i) for i in range(30)])
    out = processor(array, video_metadata={"fps": 10.0}, fps=1.0, return_metadata=True)
    assert out["video_metadata"][0].frames_indices == [0, 14, 29]  # 3 s at 1 fps
    assert out["video_metadata"][0].timestamps == pytest.approx([0.0, 1.4, 2.9])
    batch = processor([frames, array], video_metadata=[None, {"fps": 10.0}], return_metadata=True)
    # the 3 s array follows the released rule (8 frames under 10 s), capped by max_frames=4
    assert [m.grid_rows for m in batch["video_metadata"]] == [4, 4]


def test_same_pixels_from_file_and_from_decoded_frames():
    """The decode path and the in-memory path share resize / normalise / patchify."""
    data = encode_video(num_frames=20, rate=10)
    processor = LlavaOnevision2VideoProcessor(**SMALL, pad_to_even_frames=False)
    from_file = processor(data, num_frames=2, return_metadata=True)
    clip = read_video(data, num_frames=2)
    from_frames = processor(clip.frames, video_metadata={"fps": 10.0}, num_frames=2, return_metadata=True)
    assert torch.equal(from_file["pixel_values_videos"], from_frames["pixel_values_videos"])


@pytest.mark.parametrize(
    "settings, model_hw",
    [
        # 3 frames and a repeated one share a 4-frame budget: 3920 pixels each (3 would get 5226, i.e. 56x84)
        (dict(num_frames=3, pad_to_even_frames=True, total_pixels=4 * 28 * 28 * 5), (28, 56)),
        (dict(num_frames=4, total_pixels=4 * 28 * 28 * 5), (28, 56)),  # a clip-wide budget shrinks every frame
        (dict(num_frames=5, video_format="training", max_pixels=28 * 28 * 20), (56, 84)),  # one multi-frame row
    ],
    ids=["padded", "total_pixels", "training"],
)
@pytest.mark.parametrize("rotated", [False, True], ids=["landscape", "portrait"])
def test_frames_resized_a_few_at_a_time_equal_the_whole_clip_resized_at_once(monkeypatch, settings, model_hw, rotated):
    """The file path resizes each frame as it is decoded (a long 4K clip is never held at full size), frames given in
    memory are resized a few at a time the same way, and both normalise a few frames at a time; the rows are exactly
    those of resizing and normalising the whole clip in one call."""
    from llava_onevision2.processing import video_samplers_llava_onevision2 as samplers

    data = encode_video(num_frames=20, rate=10)
    data = rotate_mp4(data, 90) if rotated else data
    processor = LlavaOnevision2VideoProcessor(**{**SMALL, **{k: v for k, v in settings.items() if "pixels" in k}})
    call = {k: v for k, v in settings.items() if "pixels" not in k}
    whole_clip = read_video(data, num_frames=settings["num_frames"])
    model_hw = model_hw[::-1] if rotated else model_hw
    pictures = processor.resize(
        torch.from_numpy(whole_clip.frames).permute(0, 3, 1, 2),
        size=SizeDict(height=model_hw[0], width=model_hw[1]),
        resample=processor.resample,
    )
    if settings.get("pad_to_even_frames") and len(pictures) % 2:
        pictures = torch.cat([pictures, pictures[-1:]])
    normalised = processor.rescale_and_normalize(
        pictures, True, processor.rescale_factor, True, processor.image_mean, processor.image_std
    )
    expected = patchify(normalised, 14, 2)
    monkeypatch.setattr(samplers, "RESIZE_CHUNK_BYTES", 1)  # one frame per resize
    monkeypatch.setattr(samplers, "NORMALIZE_CHUNK_BYTES", 1)  # one frame per normalisation
    as_decoded = processor(data, **call, return_metadata=True)
    in_memory = processor(whole_clip.frames, video_metadata={"fps": 10.0}, **call, return_metadata=True)
    assert torch.equal(as_decoded["pixel_values_videos"], expected)
    assert torch.equal(in_memory["pixel_values_videos"], expected)
    assert as_decoded["video_grid_thw"][0, 1:].tolist() == [side // 14 for side in model_hw]
    metadata = as_decoded["video_metadata"][0]
    assert (metadata.height, metadata.width) == whole_clip.frames.shape[1:3]  # the decoded size, not the model's
    held = FramesSampler(processor).load(data, None, processor.resolve_settings(call), "clip")
    assert held.frames.shape[1:3] == model_hw and held.source_hw == whole_clip.frames.shape[1:3] != model_hw


def test_a_stream_that_changes_picture_size_mid_stream():
    data = encode_resolution_change(sizes=((96, 64), (128, 96)), frames_each=10)
    with pytest.raises(ValueError, match=r"changes picture size mid-stream: frame 10 is 128x96, earlier ones 96x64"):
        read_video(data, num_frames=20)
    processor = LlavaOnevision2VideoProcessor(**SMALL)
    out = processor(data, num_frames=20, return_metadata=True)
    assert out["video_metadata"][0].frames_indices == list(range(20))
    assert out["video_grid_thw"].tolist() == [[1, 4, 6]] * 20  # every frame at the first frame's model size
    clip = FramesSampler(processor).load(data, None, processor.resolve_settings({"num_frames": 20}), "clip")
    assert_frames_are(clip, range(20))  # the larger frames were resized, not dropped or misplaced


def test_bad_video_inputs_name_the_input(tmp_path):
    processor = LlavaOnevision2VideoProcessor(**SMALL)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        processor(str(tmp_path / "missing.mp4"))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 not a video " * 64)
    with pytest.raises(ValueError, match=r"Could not open video .*corrupt\.mp4"):
        processor(str(corrupt))
    audio = tmp_path / "speech.mkv"
    audio.write_bytes(encode_audio_only())
    with pytest.raises(ValueError, match=r"speech\.mkv has no video stream \(streams found: audio\)"):
        processor(str(audio))
    full = encode_video(num_frames=100, container_format="matroska")
    truncated = tmp_path / "cut.mkv"
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match=r"cut\.mkv looks truncated: the container declares 10\.00s"):
        processor(str(truncated))
    out = processor(str(truncated), allow_truncated=True, return_metadata=True)
    assert max(out["video_metadata"][0].timestamps) < 10.0
    cut_mp4 = tmp_path / "cut.mp4"
    cut_mp4.write_bytes(encode_video(num_frames=100)[:3000])
    with pytest.raises(ValueError, match=r"cut\.mp4"):
        processor(str(cut_mp4))
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(encode_empty_video_stream())
    with pytest.raises(ValueError, match=r"empty\.mkv has no decodable frames"):
        processor(str(empty))
    with pytest.raises(ValueError, match="video 0 has no frames"):
        processor(np.zeros((0, 64, 96, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"must be \[T, H, W, 3\]"):
        processor(np.zeros((2, 64, 96), dtype=np.uint8)[None])
    with pytest.raises(ValueError, match="video_backend 'fancy' is not available"):
        processor(encode_video(num_frames=4), video_backend="fancy")
    with pytest.raises(ValueError, match="video_format must be one of"):
        processor(encode_video(num_frames=4), video_format="fancy")


def test_video_processor_save_and_load(tmp_path):
    processor = LlavaOnevision2VideoProcessor(**SMALL, video_format="training", max_frames=8)
    processor.save_pretrained(tmp_path)
    loaded = LlavaOnevision2VideoProcessor.from_pretrained(tmp_path)
    assert (loaded.video_format, loaded.max_frames, loaded.min_pixels) == ("training", 8, SMALL["min_pixels"])


@pytest.mark.parametrize("width, height", [(64, 64), (322, 198), (1280, 720)])
def test_a_shared_frame_converter_gives_the_pixels_of_a_fresh_one(width, height):
    """Decoding converts every frame with one reformatter per pass; the pixels equal PyAV's per-frame conversion."""
    container = av.open(io.BytesIO(encode_video(num_frames=4, rate=10, width=width, height=height)))
    reformatter = av.video.reformatter.VideoReformatter()
    for frame in container.decode(video=0):
        np.testing.assert_array_equal(frame_to_rgb(frame, reformatter), frame.to_ndarray(format="rgb24"))


def test_a_one_frame_video_has_the_declared_rate_and_one_frame_of_duration(tmp_path):
    path = tmp_path / "one.mp4"
    path.write_bytes(encode_video(num_frames=1, rate=25))
    clip = read_video(str(path))
    assert clip.total_num_frames == 1 and clip.timestamps == [0.0]
    assert clip.fps == pytest.approx(25.0) and clip.duration == pytest.approx(0.04)


def test_an_empty_file_is_reported_as_empty(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.mp4 is empty \(0 bytes\)"):
        read_video(str(path))
    with pytest.raises(ValueError, match=r"The video is empty \(0 bytes\)"):
        read_video(b"")


# -- a third back-end: one class and one registration line --------------------------------------------------------


class KeyframesSampler(FramesSampler):
    """Only the stream's keyframes (what a seek-only reader affords), laid out and prompted like sampled frames."""

    name = "keyframes"
    unread_settings = ("fps", "num_frames", "codec_config")

    def load(self, video, metadata, settings, name):
        container = open_video(video)
        try:
            index = index_video_stream(container, name)
            wanted = np.flatnonzero(index.keyframe)[: settings["max_frames"]].tolist()
            frames, positions, _ = decode_frames(container, index, wanted, name)
        finally:
            container.close()
        timestamps = [float(index.timestamps[p]) for p in positions]
        return DecodedClip(
            np.stack(frames), positions, timestamps, index.num_frames, index.fps, index.duration, index.codec, name
        )


class KeyframesVideoProcessor(LlavaOnevision2VideoProcessor):
    pass


KeyframesVideoProcessor.register_video_sampler(KeyframesSampler)


def test_a_new_backend_is_one_class_and_one_registration():
    from conftest import tiny_tokenizer
    from llava_onevision2.processing.image_processing_llava_onevision2 import LlavaOnevision2ImageProcessor
    from llava_onevision2.processing.processing_llava_onevision2 import LlavaOnevision2Processor

    budget = dict(patch_size=4, merge_size=2, min_pixels=8 * 8 * 4, max_pixels=8 * 8 * 12)
    processor = LlavaOnevision2Processor(
        image_processor=LlavaOnevision2ImageProcessor(**budget),
        tokenizer=tiny_tokenizer(),
        video_processor=KeyframesVideoProcessor(**budget, video_backend="keyframes"),
    )
    video = encode_video(num_frames=12, gop=4)
    out = processor(text="<|video_pad|> What moves?", videos=[video], return_metadata=True, return_tensors="pt")
    metadata = out["video_metadata"][0]
    assert metadata.frames_indices == [0, 4, 8] and metadata.timestamps == pytest.approx([0.0, 0.4, 0.8])
    text = processor.decode(out["input_ids"][0])
    assert text.startswith("<0.0 seconds><|vision_start|>") and text.count("<|vision_start|>") == 3
    tokens = sum(int(row.prod()) for row in out["video_grid_thw"]) // 4
    assert (out["input_ids"] == processor.video_token_id).sum() == tokens
    # The registration reached the subclass only, and the new sampler refuses what it does not read.
    assert "keyframes" not in LlavaOnevision2VideoProcessor.video_samplers
    with pytest.raises(ValueError, match=r"video_backend='keyframes' does not read \['fps'\]"):
        processor.video_processor(video, fps=2.0)


def test_codec_refuses_frame_settings_it_would_ignore():
    with pytest.raises(ValueError, match=r"video_backend='codec' does not read \['fps', 'num_frames'\]"):
        LlavaOnevision2VideoProcessor(**SMALL)(
            encode_video(num_frames=12), video_backend="codec", fps=1.0, num_frames=4
        )
    with pytest.raises(ValueError, match=r"video_backend='codec' does not read \['do_resize'\]"):
        LlavaOnevision2VideoProcessor(**SMALL)(encode_video(num_frames=12), video_backend="codec", do_resize=False)
    with pytest.raises(ValueError, match=r"video_backend='frames' does not read \['codec_config'\]"):
        LlavaOnevision2VideoProcessor(**SMALL)(encode_video(num_frames=12), codec_config={"target_canvas": 4})


# Luma and chroma coefficients (Kr, Kb) of the matrices phone and camera video is tagged with.
KR_KB = {"bt709": (0.2126, 0.0722), "bt470bg": (0.299, 0.114), "bt2020nc": (0.2627, 0.0593)}


def expected_rgb(y: float, u: float, v: float, full_range: bool, matrix: str) -> np.ndarray:
    """RGB of one 8-bit YCbCr sample by the matrix and range's definition."""
    kr, kb = KR_KB[matrix]
    luma, cb, cr = (
        (y, u - 128, v - 128) if full_range else ((y - 16) * 255 / 219, (u - 128) * 255 / 224, (v - 128) * 255 / 224)
    )
    red = luma + 2 * (1 - kr) * cr
    blue = luma + 2 * (1 - kb) * cb
    green = (luma - kr * red - kb * blue) / (1 - kr - kb)
    return np.clip([red, green, blue], 0, 255)


def encode_tagged_bars(path: str, codec: str, pix_fmt: str, full_range: bool, matrix: str, frames: int = 3):
    """Three flat bars of known YCbCr (grey; a warm colour; a cool colour), with the colour tags phones write."""
    width, height, scale = 192, 64, (4 if "10" in pix_fmt else 1)
    bars = [(128, 128, 128), (200, 128, 200), (90, 190, 100)]
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx265":
            stream.options = {
                "x265-params": f"log-level=error:range={'full' if full_range else 'limited'}:colormatrix={matrix}"
            }
        else:
            stream.options = {"x264-params": f"fullrange={'on' if full_range else 'off'}:colormatrix={matrix}"}
        dtype = np.uint16 if scale > 1 else np.uint8
        for _ in range(frames):
            frame = av.VideoFrame(width, height, pix_fmt)
            for component, plane in enumerate(frame.planes):  # Y, then Cb and Cr at half size
                sub = 1 if component == 0 else 2
                rows = np.frombuffer(plane, dtype=dtype).reshape(-1, plane.line_size // np.dtype(dtype).itemsize)
                for bar, values in enumerate(bars):
                    rows[: height // sub, bar * width // 3 // sub : (bar + 1) * width // 3 // sub] = (
                        values[component] * scale
                    )
            frame.color_range = 2 if full_range else 1
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return bars


@pytest.mark.parametrize(
    "codec, pix_fmt, full_range, matrix",
    [
        ("libx264", "yuv420p", False, "bt709"),  # HD phone and camera video
        ("libx264", "yuv420p", True, "bt470bg"),  # full-range H.264 as Android phones record it (yuvj420p)
        ("libx265", "yuv420p10le", True, "bt709"),  # 10-bit full-range HEVC: the range is a tag, not a pixel format
        ("libx265", "yuv420p", False, "bt709"),
        ("libx265", "yuv420p10le", False, "bt2020nc"),  # iPhone HDR video's matrix (converted, not tone-mapped)
    ],
)
def test_pixels_follow_the_streams_colour_tags(tmp_path, codec, pix_fmt, full_range, matrix):
    """Frames and codec canvases convert by the stream's matrix and range, as FFmpeg's scale filter does (PyAV's
    reformatter documents an unspecified range by default; these pixels would be off by up to 20 levels)."""
    from llava_onevision2.processing.codec_sampling_llava_onevision2 import CanvasConverter

    path = str(tmp_path / f"bars_{codec}_{pix_fmt}_{full_range}.mp4")
    bars = encode_tagged_bars(path, codec, pix_fmt, full_range, matrix)
    frame_pixels = read_video(path).frames[0]
    with av.open(path) as container, CanvasConverter() as converter:
        canvas = converter.canvas_rgb(next(container.decode(video=0)), (64, 192), 0)
    for bar, (y, u, v) in enumerate(bars):
        column = bar * 64 + 32
        expected = expected_rgb(y, u, v, full_range, matrix)
        np.testing.assert_allclose(frame_pixels[32, column], expected, atol=3)
        np.testing.assert_allclose(canvas[32, column], expected, atol=3)
