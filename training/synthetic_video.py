"""Writing generated frames as a video file: the one PyAV encoder the toy curriculum, the tests and the benchmarks use.

(The export check in `hub_upload/export.py` keeps its own few lines: it runs in a process that cannot import this
package.)
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np
from PIL import Image


def keyframe_options(codec: str, interval: int | None) -> dict:
    """Encoder options that put a keyframe every `interval` frames (None: the encoder's default)."""
    if interval is None:
        return {}
    if codec == "libx265":
        return {"x265-params": f"keyint={interval}:log-level=none"}
    return {"g": str(interval)}


def to_video_frame(frame: np.ndarray | Image.Image) -> av.VideoFrame:
    if isinstance(frame, Image.Image):
        return av.VideoFrame.from_image(frame)
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")


def encode_frames(
    frames: Iterable[np.ndarray | Image.Image],
    target: str | os.PathLike | None = None,
    rate: int = 10,
    codec: str = "libx264",
    container_format: str | None = None,
    keyframe_interval: int | None = None,
    options: dict | None = None,
    pts_ms: list[int] | None = None,
) -> bytes | None:
    """Encode RGB frames (`[H, W, 3]` uint8 arrays or PIL images, all one size; any iterable, so a long video need
    not be held in memory) at `rate` frames per second into `target` (a path), or return the file's bytes when
    `target` is None (then `container_format` names the container). `pts_ms` gives each frame's presentation time
    in milliseconds instead (variable frame rate)."""
    destination = io.BytesIO() if target is None else os.fspath(target)
    with av.open(destination, mode="w", format=container_format) as container:
        stream = None
        for index, frame in enumerate(frames):
            frame = to_video_frame(frame)
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
                stream.options = {**(options or {}), **keyframe_options(codec, keyframe_interval)}
                if pts_ms is not None:
                    stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is None:
            raise ValueError("encode_frames needs at least one frame.")
        for packet in stream.encode():
            container.mux(packet)
    return destination.getvalue() if target is None else None


__all__ = ["encode_frames", "keyframe_options"]
