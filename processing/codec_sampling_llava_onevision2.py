"""Codec-aligned video sampling on stock PyAV: anchor canvases plus collages of the busiest 2x2 blocks.

The released LLaVA-OneVision-2 codec path keeps one frame per group dense and fills the group's other canvases with
the merge blocks that cost the encoder the most bits, so the same token budget spans about three times the time of
uniform sampling. This module reproduces that flow without a patched FFmpeg, for every codec PyAV decodes:

1. candidates: `(target_canvas / images_per_group) * group_size` frames at evenly spaced presentation times (for
   constant frame rate exactly the release's index truncation), optionally moved off keyframes (+-1..4 frames,
   then refilled with the nearest unused non-keyframes, and with keyframes when those run out, as released);
2. geometry: one canvas size for all frames, sides multiples of patch x merge, area about `max_pixels`;
3. score maps: the released per-macroblock bit-cost where it can be read (`score_source="auto"`, the default:
   codec-video-prep installed, a file path, H.264/HEVC; `"bitcost"` insists on it). Otherwise, for 8-bit H.264 up to
   1080p (`"residual"`; `RESIDUAL_AUTO_MAX_PIXELS`), what the encoder left to code: each block's prediction rebuilt
   from the decoder's exported motion vectors and the reference pictures they point at
   (`codec_residual_llava_onevision2`), subtracted from the unfiltered decoded picture, per 4x4 cell log2 of the
   residual beyond a dead zone, summed per macroblock (`residual_macroblock_scores`). For every other codec and larger
   frames (`"framediff"`), per 4x4-pixel cell the smallest absolute luma difference over +-`shift_radius`
   half-resolution pixels of displacement (motion-tolerant block matching; frames above 1080p are compared at quarter
   resolution, where a cell is one pixel, `ScoringScale`) to the frame the encoder most likely predicted it from (a
   P-frame's anchor, else the frame before: `framediff_references`), summed per 16x16 macroblock and turned into
   modeled bits (`modeled_macroblock_bits`: skipped below a threshold, bits per doubling above it plus a cost for
   coding the block at all, larger in B-frames, the threshold set so the frame's modeled bits equal its packet bits; an
   HEVC picture whose headers give its rows' or slice segments' sizes has each row's bits scaled to its own,
   `candidate_bit_spans`). Maps take the grid the release reads for the codec (H.264 macroblocks; 64x64 units for HEVC
   and VP9, `modeled_bits_map`) and go through the released transform: log1p, divided by the frame's 99th percentile,
   clipped to [0, 1] and resized to the canvas; a block scores the sum of that map over its pixels, added in the
   release's float32 order (`block_scores`). A frame whose compared frame was not decoded (or without vectors) uses its
   spatial activity instead;
4. readiness grouping: a group grows from min to max frames until its top-B block sum reaches the video's mean
   fixed-window sum with the selected blocks spread over `coverage_bins` bins, and stops at the first ready end
   that adds less than `delta_ratio` over the end before it;
5. selection: the group's first good frame is the anchor canvas; the other `images_per_group - 1` canvases take the
   group's top-B blocks of the remaining frames (ties broken by frame, then block index), but only as many canvases
   as the blocks that scored at all need -- a still stretch spends no collage tokens;
6. packing: anchor blocks then selected blocks (in frame, row, column order) fill canvases block by block, so every
   merge window of a canvas is one whole source block; positions are (source frame index, patch row, patch column)
   in block layout. Canvases are always whole; nothing is zero-filled.

Decoding is one pass over the needed frames (candidates and the frames they are compared with, or their reference
pictures), seeking by GOP when that skips work; only candidate frames are converted to RGB, at canvas size. With the
released bit-cost, the released reader returns both the bits and the canvas-size pictures, in runs that start again at
a later keyframe wherever that skips frames no candidate needs; for a plain MP4/MOV file the index and picture geometry it
needs come from the file's sample tables (`mp4_index_llava_onevision2`), so that path does not import PyAV at all
unless it falls back (`SampledVideo`). A long video file is decoded in keyframe-aligned segments by
several processes, with the same result (`decode_processes`, `codec_segments_llava_onevision2`). Results are cached
on disk under `cache_root` (the released default location unless set; `None` turns it off) with a key made of the
file's content hash and every setting. PyAV is loaded on first use, so importing this module costs nothing for
image-only users.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from .codec_residual_llava_onevision2 import (
    DECODER_OPTIONS,
    RESIDUAL_CODECS,
    ResidualScorer,
    cell_sums,
    local_contrast,
    reference_candidates,
)
from .codec_segments_llava_onevision2 import (
    SegmentsTimedOut,
    frames_to_decode,
    plan_segments,
    run_segments,
    segment_processes,
)
from .hevc_slices_llava_onevision2 import PictureSpanReader, PictureSpans
from .mp4_index_llava_onevision2 import read_mp4_video
from .order_statistics_llava_onevision2 import distinct_small_integers, linear_percentile
from .resize_rule_llava_onevision2 import smart_resize
from .video_decoding_llava_onevision2 import (
    DecodeStats,
    check_complete,
    describe_source,
    index_video_stream,
    iter_frames,
    load_av,
    nal_length_size,
    open_video,
    upright,
)

# 2: framediff on HEVC/VP9 scores 64x64 units; 3: framediff above 1080p compares frames at quarter resolution;
# 4: framediff compares P-frames with their anchor and models I/P-frames with the smaller skip cost
# 5: framediff spends an HEVC picture's bits per CTB row (or slice segment) where its headers give their sizes
CACHE_FORMAT_VERSION = 5
SCORE_SOURCES = ("auto", "residual", "framediff", "bitcost")
BITCOST_CODECS = ("h264", "hevc")  # what the released patched decoder reads bit-costs from
BITCOST_GRIDS = ("adaptive", "mb", "sub", "ctu")
MIN_CANVAS_PIXELS = 56 * 56


def bitcost_reader():
    """The released per-macroblock bit-cost reader (`pip install --no-deps codec-video-prep`), or None: its module
    `codec_video_prep.cv_reader_fast`, whose `read_video_fast_selected` reads from the first frame and
    `read_video_fast_selected_segment` from a given keyframe."""
    try:
        from codec_video_prep import cv_reader_fast
    except ImportError:
        return None
    quiet_bundled_ffmpeg(os.path.dirname(os.path.dirname(os.path.abspath(cv_reader_fast.__file__))))
    return cv_reader_fast


AV_LOG_ERROR = 16  # FFmpeg's log level that keeps errors and drops warnings


@functools.cache
def quiet_bundled_ffmpeg(site_packages: str) -> None:
    """Keep the released reader's own FFmpeg libraries (bundled in its wheel, apart from PyAV's) to errors. Its scaler
    warns "deprecated pixel format used" once per decoded frame of full-range H.264 (yuvj420p, as many Android
    phones record), about pictures it converts correctly: one line per frame, thousands for a long video. Only the
    copies of libavutil that are already loaded are touched (RTLD_NOLOAD); PyAV's FFmpeg keeps its own level."""
    import ctypes
    import glob

    no_load = getattr(os, "RTLD_NOLOAD", None)
    if no_load is None:  # not a POSIX dynamic loader (the released wheels are Linux builds)
        return
    patterns = ("codec_video_prep/libs/libavutil*.so*", "codec_video_prep.libs/libavutil*.so*")
    for library in sorted(path for pattern in patterns for path in glob.glob(os.path.join(site_packages, pattern))):
        try:
            loaded = ctypes.CDLL(library, mode=no_load | os.RTLD_LAZY)
        except OSError:  # not this process's copy (a symlink name or an unused build)
            continue
        loaded.av_log_set_level(AV_LOG_ERROR)


def released_cache_root() -> str:
    """The released codec cache folder: `$ONLINE_CODEC_CACHE_DIR`, else `$HF_HOME/online_codec`."""
    if os.environ.get("ONLINE_CODEC_CACHE_DIR"):
        return os.environ["ONLINE_CODEC_CACHE_DIR"]
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(hf_home, "online_codec")


def released_timeout() -> float:
    """Seconds one video may take (`$ONLINE_CODEC_TIMEOUT`, else 7200, the released default)."""
    return float(os.environ.get("ONLINE_CODEC_TIMEOUT", 7200))


SPATIAL_MASK_MODES = ("off",)


