"""A video stream's index read from an MP4/MOV file's sample tables, without PyAV.

The codec sampler's released bit-cost path needs only the frames' timestamps, keyframes and the picture size before
the released reader decodes: in a fresh process, importing PyAV, demuxing every packet and decoding a first frame
for its geometry cost more than the sampler's own selection on a short clip. An MP4 file declares all of that in its
`moov` box. This module reads it, for the plain layouts whose timestamps FFmpeg's MP4 demuxer derives directly from
the tables (decoding times from `stts`, composition offsets from `ctts`, one edit that starts at the first frame
shown and discards nothing), so the index equals the one `index_video_stream` builds from PyAV's packets (tested
against it). Anything else (fragmented files, several edits or sample descriptions, sample groups that mark extra
random-access points, edits that drop frames) returns None, and the caller indexes with PyAV as before.

`packet_bytes` here are the sample sizes of `stsz`, container framing included (PyAV's index counts slice NAL units
only): the bit-cost path does not use them, and a caller that falls back to a stock signal re-indexes with PyAV.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .video_decoding_llava_onevision2 import VideoStreamIndex, decodable_from_first_keyframe, ranks

MOV_DEMUXER = "mov,mp4,m4a,3gp,3g2,mj2"  # FFmpeg's name for the demuxer, as PyAV reports it
SAMPLE_ENTRY_CODECS = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc", b"hev1": "hevc"}
MOOV_MAX_BYTES = 256 << 20  # a sample table this large is not a short read; PyAV indexes it instead


class Unsupported(Exception):
    """A layout this reader leaves to PyAV."""


@dataclass(frozen=True)
class Mp4Video:
    """What the codec sampler needs before decoding: the index and the display rotation as PyAV reports it on
    decoded frames (`frame.rotation`)."""

    index: VideoStreamIndex
    rotation: int


def read_mp4_video(path: str | os.PathLike) -> Mp4Video | None:
    """The first video track's index and rotation, or None where the file is not a plain MP4/MOV with H.264 or HEVC
    (the caller then uses PyAV). Raises nothing for unreadable files: PyAV reports those with its own errors."""
    try:
        with open(path, "rb") as handle:
            moov = top_level_moov(handle)
        return video_track(moov)
    except (Unsupported, OSError, struct.error, ValueError, IndexError, ZeroDivisionError):
        return None


def top_level_moov(handle) -> bytes:
    """The `moov` box's payload; fragmented files (`moof`) are left to PyAV, and so are files cut short (a box runs
    past the end: the tables would promise frames whose data is missing, which PyAV's index does not list)."""
    moov = None
    file_size = os.fstat(handle.fileno()).st_size
    while True:
        header = handle.read(8)
        if len(header) < 8:
            break
        size, kind = struct.unpack(">I4s", header)
        header_size = 8
        if size == 1:
            size = struct.unpack(">Q", handle.read(8))[0]
            header_size = 16
        elif size == 0:  # runs to the end of the file
            size = file_size - handle.tell() + header_size
        if size < header_size:
            raise Unsupported("malformed box")
        if handle.tell() - header_size + size > file_size:
            raise Unsupported("truncated file")
        if kind == b"moof":
            raise Unsupported("fragmented")
        if kind == b"moov":
            if size - header_size > MOOV_MAX_BYTES or moov is not None:
                raise Unsupported("moov too large or repeated")
            moov = handle.read(size - header_size)
            if len(moov) != size - header_size:
                raise Unsupported("truncated moov")
        else:
            handle.seek(size - header_size, os.SEEK_CUR)
    if moov is None:
        raise Unsupported("no moov")
    return moov


def boxes(data: bytes, start: int = 0, end: int | None = None):
    """(kind, payload start, payload end) of each box in data[start:end]."""
    end = len(data) if end is None else end
    position = start
    while position + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, position)
        header_size = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, position + 8)[0]
            header_size = 16
        elif size == 0:
            size = end - position
        if size < header_size or position + size > end:
            raise Unsupported("malformed box")
        yield kind, position + header_size, position + size
        position += size


def children(data: bytes, start: int, end: int) -> dict[bytes, list[tuple[int, int]]]:
    found: dict[bytes, list[tuple[int, int]]] = {}
    for kind, begin, stop in boxes(data, start, end):
        found.setdefault(kind, []).append((begin, stop))
    return found


def only(found: dict, kind: bytes) -> tuple[int, int]:
    spans = found.get(kind, [])
    if len(spans) != 1:
        raise Unsupported(f"{kind!r} missing or repeated")
    return spans[0]


