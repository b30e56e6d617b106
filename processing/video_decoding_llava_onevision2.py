"""PyAV video reading for LLaVA-OneVision-2: index a stream without decoding, pick frames by time, decode only those.

- `index_video_stream` demuxes packets once (no decoding) to get every frame's presentation time and the keyframes.
  This is exact for variable frame rate and does not trust the container's frame count.
- `sample_frame_indices` picks frames uniformly in time, by target fps or count, capped by `max_frames`; without
  either it follows the released processor (`released_frame_count`: 8 frames under 10 s, 16 under 30 s, else
  `max_frames`, at `round(linspace(0, n - 1, count))` for constant frame rate).
- `decode_frames` walks the wanted frames in order: it keeps decoding forward inside a GOP and seeks to the next
  keyframe when the next wanted frame lies in a later GOP, so sparse sampling never decodes the whole file. Only the
  wanted frames are converted to RGB, and only those are kept: memory follows the number of sampled frames. They go
  into a `FrameStore` (one array for the clip); the video processor passes one that resizes each frame to its model
  size as it arrives, so a high-resolution clip is never held at full size.
- Rotation metadata (display matrix) is applied to the returned frames.

Every failure names the input: missing or unreadable files, files without a video stream, streams without frames.
"""

from __future__ import annotations

import io
import itertools
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .order_statistics_llava_onevision2 import median


def load_av():
    """PyAV, imported on first use so that image-only users never need it. (Inside `try` on purpose: transformers'
    remote-code loader requires every import it finds outside one to be installed.)"""
    try:
        import av
    except ImportError as error:
        raise ImportError("Reading videos needs PyAV: pip install av") from error
    return av


