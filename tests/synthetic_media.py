"""Synthetic test media encoded with PyAV at test time (nothing is downloaded).

Frame `i` of every synthetic video is a flat grey of `frame_level(i)` with a white bar at a moving column, so a
decoded frame tells which source frame it was (to within the codec's rounding).
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np
import PIL.Image
from av.bitstream import BitStreamFilterContext

from llava_onevision2.training.synthetic_video import encode_frames

WIDTH, HEIGHT = 96, 64


def frame_level(index: int) -> int:
    return (index * 4) % 240


def synthetic_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    frame = np.full((height, width, 3), frame_level(index), dtype=np.uint8)
    column = (index * 3) % (width - 8)
    frame[: height // 4, column : column + 8] = 255
    return frame


def encode_video(
    num_frames: int = 60,
    rate: int = 10,
    codec: str = "libx264",
    gop: int = 12,
    container_format: str = "mp4",
    pts_ms: list[int] | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> bytes:
    """Encode frames 0..num_frames-1; `pts_ms` gives variable presentation times in milliseconds."""
    frames = (synthetic_frame(index, width, height) for index in range(num_frames))
    return encode_frames(
        frames, rate=rate, codec=codec, container_format=container_format, keyframe_interval=gop, pts_ms=pts_ms
    )


def rotate_mp4(data: bytes, clockwise_degrees: int) -> bytes:
    """Set the track's display matrix (as phones do for portrait video) without re-encoding."""
    matrices = {90: (0, 1, -1, 0), 180: (-1, 0, 0, -1), 270: (0, -1, 1, 0)}
    a, b, c, d = matrices[clockwise_degrees]
    patched = bytearray(data)
    start = patched.find(b"tkhd")
    offset = start + 4 + (40 if patched[start + 4] == 0 else 52)
    one = 1 << 16
    patched[offset : offset + 36] = struct.pack(">9i", a * one, b * one, 0, c * one, d * one, 0, 0, 0, 1 << 30)
    return bytes(patched)


def write_silence(container, packets: int = 10) -> None:
    """A mono MP2 stream of silence in `container`."""
    stream = container.add_stream("mp2", rate=16000)
    stream.layout = "mono"
    for _ in range(packets):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def encode_audio_only() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as container:
        write_silence(container)
    return buffer.getvalue()


def solid_image(width: int, height: int, value: int = 128) -> PIL.Image.Image:
    rng = np.random.default_rng(value)
    return PIL.Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def encode_empty_video_stream() -> bytes:
    """A Matroska file that declares a video stream but carries only audio packets."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        write_silence(container)
    return buffer.getvalue()


def encode_resolution_change(sizes=((96, 64), (128, 96)), frames_each: int = 10, rate: int = 10) -> bytes:
    """An MPEG-TS H.264 stream whose picture size changes mid-stream (as broadcast captures do at ad breaks): one
    encoder per size, their packets muxed into one stream; frame i shows `synthetic_frame(i)` at its segment's size."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = sizes[0][0], sizes[0][1], "yuv420p"
        index = 0
        for width, height in sizes:
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            encoder.time_base, encoder.framerate = Fraction(1, rate), rate
            encoder.options = {"bframes": "0"}
            pictures = []
            for _ in range(frames_each):
                picture = av.VideoFrame.from_ndarray(synthetic_frame(index, width, height), format="rgb24")
                picture = picture.reformat(format="yuv420p")
                picture.pts, picture.time_base = index, Fraction(1, rate)
                pictures.append(picture)
                index += 1
            for picture in [*pictures, None]:
                for packet in encoder.encode(picture):
                    packet.stream = stream
                    container.mux(packet)
    return buffer.getvalue()


def encode_moving_box(
    num_frames: int = 240,
    rate: int = 30,
    codec: str = "libx264",
    gop: int = 30,
    width: int = 320,
    height: int = 192,
    box: int = 32,
    speed: int = 3,
    container_format: str = "mp4",
    moving: bool = True,
) -> tuple[bytes, list[tuple[int, int]]]:
    """A textured static background with a red box sliding right; returns the bytes and each frame's box corner."""
    background = (np.random.default_rng(0).random((height, width, 3)) * 60 + 80).astype(np.uint8)
    y = height // 3
    corners = [((index * speed) % (width - box) if moving else width // 2, y) for index in range(num_frames)]

    def frames():
        for x, _ in corners:
            image = background.copy()
            image[y : y + box, x : x + box] = (250, 40, 40)
            yield image

    data = encode_frames(frames(), rate=rate, codec=codec, container_format=container_format, keyframe_interval=gop)
    return data, corners


def remux(data: bytes, container_format: str, options: dict | None = None, annexb: bool = False, skip: int = 0):
    """The same packets in another container (no re-encoding); `skip` drops the first packets, as a cut does."""
    source = av.open(io.BytesIO(data))
    stream_in = source.streams.video[0]
    buffer = io.BytesIO()
    target = av.open(buffer, mode="w", format=container_format, options=options or {})
    stream_out = target.add_stream_from_template(stream_in)
    convert = BitStreamFilterContext("h264_mp4toannexb", stream_in, stream_out) if annexb else None
    for number, packet in enumerate(source.demux(stream_in)):
        if packet.dts is None or number < skip:
            continue
        for out in convert.filter(packet) if convert else [packet]:
            out.stream = stream_out
            target.mux(out)
    target.close()
    return buffer.getvalue()