def full_box(data: bytes, begin: int) -> tuple[int, int]:
    """(version, offset of the payload after version and flags)."""
    return data[begin], begin + 4


def video_track(moov: bytes) -> Mp4Video:
    top = children(moov, 0, len(moov))
    if b"mvex" in top:
        raise Unsupported("fragmented")
    movie_timescale, movie_duration = header_times(moov, *only(top, b"mvhd"))
    for begin, end in top.get(b"trak", []):
        trak = children(moov, begin, end)
        mdia = children(moov, *only(trak, b"mdia"))
        if handler_type(moov, *only(mdia, b"hdlr")) == b"vide":
            return read_track(moov, trak, mdia, movie_timescale, movie_duration / movie_timescale or None)
    raise Unsupported("no video track")


def header_times(data: bytes, begin: int, end: int) -> tuple[int, int]:
    """(timescale, duration) of an `mvhd` or `mdhd` box."""
    version, at = full_box(data, begin)
    if version == 1:
        _, _, timescale, duration = struct.unpack_from(">QQIQ", data, at)
    else:
        _, _, timescale, duration = struct.unpack_from(">IIII", data, at)
    if timescale == 0:
        raise Unsupported("zero timescale")
    return timescale, duration


def handler_type(data: bytes, begin: int, end: int) -> bytes:
    _, at = full_box(data, begin)
    return data[at + 4 : at + 8]


def read_track(moov: bytes, trak: dict, mdia: dict, movie_timescale: int, declared: float | None) -> Mp4Video:
    """The video track's index; `declared`: the movie header's duration in seconds (FFmpeg may refine the one PyAV
    reports by a frame or so from the tracks; only the truncation check reads it, with a tolerance of a second)."""
    timescale, _ = header_times(moov, *only(mdia, b"mdhd"))
    stbl = children(moov, *only(children(moov, *only(mdia, b"minf")), b"stbl"))
    if b"sgpd" in stbl or b"sbgp" in stbl or b"stps" in stbl or b"stz2" in stbl:
        raise Unsupported("sample groups or partial sync samples")  # FFmpeg may mark more keyframes
    codec, width, height = sample_entry(moov, *only(stbl, b"stsd"))
    durations = run_lengths(moov, *only(stbl, b"stts"), signed=False)
    sizes = sample_sizes(moov, *only(stbl, b"stsz"))
    count = len(sizes)
    if len(durations) != count or count == 0:
        raise Unsupported("sample counts disagree")
    offsets = run_lengths(moov, *only(stbl, b"ctts"), signed=True) if b"ctts" in stbl else np.zeros(count, np.int64)
    if len(offsets) != count:
        raise Unsupported("ctts count disagrees")
    keyframe = np.ones(count, dtype=bool)
    if b"stss" in stbl:
        keyframe[:] = False
        keyframe[sync_samples(moov, *only(stbl, b"stss"), count)] = True
    decode_times = np.concatenate([[0], np.cumsum(durations[:-1])]).astype(np.int64)
    shift = edit_shift(moov, trak, decode_times + offsets, timescale, movie_timescale)
    pts, dts = decode_times + offsets - shift, decode_times - shift
    order = np.argsort(pts, kind="stable")
    order = order[decodable_from_first_keyframe(pts[order], keyframe[order])]
    index = VideoStreamIndex(
        pts=pts[order],
        dts=dts[order],
        keyframe=keyframe[order],
        packet_bytes=sizes[order],
        reference=np.ones(len(order), dtype=bool),
        time_base=Fraction(1, timescale),
        width=width,
        height=height,
        codec=codec,
        declared_duration=declared,
        average_rate=average_frame_rate(durations, timescale),
        container_format=MOV_DEMUXER,
        decode_rank=ranks(order),  # samples are stored in decoding order
    )
    return Mp4Video(index=index, rotation=display_rotation(moov, *only(trak, b"tkhd")))


def sample_entry(data: bytes, begin: int, end: int) -> tuple[str, int, int]:
    """(codec, width, height) of the one sample description of a video track."""
    _, at = full_box(data, begin)
    (entries,) = struct.unpack_from(">I", data, at)
    if entries != 1:
        raise Unsupported("several sample descriptions")
    _, kind = struct.unpack_from(">I4s", data, at + 4)
    if kind not in SAMPLE_ENTRY_CODECS:
        raise Unsupported(f"sample entry {kind!r}")
    # 8-byte box header, 6 reserved, 2 data reference index, 16 pre-defined/reserved, then width and height
    width, height = struct.unpack_from(">HH", data, at + 4 + 8 + 6 + 2 + 16)
    if not width or not height:
        raise Unsupported("no picture size")
    return SAMPLE_ENTRY_CODECS[kind], width, height