def describe_source(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of video>"
    return getattr(source, "name", None) or f"<{type(source).__name__} video stream>"


def open_video(source):
    """Open a path, bytes or a binary file-like object with PyAV; errors name the source."""
    av = load_av()

    name = describe_source(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise FileNotFoundError(f"Video file not found: {name}")
        if os.path.isfile(source) and os.path.getsize(source) == 0:
            raise ValueError(f"Video file {name} is empty (0 bytes); the download or copy may have failed.")
        target = os.fspath(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ValueError("The video is empty (0 bytes).")
        target = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        target = source
    else:
        raise TypeError(f"Cannot read a video from {type(source).__name__}; pass a path, bytes or a binary file.")
    try:
        container = av.open(target, mode="r")
    except av.FFmpegError as error:
        raise ValueError(f"Could not open video {name}: {error}") from error
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams}) or ["none"]
        container.close()
        raise ValueError(f"{name} has no video stream (streams found: {', '.join(kinds)}).")
    return container


@dataclass
class VideoStreamIndex:
    """Frames of one video stream in presentation order, from a single demux pass.

    Attributes:
        pts: presentation timestamps (stream time base), sorted, one per frame.
        dts: decoding timestamps of the same packets (same order): what demuxers seek by.
        keyframe: whether each frame (same order) starts a GOP.
        packet_bytes: compressed size of each frame's picture (same order): its slice NAL units for H.264/HEVC
            (so container framing does not count), else its packet size.
        time_base: seconds per pts unit.
        width, height: coded frame size (rotation lives on the decoded frames). codec: the decoder's name.
        declared_duration: the container's own duration in seconds (None when it has none).
        average_rate: the stream's average frame rate in frames per second (None when it declares none).
        reference: whether each frame (same order) may be a reference picture (H.264 `nal_ref_idc`; True where
            the codec does not say).
        container_format: the demuxer's name (FFmpeg's, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "mpegts").
        decode_rank: each frame's place in decoding order (same order): the order the file stores its packet in, which
            is decoding order in every container. None where unknown (`decoding_ranks` then ranks `dts`).
    """

    pts: np.ndarray
    dts: np.ndarray
    keyframe: np.ndarray
    packet_bytes: np.ndarray
    time_base: Fraction
    width: int
    height: int
    codec: str
    declared_duration: float | None
    average_rate: float | None = None
    reference: np.ndarray | None = None
    container_format: str = ""
    decode_rank: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    @property
    def timestamps(self) -> np.ndarray:
        """Seconds from the first frame."""
        return (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)

    def decoding_ranks(self) -> np.ndarray:
        """Each frame's place in decoding order. Decoding timestamps do not always give it: Matroska files store
        none, and FFmpeg's guesses for a stream with B-frames leave some out and misorder others."""
        if self.decode_rank is not None:
            return self.decode_rank
        return ranks(self.dts)

    @property
    def frame_interval(self) -> float:
        """Median spacing of frames in seconds (1/fps for constant frame rate); a one-frame stream has no spacing of
        its own and takes the stream's declared rate (zero when it declares none)."""
        if self.num_frames < 2:
            return 1.0 / self.average_rate if self.average_rate else 0.0
        return median(np.diff(self.timestamps))

    @property
    def duration(self) -> float:
        """Span covered by the frames: last timestamp plus one frame."""
        return float(self.timestamps[-1]) + self.frame_interval

    @property
    def fps(self) -> float:
        return self.num_frames / self.duration if self.duration > 0 else 0.0

    @property
    def released_duration(self) -> float:
        """Duration as the released processor measures it: frame count over the stream's average frame rate."""
        return self.num_frames / self.average_rate if self.average_rate else self.duration


ANNEX_B_START = b"\x00\x00\x01"


def is_slice_nal(codec: str, header: int) -> bool:
    """Whether a NAL unit carries picture data (H.264 types 1-5, HEVC VCL types 0-31), from its first byte."""
    return 1 <= header & 0x1F <= 5 if codec == "h264" else (header >> 1) & 0x3F < 32


def nal_length_size(stream) -> int | None:
    """Bytes of the length prefix before each NAL unit in MP4-style (avcC/hvcC) H.264/HEVC, or None for Annex B."""
    extradata = stream.codec_context.extradata or b""
    if not extradata or extradata[0] != 1:  # configuration records start with version 1; Annex B with a start code
        return None
    offset = 4 if stream.codec_context.name == "h264" else 21
    return (extradata[offset] & 0x03) + 1 if len(extradata) > offset else 4


def nal_unit_bounds(data: bytes, length_size: int | None):
    """`(start, end)` of each NAL unit of one packet in `data`, MP4-style (length-prefixed) or Annex B (start
    codes), without prefixes or start codes."""
    if length_size is not None:
        position = 0
        while position + length_size <= len(data):
            size = int.from_bytes(data[position : position + length_size], "big")
            start = position + length_size
            if size and start < len(data):
                yield start, min(start + size, len(data))
            position = start + size
        return
    starts = []
    found = data.find(ANNEX_B_START)
    while found >= 0:
        starts.append(found + 3)
        found = data.find(ANNEX_B_START, found + 3)
    for begin, next_start in zip(starts, starts[1:] + [len(data) + 3]):
        end = next_start - 3
        while end > begin and data[end - 1] == 0:  # a 4-byte start code's leading zero belongs to no unit
            end -= 1
        if end > begin:
            yield begin, end


def slice_nal_headers(data: bytes, length_size: int | None):
    """`(first byte, length)` of each NAL unit of one packet (`nal_unit_bounds`)."""
    for start, end in nal_unit_bounds(data, length_size):
        yield data[start], end - start


def picture_facts(data: bytes, codec: str, length_size: int | None) -> tuple[int, bool]:
    """Bytes of the picture's slice NAL units (without start codes, length prefixes, delimiters or parameter sets),
    and whether other pictures may predict from it (H.264 `nal_ref_idc`; always True for HEVC).

    The same H.264/HEVC stream in MP4 (length-prefixed) and MPEG-TS (start codes plus an access unit delimiter per
    frame and parameter sets per keyframe) has packets of different sizes; the slices inside are identical, so the
    frame sizes the codec sampler's bit model uses do not depend on the container."""
    total, reference = 0, codec != "h264"
    for header, size in slice_nal_headers(data, length_size):
        if is_slice_nal(codec, header):
            total += size
            reference = reference or bool(header & 0x60)
    return total, reference or total == 0


def coded_size_reader(stream):
    """A function packet -> (compressed bytes of its picture, whether it may be a reference): the slice payload and
    `nal_ref_idc` for H.264/HEVC, else the packet size and True."""
    codec = stream.codec_context.name
    if codec not in ("h264", "hevc"):
        return lambda packet: (packet.size, True)
    length_size = nal_length_size(stream)

    def read(packet):
        size, reference = picture_facts(bytes(packet), codec, length_size)
        return size or packet.size, reference

    return read


def index_video_stream(container, name: str) -> VideoStreamIndex:
    """Demux every packet of the first video stream (no decoding) into a `VideoStreamIndex`."""
    av = load_av()

    stream = container.streams.video[0]
    pts, dts, keyframe, sizes, references = [], [], [], [], []
    coded_size = coded_size_reader(stream)
    try:
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:  # flush packets carry no frame
                continue
            pts.append(packet.pts)
            dts.append(packet.dts if packet.dts is not None else packet.pts)
            keyframe.append(packet.is_keyframe)
            size, reference = coded_size(packet)
            sizes.append(size)
            references.append(reference)
    except av.FFmpegError as error:
        if not pts:
            raise ValueError(f"Could not read packets of video {name}: {error}") from error
        # A truncated or damaged tail: keep the frames whose packets were read.
    if not pts:
        raise ValueError(f"Video {name} has no decodable frames (its video stream holds no packets).")
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    order = order[decodable_from_first_keyframe(np.asarray(pts)[order], np.asarray(keyframe)[order])]
    declared = float(container.duration / av.time_base) if container.duration else None
    return VideoStreamIndex(
        pts=np.asarray(pts, dtype=np.int64)[order],
        dts=np.asarray(dts, dtype=np.int64)[order],
        keyframe=np.asarray(keyframe, dtype=bool)[order],
        packet_bytes=np.asarray(sizes, dtype=np.int64)[order],
        reference=np.asarray(references, dtype=bool)[order],
        time_base=stream.time_base,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        codec=stream.codec_context.name,
        declared_duration=declared,
        average_rate=float(stream.average_rate) if stream.average_rate else None,
        container_format=container.format.name,
        decode_rank=ranks(order),  # `order` holds file positions: packets come in decoding order
    )


def ranks(values: np.ndarray) -> np.ndarray:
    """Each value's place in ascending order (ties keep their order)."""
    order = np.argsort(values, kind="stable")
    result = np.empty(len(order), dtype=np.int64)
    result[order] = np.arange(len(order))
    return result


def decodable_from_first_keyframe(pts: np.ndarray, keyframe: np.ndarray) -> np.ndarray:
    """Mask (presentation order) of the frames a decoder can produce: a stream cut without re-encoding may start
    mid-GOP, and the frames shown before its first keyframe reference pictures that are not in the file, so
    decoders drop them. Timestamps then start at the first decodable frame."""
    if not keyframe.any():
        return np.ones(len(pts), dtype=bool)  # no keyframe flags (some raw streams): keep every frame
    return pts >= pts[np.flatnonzero(keyframe)].min()


def released_frame_count(duration: float, max_frames: int | None) -> int:
    """How many frames the released processor samples when neither a rate nor a count is given."""
    if duration < 10:
        return 8
    if duration < 30:
        return 16
    if max_frames is None:
        raise ValueError("The released frame-count rule needs max_frames for videos of 30 s or more.")
    return max_frames


def is_constant_rate(timestamps: np.ndarray, tolerance: float = 0.01) -> bool:
    """Whether the frame spacing is uniform (within `tolerance` of the median spacing)."""
    if len(timestamps) < 3:
        return True
    spacing = np.diff(timestamps)
    return float(np.ptp(spacing)) <= tolerance * median(spacing)


def sample_frame_indices(
    timestamps: np.ndarray,
    duration: float,
    fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int | None = None,
    keep_all: bool = False,
) -> list[int]:
    """Indices of frames spread uniformly in time.

    The count is `num_frames`, else `floor(duration * fps)` (at least 1), else every frame with `keep_all`, else
    `released_frame_count(duration, max_frames)`; capped by `max_frames` and by the number of frames. Targets are
    evenly spaced from the first to the last frame: at constant frame rate `round(linspace(0, n - 1, count))` (what
    the released processor picks), otherwise the frame nearest each evenly spaced time.
    """
    available = len(timestamps)
    if num_frames is not None:
        count = num_frames
    elif fps is not None:
        count = max(1, int(duration * fps))
    elif keep_all:
        count = available
    else:
        count = released_frame_count(duration, max_frames)
    if max_frames is not None:
        count = min(count, max_frames)
    count = max(1, min(count, available))
    if count == available:
        return list(range(available))
    if is_constant_rate(timestamps):
        # numpy rounds halves to even, like the released processor's torch.round.
        return sorted(set(np.round(np.linspace(0, available - 1, count)).astype(int).tolist()))
    targets = np.linspace(timestamps[0], timestamps[-1], count)
    nearest = np.clip(np.searchsorted(timestamps, targets), 1, available - 1)
    earlier_is_closer = (targets - timestamps[nearest - 1]) <= (timestamps[nearest] - targets)
    nearest = np.where(earlier_is_closer, nearest - 1, nearest)
    return sorted(set(int(i) for i in nearest))


def frame_to_rgb(frame, reformatter=None) -> np.ndarray:
    """`[H, W, 3]` uint8, rotated upright according to the frame's display matrix. Pass one `reformatter` for all
    frames of a decode pass: `frame.to_ndarray(format=...)` sets up a new converter per frame, which costs more than
    the conversion itself on small frames (13x at 64x64)."""
    converted = (
        reformatter.reformat(frame, format="rgb24") if reformatter is not None else frame.reformat(format="rgb24")
    )
    return upright(converted.to_ndarray(), frame.rotation)


def upright(array: np.ndarray, rotation: float | None) -> np.ndarray:
    """`array` (rows, columns, ...) as displayed: turned by the frame's rotation (degrees counter-clockwise)."""
    quarter_turns = (int(round(rotation / 90)) % 4) if rotation else 0
    return np.ascontiguousarray(np.rot90(array, k=quarter_turns)) if quarter_turns else array


@dataclass
class DecodeStats:
    """What a decode pass cost: frames the decoder produced and seeks it made."""

    frames_decoded: int = 0
    seeks: int = 0


def iter_frames(
    container,
    index: VideoStreamIndex,
    wanted: list[int],
    name: str,
    stats: DecodeStats | None = None,
    thread_type: str = "AUTO",
):
    """Yield `(position, frame)` for the sorted positions `wanted` of `index`, decoding as little as possible.

    The decoder runs on while the next wanted frame is in the GOP being decoded and seeks to the keyframe before it
    otherwise. Every seek is checked against the index (`seek_at_or_before`); when no seek lands verifiably (MPEG
    program streams stamp frames differently after a seek), the rest is decoded forward from the start, counting
    frames. A position the stream has no frame for is served by the next decodable frame (its own position is
    yielded). Raises, naming the video, when a wanted frame cannot be reached. `thread_type` applies when this pass
    opens the decoder ("SLICE" where frame threads would race, as FFmpeg's motion-vector export does).
    """
    stats = stats if stats is not None else DecodeStats()
    stream = container.streams.video[0]
    if not stream.codec_context.is_open:  # fixed once the decoder has run (a second pass over the same container)
        stream.thread_type = thread_type
    keyframes = np.flatnonzero(index.keyframe)
    frames, next_position, forward = None, 0, False  # the running decoder's (position, frame) pairs
    for target in wanted:
        preceding = np.searchsorted(keyframes, target, side="right") - 1
        gop_start = int(keyframes[preceding]) if preceding >= 0 else 0
        if frames is None or (not forward and (target < next_position or gop_start > next_position)):
            frames = None if forward else seek_at_or_before(container, stream, index, keyframes, target, name, stats)
            if frames is None:
                forward = True
                frames = counted_frames_from_start(container, stream, index, name, stats)
        found = next(((position, frame) for position, frame in frames if position >= target), None)
        if found is None:
            raise ValueError(
                f"Video {name}: frame {target} (t={index.timestamps[target]:.2f}s) could not be decoded; the file "
                "may be truncated or damaged."
            )
        position, frame = found
        next_position = position + 1
        yield position, frame


SEEK_BACKOFF_KEYFRAMES = 3  # earlier keyframes tried when a seek lands late, before seeking to the start


def seek_at_or_before(container, stream, index: VideoStreamIndex, keyframes: np.ndarray, target: int, name, stats):
    """`(position, frame)` pairs from a decoder positioned at or before frame `target`, or None when no seek lands
    where the index says.

    Seeks to the presentation timestamp of the keyframe before the target (exact in MP4 and Matroska), then to its
    decoding timestamp (demuxers such as MPEG-TS's compare seek targets with decoding timestamps, so a presentation
    timestamp lands a GOP late when B-frames delay it). A landing counts when the first frame decoded carries a
    timestamp of the index at or before the target; otherwise earlier keyframes are tried, then a point before the
    stream's first packet."""
    preceding = int(np.searchsorted(keyframes, target, side="right")) - 1
    earliest = max(preceding - SEEK_BACKOFF_KEYFRAMES, 0)
    seek_points = [int(index.pts[keyframes[preceding]])] if preceding >= 0 else []  # exact where demuxers seek by pts
    seek_points += [int(index.dts[keyframes[i]]) for i in range(preceding, earliest - 1, -1)]
    seek_points.append(int(index.dts.min()) - max(1, int(1 / index.time_base)))  # one second before the start
    for seek_point in seek_points:
        container.seek(seek_point, stream=stream, backward=True, any_frame=False)
        stats.seeks += 1
        frames = frames_by_timestamp(container.decode(stream), index, name, stats)
        first = next(frames, None)
        if first is None:
            continue
        frame, position = first
        if position <= target and landed_on_index(frame, position, index):
            return itertools.chain([(position, frame)], ((p, f) for f, p in frames))
    return None


def landed_on_index(frame, position: int, index: VideoStreamIndex) -> bool:
    return frame.pts is not None and int(index.pts[position]) == frame.pts


def frames_by_timestamp(decoder, index: VideoStreamIndex, name: str, stats: DecodeStats):
    """`(frame, position)` for each decoded frame, placed by its presentation timestamp."""
    av = load_av()
    try:
        for frame in decoder:
            stats.frames_decoded += 1
            if frame.pts is None:
                raise ValueError(
                    f"Video {name} has frames without presentation timestamps; cannot place them in time."
                )
            yield frame, min(int(np.searchsorted(index.pts, frame.pts)), index.num_frames - 1)
    except av.FFmpegError as error:
        raise ValueError(f"Could not decode video {name}: {error}") from error


def counted_frames_from_start(container, stream, index: VideoStreamIndex, name: str, stats: DecodeStats):
    """`(position, frame)` for every frame from the first, placed by counting (decoders emit frames in presentation
    order); the fallback when timestamps after a seek cannot be trusted."""
    av = load_av()
    container.seek(int(index.dts.min()) - max(1, int(1 / index.time_base)), stream=stream, backward=True)
    stats.seeks += 1
    try:
        for position, frame in enumerate(container.decode(stream)):
            stats.frames_decoded += 1
            if position >= index.num_frames:
                return
            yield position, frame
    except av.FFmpegError as error:
        raise ValueError(f"Could not decode video {name}: {error}") from error


class FrameStore:
    """Where a decode pass puts its RGB frames (`[H, W, 3]` uint8, upright): one array allocated at the first frame
    for all `count` of them, so a clip is never held twice (as a list and as its stack). Subclasses may transform
    frames on the way in: the frames sampler resizes them to their model size as they arrive, so a long 4K clip is
    never held at full size."""

    def __init__(self, count: int, name: str):
        self.count, self.name = count, name
        self.frames: np.ndarray | None = None
        self.source_hw: tuple[int, int] | None = None  # the size of the pictures as decoded
        self.stored = 0

    def add(self, frame: np.ndarray, position: int) -> None:
        if self.frames is None:
            self.source_hw = tuple(frame.shape[:2])
            self.frames = np.empty((self.count, *frame.shape), dtype=np.uint8)
        elif frame.shape != self.frames.shape[1:]:
            raise ValueError(
                f"Video {self.name} changes picture size mid-stream: frame {position} is "
                f"{frame.shape[1]}x{frame.shape[0]}, earlier ones {self.frames.shape[2]}x{self.frames.shape[1]}. "
                "Frames stacked as decoded must share one size; the video processor resizes each frame to one size "
                "and reads such streams."
            )
        self.frames[self.stored] = frame
        self.stored += 1

    def result(self) -> np.ndarray:
        """`[n, H, W, 3]`: the frames stored, in decoding order."""
        if self.frames is None:
            raise ValueError(f"Video {self.name}: no frame was decoded.")
        return self.frames[: self.stored]


def decode_frames(
    container, index: VideoStreamIndex, wanted: list[int], name: str, store: FrameStore | None = None
) -> tuple[np.ndarray, list[int], int]:
    """RGB frames at the sorted positions `wanted` (`[n, H, W, 3]`, through `store`, a plain `FrameStore` by
    default), the positions actually decoded, and frames decoded in total."""
    stats = DecodeStats()
    store = store if store is not None else FrameStore(len(wanted), name)
    positions = []
    reformatter = load_av().video.reformatter.VideoReformatter()
    for position, frame in iter_frames(container, index, wanted, name, stats):
        store.add(frame_to_rgb(frame, reformatter), position)
        positions.append(position)
    return store.result(), positions, stats.frames_decoded


@dataclass
class DecodedClip:
    """Sampled frames of one video and where they came from."""

    frames: np.ndarray  # [T, H, W, 3] uint8
    frame_indices: list[int]
    timestamps: list[float]
    total_num_frames: int
    fps: float
    duration: float
    codec: str | None
    source: str
    frames_decoded: int = 0
    source_hw: tuple[int, int] | None = None  # the decoded pictures' size where `frames` were resized on the way in


def read_video(
    source,
    fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int | None = None,
    allow_truncated: bool = False,
    keep_all: bool = False,
    frame_store=None,
) -> DecodedClip:
    """Open, index, sample and decode one video. See the module docstring for the strategy. `frame_store`: a
    callable `(count, name) -> FrameStore` that receives the decoded frames (default: kept as decoded)."""
    name = describe_source(source)
    container = open_video(source)
    try:
        index = index_video_stream(container, name)
        check_complete(index, name, allow_truncated)
        duration = index.duration if fps is not None else index.released_duration
        wanted = sample_frame_indices(index.timestamps, duration, fps, num_frames, max_frames, keep_all)
        store = (frame_store or FrameStore)(len(wanted), name)
        frames, positions, frames_decoded = decode_frames(container, index, wanted, name, store)
    finally:
        container.close()
    timestamps = index.timestamps
    return DecodedClip(
        frames=frames,
        frame_indices=positions,
        timestamps=[round(float(timestamps[p]), 6) for p in positions],
        total_num_frames=index.num_frames,
        fps=index.fps,
        duration=index.duration,
        codec=index.codec,
        source=name,
        frames_decoded=frames_decoded,
        source_hw=store.source_hw if frames.shape[1:3] != store.source_hw else None,
    )


# Seconds per frame assumed for decoded frames passed without a frame rate (what the release stamps them with).
FRAMES_WITHOUT_METADATA_FPS = 1.0


def frames_to_array(frames, name: str) -> np.ndarray:
    """Frames already decoded (a list of PIL images or arrays, or a `[T, H, W, 3]` array or tensor) -> `[T, H, W, 3]`
    uint8. Duck-typed (`convert` for PIL, `cpu` for torch) so that this module needs neither."""
    if isinstance(frames, (list, tuple)):
        frames = [np.asarray(f.convert("RGB")) if hasattr(f, "convert") else np.asarray(f) for f in frames]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"{name}: all frames must have one size, got {sorted(shapes)}.")
        frames = np.stack(frames)
    array = frames.cpu().numpy() if hasattr(frames, "cpu") else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"{name}: decoded frames must be [T, H, W, 3], got shape {tuple(array.shape)}.")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no frames.")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max() <= 1.0:
            raise ValueError(f"{name}: frames look like floats in [0, 1]; pass uint8 values in [0, 255].")
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array