@dataclass(frozen=True)
class CodecSamplingConfig:
    """The released `codec` block (same key names and defaults), plus this implementation's own knobs.

    Released keys: `target_canvas, group_size, images_per_group, patch, max_pixels, min_group_frames,
    max_group_frames, spatial_mask_mode, cache_root, timeout`. `cache_root` (str or `pathlib.Path`) defaults to the
    released location (see `released_cache_root`); `None` turns the cache off. `timeout` bounds the seconds spent on
    one video. Build it from a mapping with `from_mapping`, which rejects unknown keys by name.
    """

    target_canvas: int = 32
    group_size: int = 32
    images_per_group: int = 4
    patch: int = 14
    max_pixels: int = 150_000
    min_group_frames: int = 8
    max_group_frames: int = 64
    spatial_mask_mode: str = "off"
    cache_root: str | os.PathLike | None = field(default_factory=released_cache_root, compare=False)
    timeout: float = field(default_factory=released_timeout, compare=False)
    avoid_keyframes: bool = True
    # ours
    merge: int = 2
    # "auto": the released bit-cost where it can be read (codec-video-prep installed, a file path, H.264/HEVC),
    # else "residual" for H.264 up to 1080p and "framediff" for other codecs and larger frames; "bitcost" insists
    # on the released signal,
    # "residual" on the decoder's own residual (H.264 only); "framediff" works for every codec
    score_source: str = "auto"
    bitcost_grid: str = "adaptive"  # bitcost only: ctu for hevc/vp9, macroblocks otherwise (the release default)
    coverage_bins: int = 3
    delta_ratio: float = 0.05
    score_percentile: float = 99.0
    shift_radius: int = 2  # motion tolerance in half-resolution pixels
    allow_truncated: bool = False
    progress: bool | None = field(default=None, compare=False)  # None: a bar for videos over 5 minutes
    # processes decoding a long video file in keyframe-aligned segments; None: one per usable CPU for videos long
    # enough to pay for them, 1 inside DataLoader workers (the result is the same, so it is not in the cache key);
    # paths only: bytes and file objects are decoded in one pass
    decode_processes: int | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.cache_root is not None:
            root = os.path.expanduser(os.fspath(self.cache_root))
            object.__setattr__(self, "cache_root", root or None)
        if self.target_canvas <= 0 or self.images_per_group <= 0 or self.group_size <= 0:
            raise ValueError("target_canvas, images_per_group and group_size must be positive.")
        if self.target_canvas % self.images_per_group:
            raise ValueError(
                f"target_canvas ({self.target_canvas}) must be a multiple of images_per_group ({self.images_per_group})."
            )
        if self.min_group_frames > self.max_group_frames:
            raise ValueError(
                f"min_group_frames {self.min_group_frames} exceeds max_group_frames {self.max_group_frames}."
            )
        if self.spatial_mask_mode not in SPATIAL_MASK_MODES:
            raise ValueError(
                f"spatial_mask_mode {self.spatial_mask_mode!r} is not implemented; the released checkpoint uses "
                f"{SPATIAL_MASK_MODES[0]!r} (the only mode its codec tool applies)."
            )
        if not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}.")
        if self.decode_processes is not None and not (
            isinstance(self.decode_processes, int) and self.decode_processes >= 1
        ):
            raise ValueError(
                f"decode_processes must be None (automatic) or an integer >= 1, got {self.decode_processes!r}."
            )
        if self.score_source not in SCORE_SOURCES:
            raise ValueError(f"score_source must be one of {SCORE_SOURCES}, got {self.score_source!r}.")
        if self.bitcost_grid not in BITCOST_GRIDS:
            raise ValueError(f"bitcost_grid must be one of {BITCOST_GRIDS}, got {self.bitcost_grid!r}.")
        self.check_signal_settings()
        if self.score_source == "bitcost" and bitcost_reader() is None:
            raise ValueError(
                "score_source='bitcost' needs the codec-video-prep package (pip install --no-deps codec-video-prep; "
                "its reader also runs on numpy 2). score_source='auto' (the default), 'residual' or 'framediff' need "
                "nothing extra."
            )

    SIGNAL_SETTINGS = {"shift_radius": ("framediff",), "bitcost_grid": ("bitcost",)}

    def check_signal_settings(self) -> None:
        """A setting of one signal given with another signal named explicitly would be ignored: refuse it. Under
        "auto" such settings apply where that signal is chosen."""
        for name, signals in self.SIGNAL_SETTINGS.items():
            default = next(f.default for f in fields(self) if f.name == name)
            if getattr(self, name) != default and self.score_source not in ("auto", *signals):
                raise ValueError(
                    f"codec_config {name}={getattr(self, name)!r} only applies to score_source={signals[0]!r}, but "
                    f"score_source={self.score_source!r} was asked for; drop {name} or choose that signal."
                )

    @classmethod
    def accepted_keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, *mappings) -> CodecSamplingConfig:
        """Merge mappings left to right (later wins) into a config; an unknown key is an error naming the accepted."""
        values = {}
        for mapping in mappings:
            values.update(mapping or {})
        unknown = sorted(set(values) - set(cls.accepted_keys()))
        if unknown:
            raise ValueError(f"Unknown codec_config keys {unknown}; accepted keys: {', '.join(cls.accepted_keys())}.")
        return cls(**values)

    @property
    def num_candidates(self) -> int:
        return (self.target_canvas // self.images_per_group) * self.group_size

    def settings(self) -> dict:
        """Every setting that changes the result (the cache key)."""
        values = asdict(self)
        for name in ("cache_root", "timeout", "progress", "decode_processes"):
            values.pop(name)
        return values


@dataclass
class CodecSample:
    """Result of codec sampling one video.

    Attributes:
        canvases: `[N, H, W, 3]` uint8, anchor canvas first in each group.
        positions: `[N * Hp * Wp, 3]` int64 (source frame index, patch row, patch column), block layout per canvas.
        fps: the stream's average frame rate.
        candidate_ids / candidate_times: the sampled source frames and their presentation times in seconds (exact,
            also for variable frame rate; equal to `t / fps` for constant frame rate). groups: per group its frames, anchor, canvases and stop reason.
        report: score source, frames decoded, seeks and warnings.
    """

    canvases: np.ndarray
    positions: np.ndarray
    fps: float
    candidate_ids: list[int]
    candidate_times: list[float]
    groups: list[dict]
    report: dict
    candidate_frames: np.ndarray | None = None  # [T, H, W, 3] when asked for (visualisation)
    selected: list[list[tuple[int, int, int]]] | None = None  # per group: (frame, block row, block col)

    @property
    def grid(self) -> tuple[int, int]:
        return self.canvases.shape[1] // self.report["patch"], self.canvases.shape[2] // self.report["patch"]

    def timestamp_runs(self, merge: int) -> list[tuple[float, int]]:
        """(seconds, tokens) per run of consecutive blocks from one source frame, in canvas order."""
        frame_of_block = self.positions[:: merge * merge, 0]
        runs: list[list[int]] = []
        for t in frame_of_block.tolist():
            if runs and runs[-1][0] == t:
                runs[-1][1] += 1
            else:
                runs.append([t, 1])
        seconds = dict(zip(self.candidate_ids, self.candidate_times))
        return [(seconds[t], blocks) for t, blocks in runs if t >= 0]


# -- 1. candidates --------------------------------------------------------------------------------------------------


def uniform_candidate_ids(timestamps: np.ndarray, count: int) -> list[int]:
    """Frames at `count` evenly spaced times from the first to the last frame, each the last frame shown at or
    before its time. For constant frame rate this is the release's `floor(linspace(0, n - 1, count))`; for variable
    frame rate it follows presentation time, and times falling in one gap collapse to one frame."""
    count = min(count, len(timestamps))
    targets = np.linspace(timestamps[0], timestamps[-1], count)
    ids = np.searchsorted(timestamps, targets + 1e-6, side="right") - 1
    return sorted(set(np.clip(ids, 0, len(timestamps) - 1).tolist()))


def frame_mask(ids: list[int], total: int) -> np.ndarray:
    """A boolean mask over `total` frames, true at `ids` (set differences without `np.setdiff1d`, whose
    `np.unique` imports numpy.ma)."""
    mask = np.zeros(total, dtype=bool)
    mask[np.asarray(ids, dtype=np.int64)] = True
    return mask


def move_off_keyframes(ids: list[int], keyframe: np.ndarray) -> list[int]:
    """Replace keyframe candidates by the nearest non-keyframe within 4 frames (+d before -d), then refill to the
    original count with the unused non-keyframes nearest to the kept ids (ties: nearer frame `total // 2`, then
    smaller), and if those run out, with the unused keyframes in frame order."""
    total = len(keyframe)
    moved = []
    for frame_id in ids:
        replacement = frame_id
        if keyframe[frame_id]:
            for distance in range(1, 5):
                options = [frame_id + distance, frame_id - distance]
                usable = [o for o in options if 0 <= o < total and not keyframe[o]]
                if usable:
                    replacement = usable[0]
                    break
        moved.append(replacement)
    kept = sorted(set(moved))
    missing = len(ids) - len(kept)
    if missing > 0:
        kept_array = np.asarray(kept)
        spare = np.flatnonzero(~keyframe & ~frame_mask(kept, total))
        if len(spare):
            slot = np.clip(np.searchsorted(kept_array, spare), 1, len(kept_array) - 1) if len(kept_array) > 1 else None
            if slot is None:
                distance = np.abs(spare - kept_array[0])
            else:
                distance = np.minimum(np.abs(spare - kept_array[slot - 1]), np.abs(spare - kept_array[slot]))
            order = np.lexsort((spare, np.abs(spare - total // 2), distance))
            kept = sorted(kept + spare[order[:missing]].tolist())
    missing = len(ids) - len(kept)
    if missing > 0:
        # Too few non-keyframes (a clip shorter than the candidate count): as released, the count is kept by taking
        # keyframes back in frame order. The count matters beyond these frames: it sets the readiness windows.
        unused = np.flatnonzero(~frame_mask(kept, total))
        kept = sorted(kept + unused[:missing].tolist())
    return kept


# -- 2. geometry ----------------------------------------------------------------------------------------------------


def canvas_size(height: int, width: int, factor: int, max_pixels: int) -> tuple[int, int]:
    """Canvas (height, width): multiples of `factor`; the pixel budget is tested on the source area."""
    return smart_resize(height, width, factor, MIN_CANVAS_PIXELS, max_pixels, budget_on_source=True)


# -- 3. scores ------------------------------------------------------------------------------------------------------

CELL = 4  # score cells of 4x4 source pixels = 2x2 half-resolution pixels


def pair_cell_sums(values: np.ndarray) -> np.ndarray:
    """Sums over 2x2 cells by four strided adds (much faster than a reshape-sum on small cells)."""
    height, width = (values.shape[0] // 2) * 2, (values.shape[1] // 2) * 2
    cells = values[0:height:2, 0:width:2] + values[1:height:2, 0:width:2]
    cells += values[0:height:2, 1:width:2]
    cells += values[1:height:2, 1:width:2]
    return cells


def motion_tolerant_difference(current: np.ndarray, previous: np.ndarray, radius: int, cell: int = 2) -> np.ndarray:
    """Per `cell` x `cell`-pixel cell (2 or 1), the smallest sum of |current - shifted previous| over shifts within
    +-radius pixels."""
    padded = np.pad(previous, radius, mode="edge")
    height, width = current.shape
    difference = np.empty_like(current)
    best = None
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            np.subtract(current, padded[dy : dy + height, dx : dx + width], out=difference)
            np.abs(difference, out=difference)
            cells = pair_cell_sums(difference) if cell == 2 else difference
            best = cells.copy() if best is None else np.minimum(best, cells, out=best)
    return best


# Above this many source pixels, framediff compares frames at quarter resolution (a 4x4-pixel cell is one pixel): at
# 4K, half resolution is 2 MP per comparison, which costs more than decoding; quarter resolution of 4K is the half
# resolution of 1080p. Below it, scores are what they always were.
QUARTER_RESOLUTION_ABOVE = 1920 * 1088


@dataclass(frozen=True)
class ScoringScale:
    """The resolution framediff compares frames at: `factor` 2 (half) or 4 (quarter), its size (width, height), and
    the pixels per side of a 4x4-source-pixel score cell there (2 or 1)."""

    factor: int
    width: int
    height: int

    @classmethod
    def for_frame(cls, width: int, height: int) -> ScoringScale:
        factor = 4 if width * height > QUARTER_RESOLUTION_ABOVE else 2
        return cls(factor, max(4, width // factor), max(4, height // factor))

    @property
    def cell(self) -> int:
        return CELL // self.factor

    def radius(self, shift_radius: int) -> int:
        """`shift_radius` is in half-resolution pixels; at this scale, at least the same displacement (0 stays 0)."""
        return -(-shift_radius * 2 // self.factor)


MACROBLOCK_CELLS = 4  # a 16x16-pixel macroblock spans 4x4 score cells
SKIP_BASE_BITS = 64.0  # modeled cost of a macroblock the encoder codes at all (type, prediction, coded-block flags)
# The same in I- and P-frames, where nearly every macroblock is coded. Small, not 0: a still frame's few bits (slice
# headers, skip runs) then buy no macroblock instead of spreading over all of them.
ANCHOR_BASE_BITS = 8.0
BITS_PER_DOUBLING = 32.0  # modeled extra bits each time the residual doubles above the skip threshold


def released_macroblock_layout(cells: np.ndarray) -> np.ndarray:
    """Sum 4x4-pixel cells into 16x16 macroblocks laid out like the released H.264 bit-cost grid: partial macroblocks
    at the bottom and right edges count, and an always-empty column follows the last one (FFmpeg's macroblock stride
    is one wider than the picture). The release stretches that spare column into its score map; reproducing it moves
    our map's registration the same ~1/width and raised block agreement on small frames (176x144, fixed groups of 32
    candidates: 0.31 -> 0.48)."""
    rows, cols = (-(-size // MACROBLOCK_CELLS) for size in cells.shape)
    padded = np.zeros((rows * MACROBLOCK_CELLS, cols * MACROBLOCK_CELLS), dtype=np.float64)
    padded[: cells.shape[0], : cells.shape[1]] = cells
    macroblocks = padded.reshape(rows, MACROBLOCK_CELLS, cols, MACROBLOCK_CELLS).sum(axis=(1, 3))
    return np.pad(macroblocks, ((0, 0), (0, 1)))


CTU_MACROBLOCKS = 4  # a 64x64-pixel coding tree unit (HEVC) or superblock (VP9) spans 4x4 macroblocks
CTU_GRID_CODECS = ("hevc", "vp9")  # where the release's adaptive grid reads bit-costs per 64x64 unit


def released_ctu_layout(macroblock_bits: np.ndarray) -> np.ndarray:
    """Sum macroblock bits (the released H.264 layout, spare column included) into 64x64 units laid out like the
    released HEVC bit-cost grid: partial units at the bottom and right edges count, and there is no spare column."""
    macroblocks = macroblock_bits[:, :-1]
    rows, cols = (-(-size // CTU_MACROBLOCKS) for size in macroblocks.shape)
    padded = np.zeros((rows * CTU_MACROBLOCKS, cols * CTU_MACROBLOCKS), dtype=np.float64)
    padded[: macroblocks.shape[0], : macroblocks.shape[1]] = macroblocks
    return padded.reshape(rows, CTU_MACROBLOCKS, cols, CTU_MACROBLOCKS).sum(axis=(1, 3))


def modeled_bits_map(
    cells: np.ndarray,
    frame_bits: float,
    codec: str,
    skip_bits: float = SKIP_BASE_BITS,
    spans: PictureSpans | None = None,
    rotation: float = 0,
) -> np.ndarray:
    """`framediff` cell residuals -> modeled bits in the grid the release reads for this codec: macroblocks, or for
    HEVC/VP9 the 64x64 units its adaptive grid uses (the skip model decides per macroblock, as coding units are
    mostly that size or smaller; a unit costs what its macroblocks cost). With `spans` (an HEVC picture whose slice
    segments or wavefront rows state their sizes, `hevc_slices_llava_onevision2`), each span's own bits are spent
    over its own macroblocks; `rotation` turns the coded picture's spans as the cells were turned upright."""
    residual = released_macroblock_layout(cells)
    if spans is not None:
        bits = modeled_macroblock_bits_in_spans(residual, spans, rotation, skip_bits)
    else:
        bits = modeled_macroblock_bits(residual, frame_bits, skip_bits)
    return released_ctu_layout(bits) if codec in CTU_GRID_CODECS else bits


def modeled_macroblock_bits_in_spans(
    residual: np.ndarray, spans: PictureSpans, rotation: float, skip_bits: float
) -> np.ndarray:
    """`modeled_macroblock_bits` of the whole picture, each span's share then scaled to the bits the stream states
    for it: the skip decision stays the picture's, the amount per span becomes exact. A span the model left uncoded
    stays uncoded (its few bits are headers and skip flags, as a still frame's are). It raised agreement with the
    released HEVC bit-cost on all four x265 encodes measured; deciding the skip threshold span by span raised it less,
    and spreading an uncoded span's bits evenly lost a quarter of it at 4K (README)."""
    owner = macroblock_spans(residual.shape, spans, rotation)
    whole = modeled_macroblock_bits(residual, float(sum(span[2] for span in spans.spans)), skip_bits)
    bits = np.zeros(residual.shape, dtype=np.float64)
    for number, (_, _, span_bits) in enumerate(spans.spans):
        inside = owner == number
        modeled = float(whole[inside].sum())
        if modeled > 0:
            bits[inside] = whole[inside] * (span_bits / modeled)
    return bits


def macroblock_spans(shape: tuple[int, int], spans: PictureSpans, rotation: float) -> np.ndarray:
    """The span each macroblock of a released-layout grid (upright, spare column last) lies in; -1 for the spare
    column and for CTBs no span covers."""
    rows, cols = shape[0], shape[1] - 1
    quarter_turns = int(round(rotation / 90)) % 4 if rotation else 0
    coded_rows, coded_cols = (cols, rows) if quarter_turns % 2 else (rows, cols)
    shift = spans.ctb_log2 - 4  # macroblocks per CTB side, as a power of two (CTBs are 16 to 64 pixels)
    ctb_rows = np.minimum(np.arange(coded_rows) >> shift, spans.height_ctbs - 1)
    ctb_cols = np.minimum(np.arange(coded_cols) >> shift, spans.width_ctbs - 1)
    span_of_ctb = np.full(spans.width_ctbs * spans.height_ctbs, -1, dtype=np.int64)
    for number, (first, count, _) in enumerate(spans.spans):
        span_of_ctb[first : first + count] = number
    coded = span_of_ctb[ctb_rows[:, None] * spans.width_ctbs + ctb_cols[None, :]]
    owner = np.full(shape, -1, dtype=np.int64)
    owner[:, :cols] = upright(coded, rotation)
    return owner


def modeled_macroblock_bits(residual: np.ndarray, frame_bits: float, skip_bits: float = SKIP_BASE_BITS) -> np.ndarray:
    """Bits an encoder would spend per macroblock, from its motion-compensated residual and the frame's packet bits.

    The released signal is dominated by the encoder's skip decision: half of all macroblocks of a typical B-frame
    cost nothing, and after log1p any coded one scores more than half of the frame's peak. So a macroblock costs 0
    below a threshold and `skip_bits + BITS_PER_DOUBLING * log2(residual / threshold)` above it, with the threshold
    chosen (bisection on log2) so the frame's total equals its packet bits: a frame the encoder coded cheaply skips
    most macroblocks, an expensive one codes most. `skip_bits` is what coding a macroblock at all costs
    (`SKIP_BASE_BITS`; less in frames that code nearly every macroblock, `skip_bits_for`). Without packet bits the
    residual is returned unchanged. On three real clips this raised block agreement with the released bit-cost from
    0.26 to 0.36, and the full skip cost in B-frames only (with P-frames compared with their anchor) to 0.39 (README).
    """
    if not frame_bits > 0:
        return residual
    log_residual = np.log2(np.maximum(residual, 1e-3))
    low, high = float(log_residual.min()) - 1.0, float(log_residual.max()) + 1.0  # total(low) >= bits > total(high)
    for _ in range(40):
        threshold = (low + high) / 2
        coded = log_residual > threshold
        total = (skip_bits + BITS_PER_DOUBLING * (log_residual[coded] - threshold)).sum()
        low, high = (threshold, high) if total > frame_bits else (low, threshold)
    return np.where(log_residual > high, skip_bits + BITS_PER_DOUBLING * (log_residual - high), 0.0)


def forward_predicted(decode_rank: np.ndarray) -> np.ndarray:
    """Which frames (presentation order) no later frame is decoded before: I- and P-pictures, each predicted from
    earlier ones only. A B-picture is decoded after the later anchor it predicts from. Where decoding order is
    presentation order (no B-frames, VP9, AV1) every frame is."""
    later_first = np.minimum.accumulate(decode_rank[::-1])[::-1]  # the earliest decoded from each frame on
    return decode_rank <= later_first


def framediff_references(candidate_ids: list[int], index) -> dict[int, int | None]:
    """The frame `framediff` compares each candidate with: for a P-frame the anchor (I or P) before it, the picture
    the encoder predicted it from (a B-frame between them is decoded later, so it cannot have been used); for a
    B-frame, a keyframe and any frame of a stream without B-frames, the frame before it. None for the first frame.
    On the three real clips re-encoded with x265, comparing P-frames with their anchor instead of the frame before
    raised block agreement with the released HEVC bit-cost (README)."""
    forward = forward_predicted(index.decoding_ranks())
    # the last forward frame before each frame (-1: none)
    last_forward = np.maximum.accumulate(np.where(forward, np.arange(len(forward)), -1))
    references = {}
    for candidate in candidate_ids:
        if candidate == 0:
            references[candidate] = None
        elif forward[candidate] and not index.keyframe[candidate] and last_forward[candidate - 1] >= 0:
            references[candidate] = int(last_forward[candidate - 1])
        else:
            references[candidate] = candidate - 1
    return references


def skip_bits_for(position: int, forward: np.ndarray) -> float:
    """The modeled cost of coding a macroblock at all in this frame. I- and P-frames code nearly every block (the
    released HEVC bit-cost of an x265 P-frame is zero in 6-8% of its units, where a B-frame's is in 18-55%), so their
    cost starts low (`ANCHOR_BASE_BITS`) and rises with the residual; a B-frame's coded block pays `SKIP_BASE_BITS`
    first."""
    return ANCHOR_BASE_BITS if forward[position] else SKIP_BASE_BITS


RESIDUAL_DEAD_ZONE = 16  # |residual| summed over a 4x4 cell below which coding it costs next to nothing
INTRA_PERCENTILE = 90  # an intra macroblock of an inter frame scores like its frame's expensive coded ones


def residual_macroblock_scores(cost: np.ndarray, intra: np.ndarray | None) -> np.ndarray:
    """Per-macroblock scores from the decoder's residual (`codec_residual_llava_onevision2.residual_cells`), laid
    out like the released H.264 bit-cost grid: per 4x4 cell log2(1 + residual beyond a dead zone), summed per
    macroblock. So an uncoded macroblock scores 0, as its released bit-cost does, and a coded one grows with the
    coefficients it needed. Intra macroblocks of inter frames (new content the encoder could not predict) score the
    frame's 90th percentile of coded ones; intra frames (`intra` None) score their texture the same way. On three
    real clips this agrees with the released selection at block IoU 0.52 (README)."""
    cells = np.log2(1.0 + np.maximum(cost.astype(np.float64) - RESIDUAL_DEAD_ZONE, 0.0))
    if intra is None:
        return released_macroblock_layout(cells)
    scores = released_macroblock_layout(np.where(intra, 0.0, cells))
    intra_macroblocks = released_macroblock_layout(intra.astype(np.float64)) > 0
    coded = (scores > 0) & ~intra_macroblocks
    scores[intra_macroblocks] = linear_percentile(scores[coded], INTRA_PERCENTILE) if coded.any() else 1.0
    return scores


def normalised_bits(bits: np.ndarray, percentile: float) -> np.ndarray:
    """Per-block bits (released or modeled) -> the release's per-frame transform: log1p, divided by the frame's
    `percentile`, clipped to [0, 1], float32, on the bits' own grid. `bits` is one frame's grid or a stack of
    equal-shape grids `[F, h, w]`, each normalised by its own percentile (one call for the stack)."""
    logged = np.log1p(np.maximum(np.asarray(bits, dtype=np.float32), 0))
    frames = logged.reshape(-1, *logged.shape[-2:])
    scales = linear_percentile(frames.reshape(len(frames), -1), percentile)
    # as the release: the percentile as a Python float, at least 1e-6, then a float32 divisor
    scales = np.maximum(scales.astype(np.float64), 1e-6).astype(np.float32)
    return np.clip(frames / scales[:, None, None], 0.0, 1.0).astype(np.float32).reshape(logged.shape)


def nearest_source_indices(out_size: int, in_size: int) -> np.ndarray:
    """The source row (or column) of each output one under OpenCV's INTER_NEAREST: floor(i * (1 / (out / in))) in
    double precision."""
    step = 1.0 / (out_size / in_size)
    return np.minimum(np.floor(np.arange(out_size) * step).astype(np.int64), in_size - 1)


# float32 elements of widened rows scored at once: 128 KiB, under glibc's mmap threshold
BLOCK_SCORE_CHUNK_ELEMENTS = 1 << 15


def block_scores(bits: np.ndarray, canvas_hw: tuple[int, int], percentile: float, patch: int, merge: int):
    """A frame's per-block scores, `[Hb * Wb]` float32 in block-raster order: its normalised bits resized to the
    canvas (nearest neighbour), summed over each patch, then over merge x merge patches (`block_score_matrix`)."""
    return block_score_matrix([bits], canvas_hw, percentile, patch, merge)[0]


def block_score_matrix(
    grids: list[np.ndarray], canvas_hw: tuple[int, int], percentile: float, patch: int, merge: int
) -> np.ndarray:
    """`block_scores` of every grid, `[len(grids), Hb * Wb]`; grids of one shape (a stream's usually all are) go
    through numpy together, which spares a few hundred small calls per clip and changes no bit.

    Float32 sums of the same numbers differ in their last bits with the order they are added in, and grouping
    thresholds compare sums of these scores, so they are added in the release's order: the release sums a
    row-major canvas-size map, so each patch row's `patch` columns are summed pairwise (numpy's contiguous
    reduction) and the rows' sums are then added one after another. Rows of the resized map repeat their source
    row, so the column sums are taken once per source row and the canvas-size map is never built."""
    rows_out, cols_out = canvas_hw[0] // patch, canvas_hw[1] // patch
    scores = np.empty((len(grids), (rows_out // merge) * (cols_out // merge)), dtype=np.float32)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, grid in enumerate(grids):
        by_shape.setdefault(np.shape(grid), []).append(index)
    for (height, width), same_shape in by_shape.items():
        rows = nearest_source_indices(canvas_hw[0], height)[: rows_out * patch]
        cols = nearest_source_indices(canvas_hw[1], width)[: cols_out * patch]
        # a few frames at a time: their temporaries stay in the cache and come from the heap, not from fresh mappings
        chunk = max(1, BLOCK_SCORE_CHUNK_ELEMENTS // (height * len(cols) or 1))
        for start in range(0, len(same_shape), chunk):
            indices = same_shape[start : start + chunk]
            scores[indices] = grid_block_scores([grids[i] for i in indices], rows, cols, percentile, patch, merge)
    return scores


def grid_block_scores(grids: list[np.ndarray], rows, cols, percentile: float, patch: int, merge: int) -> np.ndarray:
    """`block_score_matrix` of equal-shape grids, given the canvas's source `rows` and `cols` (from
    `nearest_source_indices`, cut to whole patches)."""
    normalised = normalised_bits(np.stack(grids), percentile)  # [F, h, w]
    frames, height = normalised.shape[:2]
    rows_out, cols_out = len(rows) // patch, len(cols) // patch
    # contiguous: column-indexing leaves a column-major array, whose reduction would run down columns instead
    widened = np.ascontiguousarray(normalised[:, :, cols])
    row_sums = widened.reshape(frames, height, cols_out, patch).sum(axis=3)
    patches = row_sums[:, rows].reshape(frames, rows_out, patch, cols_out).sum(axis=2)
    return np.stack([cell_sums(frame, merge) for frame in patches]).reshape(frames, -1)


LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
LUMA_WEIGHTS_BGR = np.ascontiguousarray(LUMA_WEIGHTS[::-1])  # contiguous: a reversed view takes numpy's slow path


BAD_FRAME_SUBSAMPLE = 61  # every 61st pixel: its channel ranges bound the frame's from below, so most frames skip
# the flat test's full passes
CHANNEL_SUM_ROW = 3 * 512  # bytes per row when channel sums fold the pixels into rows (a multiple of 3)
UINT16_SUM_ROWS = 257  # 257 * 255 = 65,535: summed down at most this many rows, a column of bytes fits in uint16


def channel_sums(pixels: np.ndarray) -> np.ndarray:
    """Exact per-channel sums of `[N, 3]` uint8 pixels. The bytes are folded into rows of CHANNEL_SUM_ROW and summed
    down the rows (vectorised passes; a reduction over N rows of 3 is an order of magnitude slower), UINT16_SUM_ROWS
    rows at a time into uint16 (about twice as fast as into uint32), then each column's total goes to its channel."""
    flat = pixels.reshape(-1)
    whole = len(flat) // CHANNEL_SUM_ROW * CHANNEL_SUM_ROW
    rows = flat[:whole].reshape(-1, CHANNEL_SUM_ROW)
    columns = np.zeros(CHANNEL_SUM_ROW, dtype=np.uint64)
    for start in range(0, len(rows), UINT16_SUM_ROWS):
        columns += rows[start : start + UINT16_SUM_ROWS].sum(axis=0, dtype=np.uint16)
    return columns.reshape(-1, 3).sum(axis=0) + flat[whole:].reshape(-1, 3).sum(0, dtype=np.uint64)


def subsample_may_be_flat(pixels: np.ndarray) -> bool:
    """False when some channel of a pixel subsample already spans more than the flat test allows (a subset's range
    never exceeds the whole's); green first, as it usually decides alone."""
    sample = pixels[::BAD_FRAME_SUBSAMPLE]
    return all(int(sample[:, c].max()) - int(sample[:, c].min()) <= 12 for c in (1, 0, 2))


def is_bad_frame(picture: np.ndarray, bgr: bool = False) -> bool:
    """Black, flat or green-corrupted frames never anchor and offer no blocks (the release's tests). `bgr`: channels
    in BGR order. Every candidate is tested, so each test runs its full passes over the pixels only where cheap exact
    bounds leave it open: the channel means (exact, as the release's float64 means of integers) decide the dark and
    green-cast tests, a subsample's channel ranges rule out flatness, and Markov's inequality on the green mean rules
    out the bright-green test."""
    pixels = picture.reshape(-1, 3)
    red, green, blue = (2, 1, 0) if bgr else (0, 1, 2)
    weights = LUMA_WEIGHTS_BGR if bgr else LUMA_WEIGHTS
    channel_means = channel_sums(pixels) / len(pixels)
    maybe_dark = float(channel_means @ weights) <= 8.5  # margin for float rounding; decided exactly below
    if maybe_dark or subsample_may_be_flat(pixels):
        channels = pixels.astype(np.float32)
        luma = channels @ weights
        luma_mean, luma_std = float(luma.mean()), float(luma.std())
        if luma_mean <= 8 and luma_std <= 6:
            return True
        if luma_std <= 4 and (channels.std(axis=0) <= 4).all() and (np.ptp(channels, axis=0) <= 12).all():
            return True
    green_mean = float(channel_means[green])
    green_plane = picture[..., green]
    if green_mean >= 0.35 * 180 and np.count_nonzero(green_plane >= 180) >= 0.35 * len(pixels):
        green_only = (green_plane >= 180) & (picture[..., red] <= 90) & (picture[..., blue] <= 90)
        if np.count_nonzero(green_only) >= 0.35 * len(pixels):
            return True  # decoder-green blocks over a third of the frame
    # a green cast: the spread only evaluated when the means already say green
    return (
        green_mean > 120
        and green_mean - max(float(channel_means[red]), float(channel_means[blue])) > 80
        and float(green_plane.std()) < 50
    )


# -- 4. grouping ----------------------------------------------------------------------------------------------------


def top_blocks(scores: np.ndarray, frame_offsets: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the `budget` best entries, ties broken by frame offset then block index (deterministic)."""
    order = np.lexsort((np.arange(len(scores)), frame_offsets, -scores))
    return order[:budget]


def readiness(block_matrix: np.ndarray, start: int, end: int, budget: int, bins: int) -> tuple[float, int]:
    """Top-B block sum of frames start+1..end-1 and how many of `bins` time bins those blocks touch."""
    if end - start < 2:
        return 0.0, 0
    candidates = block_matrix[start + 1 : end]
    flat = candidates.reshape(-1)
    take = min(budget, flat.size)
    chosen = np.argpartition(-flat, take - 1)[:take] if take < flat.size else np.arange(flat.size)
    total = float(flat[chosen].sum())
    frames = distinct_small_integers(chosen // candidates.shape[1]) + 1  # relative positions 1..len-1
    return total, len(set(time_bins(frames, end - start, bins)))


def time_bins(positions: np.ndarray, length: int, bins: int) -> list[int]:
    """The coverage bin of each relative position 1..length-1, as released: bin edges are linspace(1, length,
    bins + 1) truncated to integers, each bin [edge, next edge) (widened to one frame when empty), the first bin that
    holds a position wins (-1: none)."""
    low, high = bin_spans(length, bins)
    positions = np.asarray(positions)[:, None]
    inside = (low <= positions) & (positions < high)
    return np.where(inside.any(axis=1), inside.argmax(axis=1), -1).tolist()


@functools.lru_cache(maxsize=256)
def bin_spans(length: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """`time_bins`' bin bounds `[low, high)` for a group of `length` frames (readiness asks for the same few lengths
    hundreds of times per video)."""
    edges = np.linspace(1, max(2, length), bins + 1).astype(np.int32).astype(np.int64)
    low = edges[:-1]
    return low, np.maximum(edges[1:], low + 1)


def readiness_threshold(block_matrix: np.ndarray, config: CodecSamplingConfig, budget: int) -> float:
    """Mean top-B sum over fixed windows of `group_size` candidates (short windows ignored)."""
    shortest = max(4, config.coverage_bins + 1)
    sums = [
        readiness(
            block_matrix, start, min(start + config.group_size, len(block_matrix)), budget, config.coverage_bins
        )[0]
        for start in range(0, len(block_matrix), config.group_size)
        if min(start + config.group_size, len(block_matrix)) - start >= shortest
    ]
    return float(np.mean(sums)) if sums else 0.0


def readiness_groups(block_matrix: np.ndarray, config: CodecSamplingConfig, budget: int) -> list[tuple[int, int, str]]:
    """Split candidates into `(start, end, stop_reason)` groups by readiness (see the module docstring)."""
    count = len(block_matrix)
    smallest = max(4, config.min_group_frames)
    if count < smallest:  # too short for a regular group: one group of everything, never zero canvases
        return [(0, count, "short_video")] if count else []
    threshold = readiness_threshold(block_matrix, config, budget)
    required_coverage = min(config.coverage_bins, config.images_per_group - 1)
    groups, start = [], 0
    while count - start >= smallest:
        end, reason, previous = None, None, None
        last_ready = None
        for candidate_end in range(start + config.min_group_frames, min(start + config.max_group_frames, count) + 1):
            total, covered = readiness(block_matrix, start, candidate_end, budget, config.coverage_bins)
            ready = total >= threshold and covered >= required_coverage
            if ready:
                # as released, the gain is measured against the previous end whether or not that one was ready
                if previous is not None and total < previous * (1 + config.delta_ratio):
                    end, reason = candidate_end, "low_gain"
                    break
                last_ready = candidate_end
            previous = total
        if end is None:
            if last_ready is not None:
                end, reason = last_ready, "max_frames_ready"
            else:
                end = min(start + config.max_group_frames, count)
                reason = "tail_flush" if end == count else "max_frames"
        groups.append((start, end, reason))
        start = end
    return groups


# -- 5/6. selection and packing -----------------------------------------------------------------------------------


def select_group(
    block_matrix: np.ndarray, bad: np.ndarray, start: int, end: int, budget: int, blocks_per_canvas: int
) -> tuple[int | None, list[tuple[int, int]]]:
    """Anchor offset and selected (frame offset, block index) pairs of one group, in whole canvases."""
    frames = [offset for offset in range(start, end) if not bad[offset]]
    if not frames:
        return None, []
    anchor, others = frames[0], frames[1:]
    if not others:
        return anchor, []
    scores = block_matrix[others].reshape(-1)
    offsets = np.repeat(np.asarray(others), block_matrix.shape[1])
    blocks = np.tile(np.arange(block_matrix.shape[1]), len(others))
    # Enough canvases for every block that scored, up to the budget; the last canvas is completed with the next
    # blocks in (score, frame, block) order so that no canvas is partly empty.
    scored = int((scores > 0).sum())
    wanted = min(budget, math.ceil(scored / blocks_per_canvas) * blocks_per_canvas, len(scores))
    wanted = (wanted // blocks_per_canvas) * blocks_per_canvas
    chosen = top_blocks(scores, offsets, wanted)
    selected = sorted(zip(offsets[chosen].tolist(), blocks[chosen].tolist()))
    return anchor, selected


def group_canvas_count(selected: list[tuple[int, int]], blocks_per_canvas: int) -> int:
    """The anchor's canvas and the selected blocks' (`select_group` selects whole canvases)."""
    return 1 + len(selected) // blocks_per_canvas


def pack_group(
    frames: list[np.ndarray],
    frame_ids: list[int],
    anchor: int,
    selected: list[tuple[int, int]],
    blocks_hw: tuple[int, int],
    patch: int,
    merge: int,
    canvases: np.ndarray,
) -> np.ndarray:
    """Fills `canvases` (the group's `group_canvas_count`, anchor first; C-contiguous, so that the block view below
    writes into it) and returns their block-layout positions: slot k of the group's canvases, in canvas-raster
    order of blocks, holds the k-th source block (the anchor's blocks, then the selected ones)."""
    rows, cols = blocks_hw
    per_canvas = rows * cols
    block_px = patch * merge
    offsets = np.array([anchor] * per_canvas + [offset for offset, _ in selected], dtype=np.int64)
    blocks = np.array(list(range(per_canvas)) + [block for _, block in selected], dtype=np.int64)
    count = group_canvas_count(selected, per_canvas)
    # (canvas, slot row, slot col) -> one block of pixels; written through the view, one source frame at a time
    slots = canvases.reshape(count, rows, block_px, cols, block_px, 3).transpose(0, 1, 3, 2, 4, 5)
    canvas_index, slot_in_canvas = np.divmod(np.arange(len(offsets)), per_canvas)
    slot_rows, slot_cols = np.divmod(slot_in_canvas, cols)
    block_rows, block_cols = np.divmod(blocks, cols)
    for offset in distinct_small_integers(offsets):
        mine = offsets == offset
        picture = frames[offset][: rows * block_px, : cols * block_px]
        source = picture.reshape(rows, block_px, cols, block_px, 3).transpose(0, 2, 1, 3, 4)
        slots[canvas_index[mine], slot_rows[mine], slot_cols[mine]] = source[block_rows[mine], block_cols[mine]]
    within_row, within_col = np.divmod(np.arange(merge * merge), merge)  # a block's patches, row by row
    positions = np.empty((len(offsets), merge * merge, 3), dtype=np.int64)
    positions[..., 0] = np.asarray(frame_ids, dtype=np.int64)[offsets][:, None]
    positions[..., 1] = block_rows[:, None] * merge + within_row
    positions[..., 2] = block_cols[:, None] * merge + within_col
    return positions.reshape(-1, 3)


# -- decode pass ----------------------------------------------------------------------------------------------------


def check_deadline(deadline: float, config: CodecSamplingConfig, name: str, stage: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(
            f"Codec sampling of {name} exceeded its timeout of {config.timeout:g} s ({stage}); raise "
            "codec_config['timeout'] (or $ONLINE_CODEC_TIMEOUT), or use video_backend='frames'."
        )


def thread_pool(workers: int):
    """A ThreadPoolExecutor, imported on first use: the released bit-cost path runs no threads, and the import (with
    its logging) is 5 ms of a fresh process that samples one short clip."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers)


SCORING_THREADS = max(1, min(4, os.cpu_count() or 1))  # numpy releases the GIL: threads score in parallel


def wait_for_room(unfinished: deque, limit: int) -> None:
    """A bounded queue in front of a thread pool: `unfinished` holds the jobs in submission order; finished ones are
    dropped from its front, and while `limit` or more remain the oldest is waited for. So the decoder waits for its
    workers where they fall behind, and the pictures queued for them never pile up with the video's length."""
    while unfinished and (unfinished[0].done() or len(unfinished) >= limit):
        unfinished.popleft().result()


def decode_candidates(
    container, index, candidate_ids: list[int], config: CodecSamplingConfig, name: str, progress, deadline: float
):
    """One pass: canvas-size RGB of each candidate and, for `framediff`, its score map (which needs the frame it is
    compared with, `framediff_references`)."""
    if config.score_source == "residual":
        return decode_candidates_with_residual(container, index, candidate_ids, config, name, progress, deadline)
    framediff = config.score_source == "framediff"
    references = framediff_references(candidate_ids, index) if framediff else {}
    forward = forward_predicted(index.decoding_ranks()) if framediff else None
    last_use = {}  # reference position -> the last candidate compared with it
    for candidate, reference in sorted(references.items()):
        if reference is not None:
            last_use[reference] = candidate
    wanted = sorted(set(candidate_ids) | set(last_use))
    candidate_set = set(candidate_ids)
    bit_spans = candidate_bit_spans(container, index, candidate_ids) if framediff else {}
    reformatter = load_av().video.reformatter.VideoReformatter()
    stats = DecodeStats()
    pending, unfinished, geometry, lumas = {}, deque(), None, {}
    with thread_pool(1) as scorer, CanvasConverter() as converter:
        for position, frame in iter_frames(container, index, wanted, name, stats):
            check_deadline(deadline, config, name, f"decoding, {stats.frames_decoded} frames in")
            geometry = geometry or frame_geometry(frame, config)
            scale = geometry[3]
            luma = decode_one(frame, position, geometry, candidate_set, converter, reformatter, config.score_source)
            if luma is not None and position in converter and position not in pending:
                # Scoring runs on a worker thread (numpy releases the GIL) while the decoder moves on. One thread:
                # a second one was 7% faster at 720p and 10% slower at 640x272 and below (more GIL hand-offs).
                wait_for_room(unfinished, FRAMEDIFF_JOBS_QUEUED)
                reference = lumas.get(references[position])  # None where the stream had no frame there
                pending[position] = scorer.submit(
                    framediff_bits,
                    luma,
                    reference if reference is not None and reference.shape == luma.shape else None,
                    scale,
                    config.shift_radius,
                    float(index.packet_bytes[position]) * 8,
                    index.codec,
                    skip_bits_for(position, forward),
                    bit_spans.get(position),
                    geometry[0],
                )
                unfinished.append(pending[position])
            if position in last_use:
                lumas[position] = luma
            for done in [kept for kept in lumas if last_use[kept] <= position]:
                del lumas[done]
            if progress is not None and position in candidate_set:
                progress.update(1)
        cell_maps = {position: future.result() for position, future in pending.items()}
        frames = converter.results()
    return frames, cell_maps, geometry[1] if geometry else None, stats


def framediff_bits(
    luma,
    reference_luma,
    scale: ScoringScale,
    shift_radius: int,
    frame_bits: float,
    codec: str,
    skip_bits: float,
    spans: PictureSpans | None = None,
    rotation: float = 0,
):
    """One candidate's `framediff` map in modeled bits, on the scoring thread (beside the decoder): the motion-tolerant
    difference to the frame it is compared with (`framediff_references`), or its texture when that frame was not
    decoded; `spans`: its bits per span of CTBs where the stream states them (`candidate_bit_spans`)."""
    if reference_luma is None:
        cells = local_contrast(luma, scale.cell)
    else:
        cells = motion_tolerant_difference(luma, reference_luma, scale.radius(shift_radius), scale.cell)
    return modeled_bits_map(cells, frame_bits, codec, skip_bits, spans, rotation)


def candidate_bit_spans(container, index, candidate_ids: list[int]) -> dict[int, PictureSpans]:
    """Each HEVC candidate's bits per span of CTBs (CTB rows under wavefront parallel processing, x265's default, or
    slice segments), where its headers state them, by frame position: one demux pass without decoding, reading the
    candidates' packets and the keyframes' parameter sets. Empty for other codecs."""
    if index.codec != "hevc":
        return {}
    av = load_av()
    stream = container.streams.video[0]
    reader = PictureSpanReader(stream.codec_context.extradata, nal_length_size(stream))
    wanted = {int(index.pts[position]): position for position in candidate_ids}
    found = {}
    try:
        container.seek(int(index.dts.min()) - max(1, int(1 / index.time_base)), stream=stream, backward=True)
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            position = wanted.get(packet.pts)
            if position is not None:
                spans = reader.spans(bytes(packet))
                if spans is not None:
                    found[position] = spans
            elif packet.is_keyframe:
                reader.parameter_sets_in(bytes(packet))
    except av.FFmpegError:
        pass  # a damaged tail: the candidates read so far keep their spans, the rest is modeled per picture
    return found


def decode_run(request: dict):
    """`decode_candidates` for one keyframe-aligned run of candidates, on a container of its own (called by
    `codec_segments_llava_onevision2` in whichever process decodes the run)."""
    container = open_video(request["path"])
    try:
        deadline = time.monotonic() + request["seconds_left"]
        config, index, name, candidates = (
            request["config"],
            request["index"],
            request["name"],
            request["candidate_ids"],
        )
        if config.score_source == "residual":
            threads = request["scoring_threads"]
            return decode_candidates_with_residual(container, index, candidates, config, name, None, deadline, threads)
        return decode_candidates(container, index, candidates, config, name, None, deadline)
    finally:
        container.close()


def decode_candidates_in_segments(source, index, candidate_ids: list[int], config, name: str, deadline: float):
    """`decode_candidates` split over processes for a long video file: `(its result, None)`, `(None, None)` when the
    video is too short to split (or `decode_processes` is 1), or `(None, why)` when a segment failed (the caller then
    decodes in one pass)."""
    if not isinstance(source, (str, os.PathLike)):
        return None, None
    keyframes = [int(i) for i in np.flatnonzero(index.keyframe)]
    processes = segment_processes(config.decode_processes, frames_to_decode(candidate_ids, keyframes))
    shares = plan_segments(candidate_ids, keyframes, processes)
    if len(shares) < 2:
        return None, None
    requests = [
        {
            "path": os.fspath(source),
            "candidate_ids": [i for _, ids in runs for i in ids],  # `iter_frames` skips between them as the runs do
            "config": config,
            "index": index,
            "name": name,
            "seconds_left": max(0.0, deadline - time.monotonic()),
            # the processes share the CPUs: their scoring threads (and the pictures queued for them) are divided
            "scoring_threads": max(1, SCORING_THREADS // len(shares)),
        }
        for runs in shares
    ]
    results, problem = in_segments(f"{__name__}:decode_run", requests, deadline, config, name)
    if results is None:
        return None, problem
    frames, maps, stats = {}, {}, DecodeStats()
    for run_frames, run_maps, _, run_stats in results:
        frames.update(run_frames)
        maps.update(run_maps)
        stats.frames_decoded += run_stats.frames_decoded
        stats.seeks += run_stats.seeks
    canvas_hw = next((hw for _, _, hw, _ in results if hw is not None), None)
    return (frames, maps, canvas_hw, stats), None


FRAMEDIFF_JOBS_QUEUED = 4  # frame pairs waiting for the framediff scoring thread


def decode_candidates_with_residual(
    container,
    index,
    candidate_ids: list[int],
    config: CodecSamplingConfig,
    name: str,
    progress,
    deadline: float,
    scoring_threads: int = SCORING_THREADS,
):
    """One pass for `score_source="residual"`: canvas-size RGB of each candidate and its macroblock scores from the
    decoder's motion vectors and the reference pictures they point at (decoded too, full-resolution luma only).
    A candidate is scored on a worker thread once its last reference is decoded; the decoder runs with the export
    of motion vectors on and the deblocking filter off, so candidates' pictures are unfiltered, like the released
    reader's."""
    stream = container.streams.video[0]
    if stream.codec_context.is_open:  # options set now would be ignored: every frame would score as intra
        raise RuntimeError(f"{name}: the residual signal needs a decoder that has not run yet (open the file anew).")
    stream.codec_context.options = {**stream.codec_context.options, **DECODER_OPTIONS}
    ranks = index.decoding_ranks()
    is_reference = index.reference if index.reference is not None else np.ones(index.num_frames, dtype=bool)
    references = {c: reference_candidates(c, ranks, is_reference) for c in candidate_ids}
    wanted = sorted(set(candidate_ids).union(*(past + future for past, future in references.values())))
    candidate_set, waiting = set(candidate_ids), sorted(candidate_ids)  # scored as their references arrive
    stats = DecodeStats()
    pending, unfinished, lumas, vectors, geometry, rotation = {}, deque(), {}, {}, None, 0
    scorer = ResidualScorer()

    def first_needed(candidate):
        past, _ = references[candidate]
        return min(past, default=candidate)

    def submit_ready(upto: int | None):
        while waiting and (upto is None or max(waiting[0], *references[waiting[0]][1], 0) <= upto):
            # Scoring a 720p frame takes longer than decoding to the next candidate; a queued job holds four pictures,
            # so the decoder waits for the scorer rather than let memory grow with the video's length.
            wait_for_room(unfinished, 2 * scoring_threads)
            candidate = waiting.pop(0)
            past, future = references[candidate]
            keep_from = first_needed(waiting[0]) if waiting else candidate
            if candidate not in lumas:  # the stream had no frame there; the decoder served the next one instead
                continue
            pending[candidate] = worker.submit(
                score_candidate,
                scorer,
                rotation,
                lumas[candidate],
                vectors.pop(candidate, None),
                {p: lumas[p] for p in past if p in lumas},
                {p: lumas[p] for p in future if p in lumas},
                keep_from,
            )
            unfinished.append(pending[candidate])
            for position in [p for p in lumas if p < keep_from]:
                del lumas[position]

    with thread_pool(scoring_threads) as worker, CanvasConverter() as converter:
        # Under frame threads FFmpeg exports wrong vectors for some frames (the pictures are the same run to run, the
        # vectors are not: 7-17 of 120 frames of a real clip differed between two decodes); slice threads do not.
        for position, frame in iter_frames(container, index, wanted, name, stats, thread_type="SLICE"):
            check_deadline(deadline, config, name, f"decoding, {stats.frames_decoded} frames in")
            geometry = geometry or frame_geometry(frame, config)
            rotation = geometry[0]
            decode_one(frame, position, geometry, candidate_set, converter, None, config.score_source)
            lumas[position] = full_resolution_luma(frame)
            if position in references and position not in vectors:
                vectors[position] = motion_vectors(frame)
            submit_ready(position)
            if progress is not None and position in references:
                progress.update(1)
        submit_ready(None)
        frames = converter.results()
        maps = {c: job.result() for c, job in pending.items() if c in frames}
    return frames, maps, geometry[1] if geometry else None, stats


def score_candidate(scorer: ResidualScorer, rotation: float, *frame_and_references) -> np.ndarray:
    """One candidate's upright macroblock scores (run on the scoring thread, so only the small map is kept)."""
    return upright(residual_macroblock_scores(*scorer.score(*frame_and_references)), rotation)


def full_resolution_luma(frame) -> np.ndarray:
    """The decoded picture's luma, `uint8 [H, W]` in coded orientation (a gray conversion for non-YUV formats)."""
    if frame.format.name in PLANAR_YUV:
        plane = frame.planes[0]
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
        return rows[: frame.height, : frame.width].copy()
    return frame.to_ndarray(format="gray")


def motion_vectors(frame):
    """The decoder's exported motion vectors of one frame as a structured array, or None (intra frames)."""
    side_data = frame.side_data.get("MOTION_VECTORS")
    return side_data.to_ndarray().copy() if side_data is not None else None  # a view dies with the frame


def frame_geometry(frame, config: CodecSamplingConfig):
    """(rotation, canvas size upright, canvas size as coded, framediff's `ScoringScale`) from the first frame."""
    return geometry_of(frame.rotation or 0, frame.width, frame.height, config)


def geometry_of(rotation: float, width: int, height: int, config: CodecSamplingConfig):
    """`frame_geometry` from a coded picture size and the rotation that turns it upright."""
    display_h, display_w = (width, height) if rotation % 180 else (height, width)
    canvas_hw = canvas_size(display_h, display_w, config.patch * config.merge, config.max_pixels)
    coded_canvas = canvas_hw if not rotation % 180 else canvas_hw[::-1]
    return rotation, canvas_hw, coded_canvas, ScoringScale.for_frame(width, height)


PLANAR_YUV = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12"}


def scoring_luma(frame, scale: ScoringScale, reformatter) -> np.ndarray:
    """int16 luma at the scoring scale, as sums over the source pixels each value covers: at half resolution 2x2
    sums of the decoded Y plane when the frame has one (no colour conversion, exact integers); otherwise (quarter
    resolution, or no Y plane) FFmpeg's area-averaging scaler times the pixels averaged, several times faster than
    summing a 4K plane in numpy. Only relative values matter downstream."""
    if scale.factor == 2 and frame.format.name in PLANAR_YUV:
        plane = frame.planes[0]
        y = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
        return pair_cell_sums(y[: scale.height * 2, : scale.width * 2].astype(np.int16))
    gray = reformatter.reformat(frame, width=scale.width, height=scale.height, format="gray", interpolation="AREA")
    return gray.to_ndarray().astype(np.int16) * scale.factor**2


def decode_one(frame, position, geometry, candidate_set, converter, reformatter, score_source):
    """Queue a candidate's canvas-size RGB; return the frame's luma at the scoring scale when scores need it."""
    rotation, _, _, scale = geometry
    luma = None
    if score_source == "framediff":
        luma = upright(scoring_luma(frame, scale, reformatter), rotation)
    if position in candidate_set and position not in converter:
        converter.submit(position, frame, geometry)
    return luma


CONVERSIONS_QUEUED = 4  # decoded pictures waiting for their RGB conversion


class CanvasConverter:
    """Candidates' canvas-size RGB, converted on a worker thread while the decoder moves on (FFmpeg's scaler runs
    without the GIL; on the 2-core machine this took 0.2-0.5 s off the decoding thread of a 5 s 720p clip). At most
    CONVERSIONS_QUEUED decoded pictures wait, so memory does not grow with the video's length."""

    def __init__(self):
        self.worker = thread_pool(1)
        self.reformatter = load_av().video.reformatter.VideoReformatter()  # used by the worker thread only
        self.jobs, self.unfinished = {}, deque()

    def __contains__(self, position: int) -> bool:
        return position in self.jobs

    def submit(self, position: int, frame, geometry) -> None:
        wait_for_room(self.unfinished, CONVERSIONS_QUEUED)
        rotation, _, coded_canvas, _ = geometry
        self.jobs[position] = self.worker.submit(self.canvas_rgb, frame, coded_canvas, rotation)
        self.unfinished.append(self.jobs[position])

    def canvas_rgb(self, frame, coded_canvas: tuple[int, int], rotation: float) -> np.ndarray:
        rgb = self.reformatter.reformat(
            frame, width=coded_canvas[1], height=coded_canvas[0], format="rgb24", interpolation="AREA"
        )
        return upright(rgb.to_ndarray(), rotation)

    def results(self) -> dict[int, np.ndarray]:
        return {position: job.result() for position, job in self.jobs.items()}

    def __enter__(self) -> CanvasConverter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.worker.shutdown(wait=True, cancel_futures=True)


def released_reader_pass(
    source, index, candidate_ids: list[int], config: CodecSamplingConfig, geometry, name: str, deadline: float
):
    """The released patched decoder (codec-video-prep) read once over what the candidates need: each candidate's
    canvas-size RGB and per-block bit counts together, as the release's own default backend reads them (it skips the
    deblocking filter, so these pixels are the release's, not a fully filtered decode).

    The release reads from the first frame to the last candidate. Bits are counted per frame by the entropy decoder
    and pictures of a GOP depend on nothing before its keyframe, so here the reader starts again at a later keyframe
    wherever that skips frames no candidate needs (GOPs without candidates, GOP tails after the last one), and a long
    video's runs are shared among several processes (`codec_segments_llava_onevision2`). Bits and pictures are those of
    one pass from the start; that pass can also leave a B-frame candidate without bits (which ones depends on the list
    of frames asked for), the shorter runs here did not. Where the reader's numbering of a read from a keyframe cannot
    be matched to our frames (`reader_frame_numbers`: MPEG-TS/PS, variable frame rate), it reads once from the first
    frame, as the release does. Returns (frames, bit maps, frames decoded, problem, notes):
    `problem` says why the pass cannot be trusted (its frame numbering disagrees with our index), else None; `notes`
    report runs that fell back to one pass from the start."""
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"{name}: score_source='bitcost' reads a file path (the patched decoder opens it itself).")
    grid = config.bitcost_grid
    if grid == "adaptive":
        grid = "ctu" if index.codec in ("hevc", "vp9") else "mb"
    key = {"mb": "mb_bit_cost", "sub": "sub_mb_bit_cost", "ctu": "ctu_bit_cost"}[grid]
    rotation, _, coded_canvas, _ = geometry
    keyframes = [int(i) for i in np.flatnonzero(index.keyframe)]
    options = {
        "export_bitcost": 1,
        "thread_type": "slice",
        "export_pixels": 1,
        "out_w": coded_canvas[1],
        "out_h": coded_canvas[0],
    }
    by_id, notes = None, []
    numbers = reader_frame_numbers(index)
    if numbers is not None:
        by_id, frames_decoded, problem = read_from_keyframes(
            source, candidate_ids, keyframes, numbers, options, key, config, name, deadline
        )
        if problem:
            check_deadline(deadline, config, name, "reading bit-costs")
            notes.append(
                f"the bit-cost read from keyframes fell back to one process reading from the start: {problem}"
            )
    if by_id is None:
        last = max(candidate_ids)
        wanted = sorted(set(candidate_ids) | {k for k in keyframes if k <= last})
        try:
            items = bitcost_reader().read_video_fast_selected(os.fspath(source), wanted, **options)
        except (OSError, RuntimeError, ValueError) as error:
            raise ValueError(f"Bit-cost reading failed for {name}: {error}") from error
        by_id = {int(item["frame_idx"]): item for item in items}  # this pass counts frames, as our index does
        frames_decoded = last + 1
        problem = misplaced_keyframes(by_id, keyframes, name)
        if problem:
            return {}, {}, 0, problem, notes
    problem = misread_size(by_id, index, name)
    if problem:
        return {}, {}, 0, problem, notes
    candidates = set(candidate_ids)
    frames, maps = {}, {}
    for frame_id, item in by_id.items():
        if frame_id not in candidates:
            continue
        pixels = item.get("pixels")
        if pixels is not None and pixels.shape[:2] == tuple(coded_canvas):
            frames[frame_id] = upright(pixels, rotation)  # kept BGR: only the packed canvases are turned to RGB
        bitcost = item.get("bitcost") or {}
        if key in bitcost:
            # the decoder's grid is in coded orientation; turned like the pictures, so each block scores its own pixels
            maps[frame_id] = upright(np.asarray(bitcost[key], dtype=np.float64), rotation)
    return frames, maps, frames_decoded, None, notes


# Demuxers that seek by decoding timestamps. On these the released reader's read from a keyframe returned no frame at
# all where B-frames delay presentation (the street clip remuxed to MPEG-TS), so it reads once from the first frame.
DTS_SEEKING_FORMATS = {"mpegts", "mpeg"}


def reader_frame_numbers(index) -> np.ndarray | None:
    """The number the released reader gives each of our frames when it reads from a keyframe: the frame's presentation
    time times the stream's average frame rate, rounded to the nearest (its read from the first frame counts frames
    instead, as our index does). The two differ where timestamps do not start at 0 (fragmented MP4, cuts).
    None where the reader is read from the first frame instead: where two frames would share a number (variable frame
    rate), as a run's frames could not be told apart, and in MPEG-TS/PS files (`DTS_SEEKING_FORMATS`)."""
    if DTS_SEEKING_FORMATS & set(index.container_format.split(",")):
        return None
    if not index.average_rate or len(index.pts) == 0:
        return None
    numbers = np.floor(index.pts.astype(np.float64) * float(index.time_base) * index.average_rate + 0.5)
    return numbers.astype(np.int64) if np.all(np.diff(numbers) > 0) else None


def read_from_keyframes(source, candidate_ids, keyframes, numbers, options, key, config, name: str, deadline: float):
    """The released reader over runs from keyframes (`plan_segments`), shared among processes for a long video.
    Requests carry the reader's frame numbers (`numbers`), results are keyed by ours. Returns (items by frame id,
    frames decoded, None), or (None, 0, why) when the runs cannot be trusted."""
    processes = segment_processes(config.decode_processes, frames_to_decode(candidate_ids, keyframes))
    requests = [
        {
            "path": os.fspath(source),
            # The keyframes a run passes ride along: the reader numbers frames itself, and its I frames must land
            # where our keyframes are for its pictures and bits to be the candidates'.
            "runs": [
                (int(numbers[first]), numbers[with_keyframes(ids, first, keyframes)].tolist()) for first, ids in runs
            ],
            "options": options,
            "pixel_ids": numbers[[i for _, ids in runs for i in ids]].tolist(),
            "bitcost_key": key,
        }
        for runs in plan_segments(candidate_ids, keyframes, processes)
    ]
    items, problem = in_segments(f"{__name__}:read_released_run", requests, deadline, config, name)
    if items is not None:
        problem = next(filter(None, (left_out_frame(r, run) for r, run in zip(requests, items))), None)
    if problem:
        return None, 0, problem
    ours = {int(number): frame for frame, number in enumerate(numbers)}
    by_id = {ours[int(item["frame_idx"])]: item for share in items for run in share for item in run}
    problem = misplaced_keyframes(by_id, keyframes, name)
    if problem:
        return None, 0, problem
    return by_id, sum(ids[-1] - first + 1 for request in requests for first, ids in request["runs"]), None


def with_keyframes(ids: list[int], first: int, keyframes: list[int]) -> list[int]:
    """A run's wanted ids and the keyframes it decodes through."""
    return sorted(set(ids) | {k for k in keyframes if first <= k <= ids[-1]})


def misread_size(by_id: dict, index, name: str) -> str | None:
    """Why the reader's pictures cannot be the index's frames (their decoded size differs), or None."""
    sizes = {(item["width"], item["height"]) for item in by_id.values() if "width" in item and "height" in item}
    if sizes <= {(index.width, index.height)}:
        return None
    width, height = sorted(sizes - {(index.width, index.height)})[0]
    return (
        f"{name}: the released bit-cost reader decodes {width}x{height} pictures where the stream index has "
        f"{index.width}x{index.height}"
    )


def misplaced_keyframes(by_id: dict, keyframes: list[int], name: str) -> str | None:
    """Why the reader's frame numbering disagrees with the stream index (one of our keyframes is not its I frame), or
    None when it agrees."""
    misplaced = [k for k in keyframes if k in by_id and by_id[k].get("pict_type") != "I"]
    if not misplaced:
        return None
    return (
        f"{name}: the released bit-cost reader numbers frames differently from the stream index (our keyframe "
        f"{misplaced[0]} is its {by_id[misplaced[0]].get('pict_type')!r} frame)"
    )


def read_released_run(request: dict) -> list[list[dict]]:
    """The released reader over one process's runs (`codec_segments_llava_onevision2` calls it in whichever process
    decodes them), each from its keyframe up to its last frame, trimmed: pictures only for candidates, and only the
    bit-cost grid in use (a keyframe that rides along to check numbering needs its picture type, not its picture).
    Returns each run's items."""
    read_from_keyframe = bitcost_reader().read_video_fast_selected_segment
    pixel_ids, key = set(request["pixel_ids"]), request["bitcost_key"]
    results = []
    for first, frame_ids in request["runs"]:
        items = read_from_keyframe(request["path"], frame_ids, first, frame_ids[-1] + 1, **request["options"])
        kept, wanted = [], set(frame_ids)
        for item in items:
            frame_id = int(item["frame_idx"])
            if frame_id not in wanted:
                continue
            item = dict(item)
            if frame_id not in pixel_ids:
                item.pop("pixels", None)
            bitcost = item.get("bitcost") or {}
            item["bitcost"] = {key: bitcost[key]} if key in bitcost else {}
            kept.append(item)
        results.append(kept)
    return results


def left_out_frame(request: dict, run_items: list[list[dict]]) -> str | None:
    """Which frame a run asked for and did not get back, or None."""
    for (first, frame_ids), items in zip(request["runs"], run_items):
        missing = set(frame_ids) - {int(item["frame_idx"]) for item in items}
        if missing:
            return f"the run from frame {first} left out frame {min(missing)}"
    return None


def in_segments(target: str, requests: list[dict], deadline: float, config: CodecSamplingConfig, name: str):
    """`run_segments` within the sampling deadline: `(results, None)`, or `(None, why)` when a segment failed (the
    caller falls back to one pass)."""
    try:
        return run_segments(target, requests, max(0.0, deadline - time.monotonic()))
    except SegmentsTimedOut:
        check_deadline(deadline, config, name, "decoding in segments")
        raise
    except (OSError, RuntimeError, ValueError, EOFError) as error:
        return None, f"{type(error).__name__}: {error}"


def first_frame_geometry(container, index, config: CodecSamplingConfig, name: str):
    """Canvas geometry from the stream's first frame (one decoded frame: rotation lives on frames)."""
    _, frame = next(iter_frames(container, index, [0], name))
    return frame_geometry(frame, config)


class SampledVideo:
    """One video as the sampler reads it: PyAV's container, opened on first use. Where the released reader will
    score a plain MP4/MOV file, its index and geometry come from the file's sample tables (`read_mp4_video`), so a
    fresh process neither imports PyAV nor demuxes every packet; PyAV takes over wherever it is needed (the stock
    signals, a fallback, candidates the reader left without pictures)."""

    def __init__(self, source, name: str, sample_tables: bool):
        self.source, self.name = source, name
        self.tables = read_mp4_video(source) if sample_tables else None
        self._container, self._index = None, None

    @property
    def container(self):
        if self._container is None:
            self._container = open_video(self.source)
        return self._container

    @property
    def codec(self) -> str:
        return self.tables.index.codec if self.tables else self.container.streams.video[0].codec_context.name

    def index(self):
        """The sample tables' index where read, else PyAV's."""
        return self.tables.index if self.tables else self.demuxed_index()

    def demuxed_index(self):
        """PyAV's index (packet sizes from the slices, reference flags), which the stock signals and seeks use."""
        if self._index is None:
            self._index = index_video_stream(self.container, self.name)
        return self._index

    def decoder_facts(self) -> tuple[str | None, int]:
        """(pixel format, pixels per frame) of the stream's decoder."""
        decoder = self.container.streams.video[0].codec_context
        return decoder.pix_fmt, decoder.width * decoder.height

    def geometry(self, config: CodecSamplingConfig):
        if self.tables:
            index = self.tables.index
            return geometry_of(self.tables.rotation, index.width, index.height, config)
        return first_frame_geometry(self.container, self.demuxed_index(), config, self.name)

    def reopen(self) -> None:
        """A fresh container (the residual's decoder options apply to a decoder not yet opened)."""
        self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


# -- entry point ----------------------------------------------------------------------------------------------------


def file_identity(source) -> str | None:
    """SHA-256 of a file's bytes (or of in-memory bytes); None for streams that cannot be re-read."""
    import hashlib  # the cache's imports (here and below) wait for a cache: 7 ms of a fresh process without one

    digest = hashlib.sha256()
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(bytes(source))
        return digest.hexdigest()
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        with open(source, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        return digest.hexdigest()
    return None


def cache_path(source, config: CodecSamplingConfig) -> str | None:
    if not config.cache_root:
        return None
    identity = file_identity(source)
    if identity is None:
        return None
    import hashlib
    import json

    key = hashlib.sha256(
        json.dumps(
            {"file": identity, "settings": config.settings(), "version": CACHE_FORMAT_VERSION}, sort_keys=True
        ).encode()
    ).hexdigest()[:32]
    return os.path.join(config.cache_root, f"codec-{key}.npz")


def load_cached(path: str) -> CodecSample | None:
    if not os.path.exists(path):
        return None
    import json

    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return CodecSample(
            canvases=data["canvases"],
            positions=data["positions"],
            fps=meta["fps"],
            candidate_ids=meta["candidate_ids"],
            candidate_times=meta["candidate_times"],
            groups=meta["groups"],
            report={**meta["report"], "cache": "hit"},
        )


def store_cached(path: str, sample: CodecSample) -> None:
    import json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = {
        "fps": sample.fps,
        "candidate_ids": sample.candidate_ids,
        "candidate_times": sample.candidate_times,
        "groups": sample.groups,
        "report": sample.report,
    }
    temporary = f"{path}.{os.getpid()}.tmp.npz"
    np.savez_compressed(temporary, canvases=sample.canvases, positions=sample.positions, meta=json.dumps(meta))
    os.replace(temporary, path)


def resolve_score_source(config: CodecSamplingConfig, source, codec: str) -> CodecSamplingConfig:
    """Whether `score_source="auto"` reads the released bit-cost, decided before the cache lookup so the cache key
    names it: when codec-video-prep is installed, the video is a file path (the patched decoder opens files itself)
    and its `codec` is H.264 or HEVC. Otherwise "auto" stays and becomes a stock signal once the stream is indexed
    (`stock_score_source`); that choice follows from the file's bytes, which the key already holds."""
    if config.score_source != "auto":
        return config
    readable = bitcost_reader() is not None and isinstance(source, (str, os.PathLike))
    return with_signal(config, "bitcost") if readable and codec in BITCOST_CODECS else config


def with_signal(config: CodecSamplingConfig, signal: str) -> CodecSamplingConfig:
    """`config` resolved to one signal; the other signals' settings (conditional under "auto") go back to defaults."""
    unused = {
        name: next(f.default for f in fields(config) if f.name == name)
        for name, signals in CodecSamplingConfig.SIGNAL_SETTINGS.items()
        if signal not in signals
    }
    return replace(config, score_source=signal, **unused)


# "auto" rebuilds predictions (`residual`) up to this many pixels per frame: its numpy work grows with the pixels, to
# 17.4 s and 1.3 GB for 10 s of 4K on two cores (framediff: 3.8 s, 0.4 GB; the released tool: 5.2-5.4 s, 0.8 GB).
RESIDUAL_AUTO_MAX_PIXELS = 1920 * 1088


def stock_score_source(config: CodecSamplingConfig, codec: str, pixel_format: str | None, name: str, pixels: int):
    """Signal for a stream the released reader does not score: under "auto" the decoder's residual for 8-bit H.264
    frames of up to RESIDUAL_AUTO_MAX_PIXELS, and frame differences otherwise; an explicit "residual" the stream
    cannot give is an error (at any size, an explicit "residual" is honoured)."""
    residual_ready = codec in RESIDUAL_CODECS and pixel_format in PLANAR_YUV  # exact 8-bit samples to subtract
    if config.score_source == "auto":
        affordable = pixels <= RESIDUAL_AUTO_MAX_PIXELS
        return with_signal(config, "residual" if residual_ready and affordable else "framediff")
    if config.score_source == "residual" and not residual_ready:
        raise ValueError(
            f"{name}: score_source='residual' rebuilds the decoder's prediction from its motion vectors, which stock "
            f"FFmpeg exports for 8-bit {', '.join(RESIDUAL_CODECS)} only; this video is {codec} ({pixel_format}). "
            "Use score_source='framediff' (any codec) or 'auto'."
        )
    return config


def sample_codec_video(
    source, config: CodecSamplingConfig | None = None, keep_candidates: bool = False
) -> CodecSample:
    """Run the codec-aligned selection on one video (a path, bytes or a binary file object)."""
    config = config or CodecSamplingConfig()
    sample_tables = config.score_source in ("auto", "bitcost") and bitcost_reader() is not None
    try:
        return sample_video(source, config, keep_candidates, sample_tables=sample_tables)
    except SampleTablesDisagree:
        return sample_video(source, config, keep_candidates, sample_tables=False)


class SampleTablesDisagree(Exception):
    """The released reader's pictures or numbering disagree with an index read from the sample tables: the sample
    is taken again with PyAV's index and first frame, as it would be without the tables."""


def sample_video(source, config: CodecSamplingConfig, keep_candidates: bool, sample_tables: bool) -> CodecSample:
    requested = config.score_source
    name = describe_source(source)
    video = SampledVideo(source, name, sample_tables and isinstance(source, (str, os.PathLike)))
    try:
        # the codec in the header decides the signal (and the cache key)
        config = resolve_score_source(config, source, video.codec)
        deadline = time.monotonic() + config.timeout
        path = None if keep_candidates else cache_path(source, config)
        if path is not None and (cached := load_cached(path)) is not None:
            return cached
        index = video.index() if config.score_source == "bitcost" else video.demuxed_index()
        check_complete(index, name, config.allow_truncated)
        if config.score_source != "bitcost":
            pixel_format, pixels = video.decoder_facts()
            config = stock_score_source(config, index.codec, pixel_format, name, pixels)
        candidate_ids = uniform_candidate_ids(index.timestamps, config.num_candidates)
        warnings = []
        if config.avoid_keyframes:
            if index.keyframe.all():
                warnings.append("all frames are keyframes (intra-only stream); candidates kept where they were")
            else:
                candidate_ids = move_off_keyframes(candidate_ids, index.keyframe)
        frames, cell_maps, canvas_hw, stats = {}, {}, None, DecodeStats()
        if config.score_source == "bitcost":
            check_deadline(deadline, config, name, "before reading bit-costs")
            geometry = video.geometry(config)
            frames, cell_maps, stats.frames_decoded, problem, notes = released_reader_pass(
                source, index, candidate_ids, config, geometry, name, deadline
            )
            if problem and video.tables:
                raise SampleTablesDisagree(problem)
            warnings.extend(notes)
            canvas_hw = geometry[1]
            if problem and requested == "bitcost":
                raise ValueError(f"{problem}; score_source='auto' would fall back to a stock signal.")
            if problem:
                pixel_format, pixels = video.decoder_facts()
                config = stock_score_source(
                    replace(config, score_source="auto"), index.codec, pixel_format, name, pixels
                )
                warnings.append(f"{problem}; scored with {config.score_source} instead")
                if config.score_source == "residual":
                    video.reopen()
        undecoded = [i for i in candidate_ids if i not in frames]
        if undecoded:
            index = video.demuxed_index()  # seeks and the stock signals need PyAV's packets
            progress = None
            show = config.progress if config.progress is not None else index.duration > 300
            if show:
                from tqdm.auto import tqdm

                progress = tqdm(total=len(undecoded), desc=f"codec sampling {name}", unit="frame", leave=False)
            try:
                split, problem = decode_candidates_in_segments(source, index, undecoded, config, name, deadline)
                if problem:
                    warnings.append(f"decoding in segments fell back to one process: {problem}")
                decoded, decoded_maps, canvas_hw, decode_stats = split or decode_candidates(
                    video.container, index, undecoded, config, name, progress, deadline
                )
            finally:
                if progress is not None:
                    progress.close()
            if config.score_source == "bitcost":  # the reader's pictures are BGR; these few join them
                decoded = {i: np.ascontiguousarray(frame[..., ::-1]) for i, frame in decoded.items()}
            frames.update(decoded)
            cell_maps.update(decoded_maps)
            stats.frames_decoded += decode_stats.frames_decoded
            stats.seeks += decode_stats.seeks
    finally:
        video.close()
    missing = [i for i in candidate_ids if i not in cell_maps]
    if config.score_source == "bitcost" and missing:
        # Never borrow another frame's scores: these frames can anchor a group but offer no collage blocks.
        warnings.append(f"no bit-cost for {len(missing)} candidate frames; they contribute no collage blocks")
    bgr = config.score_source == "bitcost"
    sample = select_and_pack(frames, cell_maps, canvas_hw, index, config, warnings, stats, name, keep_candidates, bgr)
    if path is not None:
        store_cached(path, sample)
    return sample


def swap_red_blue(pictures: np.ndarray) -> np.ndarray:
    """`[N, H, W, 3]` BGR <-> RGB in place, one plane of one picture at a time (a reversed-axis copy is several times
    slower and holds twice; a plane of all the pictures at once would need a buffer of its own, a third of them)."""
    for picture in pictures:
        blue = picture[..., 0].copy()
        picture[..., 0] = picture[..., 2]
        picture[..., 2] = blue
    return pictures


def stack_frames(frames: list[np.ndarray]) -> np.ndarray:
    """One array of the frames, emptying the list as it goes: each frame is held once, never twice, at the peak."""
    stack = np.empty((len(frames), *frames[0].shape), dtype=frames[0].dtype)
    for slot in range(len(frames)):
        stack[slot] = frames[slot]
        frames[slot] = None
    return stack


def select_and_pack(
    frames, cell_maps, canvas_hw, index, config, warnings, stats, name, keep_candidates, bgr=False
) -> CodecSample:
    """Scores -> groups -> selection -> canvases. `bgr`: the frames hold BGR pictures (the released reader's);
    only what is returned is turned to RGB, which spares a strided copy of every candidate."""
    candidate_ids = sorted(frames)
    candidate_frames = [frames.pop(i) for i in candidate_ids]  # a list: stacking would copy every candidate
    block_px = config.patch * config.merge
    blocks_hw = (canvas_hw[0] // block_px, canvas_hw[1] // block_px)
    blocks_per_canvas = blocks_hw[0] * blocks_hw[1]
    if config.score_source == "framediff" and not index.packet_bytes.any():
        warnings.append("the stream reports no packet sizes; score maps are not scaled to frame bits")
    block_matrix = np.zeros((len(candidate_ids), blocks_per_canvas), dtype=np.float32)
    scored = [row for row, i in enumerate(candidate_ids) if i in cell_maps]
    if scored:
        block_matrix[scored] = block_score_matrix(
            [cell_maps[candidate_ids[row]] for row in scored],
            canvas_hw,
            config.score_percentile,
            config.patch,
            config.merge,
        )
    bad = np.array([is_bad_frame(frame, bgr) for frame in candidate_frames])
    budget = (config.images_per_group - 1) * blocks_per_canvas
    chosen = []  # (start, end, stop reason, anchor, selected) of each group with a usable frame
    for start, end, reason in readiness_groups(block_matrix, config, budget):
        anchor, selected = select_group(block_matrix, bad, start, end, budget, blocks_per_canvas)
        if anchor is None:
            warnings.append(f"group of frames {candidate_ids[start]}..{candidate_ids[end - 1]} has no usable frame")
        else:
            chosen.append((start, end, reason, anchor, selected))
    if not chosen:
        raise ValueError(
            f"Video {name}: no usable frames for codec sampling (all candidate frames are black or flat)."
        )
    counts = [group_canvas_count(selected, blocks_per_canvas) for *_, selected in chosen]
    # one array, each group packed into its slice: per-group arrays joined afterwards would map and copy them twice
    canvases = np.empty((sum(counts), blocks_hw[0] * block_px, blocks_hw[1] * block_px, 3), dtype=np.uint8)
    positions, groups, selections = [], [], []
    for (start, end, reason, anchor, selected), first, count in zip(
        chosen, itertools.accumulate([0, *counts]), counts
    ):
        group_canvases = canvases[first : first + count]
        positions.append(
            pack_group(
                candidate_frames,
                candidate_ids,
                anchor,
                selected,
                blocks_hw,
                config.patch,
                config.merge,
                group_canvases,
            )
        )
        selections.append([(candidate_ids[o], *divmod(b, blocks_hw[1])) for o, b in selected])
        groups.append(
            {
                "first_frame": candidate_ids[start],
                "last_frame": candidate_ids[end - 1],
                "anchor_frame": candidate_ids[anchor],
                "canvases": count,
                "selected_blocks": len(selected),
                "stop_reason": reason,
            }
        )
    kept_frames = stack_frames(candidate_frames) if keep_candidates else None
    if kept_frames is not None and bgr:
        swap_red_blue(kept_frames)
    report = {
        "source": name,
        "score_source": config.score_source,
        "codec": index.codec,
        "frames_decoded": stats.frames_decoded,
        "seeks": stats.seeks,
        "total_frames": index.num_frames,
        "duration": index.duration,
        "patch": config.patch,
        "merge": config.merge,
        "warnings": warnings,
        "cache": "miss" if config.cache_root else "off",
    }
    return CodecSample(
        canvases=swap_red_blue(canvases) if bgr else canvases,
        positions=np.concatenate(positions),
        fps=index.fps,
        candidate_ids=candidate_ids,
        candidate_times=[round(float(index.timestamps[i]), 6) for i in candidate_ids],
        groups=groups,
        report=report,
        candidate_frames=kept_frames,
        selected=selections if keep_candidates else None,
    )


__all__ = [
    "CodecSample",
    "CodecSamplingConfig",
    "canvas_size",
    "move_off_keyframes",
    "readiness_groups",
    "sample_codec_video",
    "uniform_candidate_ids",
]