def run_lengths(data: bytes, begin: int, end: int, signed: bool) -> np.ndarray:
    """Per-sample values of an `stts` or `ctts` table of (count, value) runs (`signed`: read as FFmpeg reads
    composition offsets, as signed 32-bit whatever the box version says)."""
    _, at = full_box(data, begin)
    (entries,) = struct.unpack_from(">I", data, at)
    table = np.frombuffer(data, dtype=">u4", count=2 * entries, offset=at + 4).reshape(entries, 2)
    values = table[:, 1].view(">i4") if signed else table[:, 1]
    return np.repeat(values.astype(np.int64), table[:, 0].astype(np.int64))


def sample_sizes(data: bytes, begin: int, end: int) -> np.ndarray:
    _, at = full_box(data, begin)
    uniform, count = struct.unpack_from(">II", data, at)
    if uniform:
        return np.full(count, uniform, dtype=np.int64)
    return np.frombuffer(data, dtype=">u4", count=count, offset=at + 8).astype(np.int64)


def sync_samples(data: bytes, begin: int, end: int, count: int) -> np.ndarray:
    _, at = full_box(data, begin)
    (entries,) = struct.unpack_from(">I", data, at)
    if not entries:  # FFmpeg then finds keyframes by parsing the stream
        raise Unsupported("empty sync sample table")
    numbers = np.frombuffer(data, dtype=">u4", count=entries, offset=at + 4).astype(np.int64) - 1
    if numbers.min() < 0 or numbers.max() >= count:
        raise Unsupported("sync sample out of range")
    return numbers


def edit_shift(moov: bytes, trak: dict, composition: np.ndarray, timescale: int, movie_timescale: int) -> int:
    """What FFmpeg subtracts from the track's times: no edit list, or one edit that begins at the first frame shown
    (composition time `media_time`, the usual shift for B-frame reordering) and lasts until after the last one starts.
    Edits that cut frames, add empty time or change speed are left to PyAV."""
    if b"edts" not in trak:
        return 0
    edts = children(moov, *only(trak, b"edts"))
    begin, _ = only(edts, b"elst")
    version, at = full_box(moov, begin)
    (entries,) = struct.unpack_from(">I", moov, at)
    if entries != 1:
        raise Unsupported("several edits")
    if version == 1:
        segment, media_time, rate = struct.unpack_from(">QqI", moov, at + 4)
    else:
        segment, media_time, rate = struct.unpack_from(">IiI", moov, at + 4)
    if rate != 0x10000 or media_time < 0 or media_time != composition.min():
        raise Unsupported("edit that is not a plain shift")
    last_start = composition.max() - media_time  # track timescale
    if segment and segment * timescale <= last_start * movie_timescale:
        raise Unsupported("edit that ends before the last frame starts")  # FFmpeg would drop frames
    return media_time


def average_frame_rate(durations: np.ndarray, timescale: int) -> float | None:
    """Frames per second as FFmpeg's MP4 demuxer derives the average rate: sample count over the summed durations.
    (FFmpeg discounts an outsized last sample on long tracks. Where that makes the rates differ, the released
    reader's runs miss frames asked for by this rate's numbers, and the sampler reads once from the first frame.)"""
    total = int(durations.sum())
    if total <= 0:
        return None
    rate = Fraction(timescale * len(durations), total)
    return float(rate)


def display_rotation(data: bytes, begin: int, end: int) -> int:
    """The track header's display matrix as the rotation PyAV reports on decoded frames (`frame.rotation`: degrees,
    counter-clockwise, so a picture to be turned a quarter clockwise reads -90)."""
    version, at = full_box(data, begin)
    matrix_at = at + (32 if version == 1 else 20) + 16  # times, track id, reserved, duration; then 16 more bytes
    a, b, _, c, d = struct.unpack_from(">iiiii", data, matrix_at)
    if a == 0x10000 and d == 0x10000 and b == 0 and c == 0:
        return 0
    degrees = round(math.degrees(math.atan2(b, a)))
    if degrees not in (-90, 0, 90, 180):
        raise Unsupported("display matrix that is not a quarter turn")
    return -degrees  # FFmpeg's av_display_rotation_get, in [-180, 180)