def is_decoded(video) -> bool:
    """Whether a video input is frames already decoded rather than a file, bytes or a binary stream."""
    return isinstance(video, (list, tuple, np.ndarray)) or hasattr(video, "cpu")


def sample_decoded_frames(
    frames,
    fps: float | None,
    name: str,
    sample_fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int | None = None,
    keep_all: bool = False,
) -> DecodedClip:
    """Pick frames from a clip decoded elsewhere, by the same rule as `read_video`. `fps` is the rate the frames were
    taken at; without it they are kept as given (up to `max_frames`) and stamped one second apart, as released."""
    array = frames_to_array(frames, name)
    if not fps:
        sample_fps, keep_all, fps = None, True, FRAMES_WITHOUT_METADATA_FPS
    timestamps = np.arange(len(array)) / fps
    duration = len(array) / fps
    wanted = sample_frame_indices(timestamps, duration, sample_fps, num_frames, max_frames, keep_all)
    return DecodedClip(
        frames=array if len(wanted) == len(array) else array[wanted],  # all kept: no copy of the clip
        frame_indices=wanted,
        timestamps=[float(timestamps[i]) for i in wanted],
        total_num_frames=len(array),
        fps=float(fps),
        duration=duration,
        codec=None,
        source=name,
    )


def load_clip(
    video,
    name: str,
    known_fps: float | None = None,
    fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int | None = None,
    keep_all: bool = False,
    allow_truncated: bool = False,
    frame_store=None,
) -> DecodedClip:
    """Sampled RGB frames of one video: decoded from a path / bytes / binary file (through `frame_store`, see
    `read_video`), or picked from frames given in memory (`known_fps`: the rate those frames were taken at)."""
    sampling = dict(fps=fps, num_frames=num_frames, max_frames=max_frames, keep_all=keep_all)
    if not is_decoded(video):
        return read_video(video, allow_truncated=allow_truncated, frame_store=frame_store, **sampling)
    sampling["sample_fps"] = sampling.pop("fps")
    return sample_decoded_frames(video, known_fps, name, **sampling)


def check_complete(index: VideoStreamIndex, name: str, allow_truncated: bool) -> None:
    """Refuse a file whose frames stop well before the duration its container declares (a cut-off download)."""
    if allow_truncated or index.declared_duration is None:
        return
    missing = index.declared_duration - index.duration
    if missing > max(1.0, 0.1 * index.declared_duration):
        raise ValueError(
            f"Video {name} looks truncated: the container declares {index.declared_duration:.2f}s but its frames "
            f"end at {index.duration:.2f}s. Pass allow_truncated=True to use the frames that are there."
        )


__all__ = [
    "DecodeStats",
    "DecodedClip",
    "VideoStreamIndex",
    "decode_frames",
    "frames_to_array",
    "is_decoded",
    "load_clip",
    "index_video_stream",
    "iter_frames",
    "load_av",
    "open_video",
    "read_video",
    "released_frame_count",
    "sample_decoded_frames",
    "sample_frame_indices",
]
