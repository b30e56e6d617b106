"""Video samplers of LLaVA-OneVision-2: how one video becomes model inputs and prompt text.

A sampler turns one video into a `SampledVideo`: pixel rows, grid rows and (t, h, w) positions, the prompt runs (one
`<t seconds><|vision_start|>` + placeholder x k + `<|vision_end|>` block per run, then `run_end`), which placeholder
those runs repeat (`fills`, which also names the output keys that hold the rows), and the video's metadata. The
video processor concatenates items under their keys; the multimodal processor writes each video's prompt from its
runs. Neither knows any particular sampler.

Built in:
- `FramesSampler` (`video_backend="frames"`): frames sampled evenly in time, resized to one size; `video_format`
  sets their layout ("evaluated": a grid row per frame, blocks back to back; "training": one multi-frame row, a
  newline after each block).
- `CodecSampler` (`video_backend="codec"`): codec-aligned anchor + collage canvases (`codec_sampling_llava_onevision2`)
  in one merged grid row, written as image runs, each ending with a newline, as the release does.

A new backend is a subclass in its own file plus one registration line,
`LlavaOnevision2VideoProcessor.register_video_sampler(MySampler)`; `tests/test_video_processing.py` adds a keyframes-only
sampler that way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from transformers.image_utils import SizeDict
from transformers.video_utils import VideoMetadata

from .codec_sampling_llava_onevision2 import CodecSamplingConfig, sample_codec_video
from .video_decoding_llava_onevision2 import DecodedClip, FrameStore, is_decoded, load_clip
from .vision_layout_llava_onevision2 import (
    VisualItem,
    block_layout_positions,
    merged_token_count,
    patchify,
    smart_resize,
)

VIDEO_FORMATS = ("evaluated", "training")


@dataclass
class LlavaOnevision2VideoMetadata(VideoMetadata):
    """`VideoMetadata` plus what the prompt and the model need: exact per-frame times and the grid layout."""

    frame_timestamps: list[float] | None = None
    grid_rows: int = 1
    video_format: str | None = "evaluated"  # the frames' layout; None for samplers with a fixed one (codec)
    codec_report: dict | None = None
    codec: str | None = None
    source: str | None = None

    @property
    def timestamps(self) -> list[float]:
        if self.frame_timestamps is not None:
            return list(self.frame_timestamps)
        return super().timestamps


@dataclass
class SampledVideo(VisualItem):
    """One video as model inputs and prompt runs."""

    metadata: LlavaOnevision2VideoMetadata | None = None
    runs: list[tuple[float, int]] = field(default_factory=list)  # (seconds, placeholder tokens) per prompt block
    run_end: str = ""  # text written after each block

    def check_runs(self, merge_size: int) -> None:
        """The runs must spend exactly the placeholder tokens the grid rows produce (a sampler's contract)."""
        expected = sum(merged_token_count(row, merge_size) for row in self.grid_thw.tolist())
        spent = sum(tokens for _, tokens in self.runs)
        if spent != expected:
            source = self.metadata.source if self.metadata is not None else "a video"
            raise ValueError(f"{source}: the prompt runs hold {spent} tokens but the grid rows make {expected}.")


class VideoSampler:
    """Base class of video back-ends. Subclasses set `name` (the `video_backend` value) and implement `sample`."""

    name: ClassVar[str]
    fills: ClassVar[str] = "video"
    # The release writes codec run lines ending in a newline that takes the place of the one after a wrapped
    # `<|vision_start|><|video_pad|><|vision_end|>` placeholder in raw prompts.
    absorbs_newline_after_placeholder: ClassVar[bool] = False
    # Whether call-level min_pixels / max_pixels bound each sampled frame (the codec sampler reads max_pixels as its
    # canvas budget instead).
    per_frame_pixel_bounds: ClassVar[bool] = True
    # Call-level settings this sampler does not read: passing one with a value other than the processor's own is an
    # error instead of being silently ignored.
    unread_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, processor):
        self.processor = processor

    def sample(self, video, metadata, settings: dict, name: str) -> SampledVideo:
        """One video (path, bytes, binary file or decoded frames; `metadata` as the caller gave it) -> an item."""
        raise NotImplementedError

    def normalized_rows(self, pictures: torch.Tensor, settings: dict) -> torch.Tensor:
        """`[T, 3, H, W]` uint8 pictures -> rescaled, normalised pixel rows in block layout.

        Rows are frame by frame, so a few frames at a time are normalised and written into one preallocated tensor:
        a long clip never holds its float pictures and their rows at once (each as large as the result)."""
        rows_per_frame = (pictures.shape[-2] // settings["patch_size"]) * (
            pictures.shape[-1] // settings["patch_size"]
        )
        step = max(1, NORMALIZE_CHUNK_BYTES // max(1, pictures[0].numel() * 4))
        rows = None
        for start in range(0, len(pictures), step):
            chunk = self.processor.rescale_and_normalize(
                pictures[start : start + step],
                settings["do_rescale"],
                settings["rescale_factor"],
                settings["do_normalize"],
                settings["image_mean"],
                settings["image_std"],
            )
            if rows is None:
                rows = torch.empty(
                    (len(pictures) * rows_per_frame, chunk[0].numel() // rows_per_frame), dtype=chunk.dtype
                )
            first = start * rows_per_frame
            patchify(
                chunk,
                settings["patch_size"],
                settings["merge_size"],
                out=rows[first : first + len(chunk) * rows_per_frame],
            )
        return rows


NORMALIZE_CHUNK_BYTES = 64 * 2**20  # float pictures normalised at once
RESIZE_CHUNK_BYTES = 32 * 2**20  # decoded pictures resized at once (bicubic works in float: ~4x that again)


class ResizingFrameStore(FrameStore):
    """Decoded frames resized to the clip's model size as they arrive, a few at a time: only the resized clip is
    held, never the decoded one (40 s of 1080p at the released defaults: 384 frames, 2.4 GB as decoded). `size_for`
    gives the model size from the first frame's; frames of another size (a stream that changes resolution) are
    resized to the same size."""

    def __init__(self, count: int, name: str, size_for, resize):
        super().__init__(count, name)
        self.size_for, self.resize = size_for, resize
        self.pending: list[np.ndarray] = []

    def add(self, frame: np.ndarray, position: int) -> None:
        if self.frames is None:
            self.source_hw = tuple(frame.shape[:2])
            height, width = self.size_for(*self.source_hw)
            # Held channels-first, as resized and as normalised (no strided copy either way); `frames` is the
            # [T, H, W, 3] view of it.
            self.planar = np.empty((self.count, 3, height, width), dtype=np.uint8)
            self.frames = self.planar.transpose(0, 2, 3, 1)
        if self.pending and (
            frame.shape != self.pending[0].shape or (len(self.pending) + 1) * frame.nbytes > RESIZE_CHUNK_BYTES
        ):
            self.flush()
        self.pending.append(frame)

    def flush(self) -> None:
        if not self.pending:
            return
        batch = torch.from_numpy(np.stack(self.pending)).permute(0, 3, 1, 2)
        resized = self.resize(batch, self.frames.shape[1:3])
        self.planar[self.stored : self.stored + len(resized)] = resized.numpy()
        self.stored += len(resized)
        self.pending = []

    def result(self) -> np.ndarray:
        self.flush()
        return super().result()


class FramesSampler(VideoSampler):
    """Frames sampled evenly in time (the released count rule, or `fps` / `num_frames`), resized to one size within
    the pixel budget."""

    name = "frames"
    unread_settings = ("codec_config",)

    def sample(self, video, metadata, settings: dict, name: str) -> SampledVideo:
        return self.clip_to_item(self.load(video, metadata, settings, name), settings)

    def load(self, video, metadata, settings: dict, name: str) -> DecodedClip:
        sampled = settings["do_sample_frames"]
        return load_clip(
            video,
            name,
            known_fps=(metadata or {}).get("fps") if is_decoded(video) else None,
            fps=settings["fps"] if sampled else None,
            num_frames=settings["num_frames"] if sampled else None,
            max_frames=settings["max_frames"],
            keep_all=not sampled,
            allow_truncated=settings["allow_truncated"],
            frame_store=self.resizing_store(settings) if settings["do_resize"] else None,
        )

    def resizing_store(self, settings: dict):
        """`(count, name) -> ResizingFrameStore` that resizes decoded frames as `clip_to_item` would."""

        def resize(pictures: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return self.processor.resize(
                pictures, size=SizeDict(height=size[0], width=size[1]), resample=settings["resample"]
            )

        def store(count: int, name: str) -> ResizingFrameStore:
            return ResizingFrameStore(count, name, lambda h, w: self.frame_size(h, w, count, settings), resize)

        return store

    def resized(self, clip: DecodedClip, settings: dict) -> np.ndarray:
        """Frames given in memory, resized a few at a time as decoded ones are (`ResizingFrameStore`): resizing a
        whole clip at once holds it in float, four times its uint8 size."""
        store = self.resizing_store(settings)(len(clip.frames), clip.source)
        for position, frame in zip(clip.frame_indices, clip.frames):
            store.add(frame, position)
        return store.result()

    @staticmethod
    def frame_size(height: int, width: int, count: int, settings: dict) -> tuple[int, int]:
        """The one size every frame of a `count`-frame clip is resized to: within min/max pixels, and within
        `total_pixels` over the frames given to the model (a frame repeated to make the count even included)."""
        if settings["pad_to_even_frames"] and count % 2:
            count += 1
        patch, merge = settings["patch_size"], settings["merge_size"]
        min_pixels, max_pixels = settings["min_pixels"], settings["max_pixels"]
        if settings["total_pixels"]:
            max_pixels = max((patch * merge) ** 2, min(max_pixels, settings["total_pixels"] // count))
            min_pixels = min(min_pixels, max_pixels)
        return smart_resize(height, width, patch * merge, min_pixels, max_pixels)

    def clip_to_item(self, clip: DecodedClip, settings: dict) -> SampledVideo:
        """Resize every frame to one size within the pixel budget (unless `load` already did, as it decoded),
        normalise, patchify; grid rows, positions, runs."""
        if settings["video_format"] not in VIDEO_FORMATS:
            raise ValueError(f"video_format must be one of {VIDEO_FORMATS}, got {settings['video_format']!r}.")
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
        source_h, source_w = clip.source_hw or frames.shape[-2:]
        indices, timestamps = list(clip.frame_indices), list(clip.timestamps)
        height, width = self.frame_size(source_h, source_w, len(frames), settings)
        if settings["do_resize"] and frames.shape[-2:] != (height, width):
            frames = torch.from_numpy(self.resized(clip, settings)).permute(0, 3, 1, 2)
        if settings["pad_to_even_frames"] and len(frames) % 2:
            frames = torch.cat([frames, frames[-1:]])
            indices.append(indices[-1])
            timestamps.append(timestamps[-1])
        patch, merge = settings["patch_size"], settings["merge_size"]
        grid_h, grid_w = frames.shape[-2] // patch, frames.shape[-1] // patch
        t_values = indices if settings["temporal_positions"] == "frame_index" else [0] * len(indices)
        training = settings["video_format"] == "training"
        grids = [[len(frames), grid_h, grid_w]] if training else [[1, grid_h, grid_w]] * len(frames)
        tokens = merged_token_count((1, grid_h, grid_w), merge)
        metadata = LlavaOnevision2VideoMetadata(
            total_num_frames=clip.total_num_frames,
            fps=clip.fps,
            width=int(source_w),
            height=int(source_h),
            duration=clip.duration,
            video_backend=self.name,
            frames_indices=indices,
            frame_timestamps=timestamps,
            grid_rows=len(grids),
            video_format=settings["video_format"],
            codec=clip.codec,
            source=clip.source,
        )
        return SampledVideo(
            pixel_values=self.normalized_rows(frames, settings),
            grid_thw=torch.tensor(grids, dtype=torch.long),
            positions=block_layout_positions(t_values, grid_h, grid_w, merge),
            fills=self.fills,
            metadata=metadata,
            runs=[(seconds, tokens) for seconds in timestamps],
            run_end="\n" if training else "",
        )


class CodecSampler(VideoSampler):
    """Codec-aligned canvases: one merged grid row `[N_canvas, h, w]`, written as image runs (the released contract).
    A call-level `max_pixels` is the canvas pixel budget, as in the released processor."""

    name = "codec"
    fills = "image"
    absorbs_newline_after_placeholder = True
    per_frame_pixel_bounds = False
    unread_settings = (
        "fps",
        "num_frames",
        "max_frames",
        "min_pixels",
        "total_pixels",
        "pad_to_even_frames",
        "video_format",
        "temporal_positions",
        "do_sample_frames",
        "do_resize",
        "resample",
    )

    def sample(self, video, metadata, settings: dict, name: str) -> SampledVideo:
        if is_decoded(video):
            raise ValueError(
                f"{name}: codec sampling reads the compressed stream; pass a path, bytes or a binary file, not "
                "decoded frames (use video_backend='frames' for those)."
            )
        config = self.config(settings)
        sample = sample_codec_video(video, config)
        canvases = torch.from_numpy(sample.canvases).permute(0, 3, 1, 2)
        grid_h, grid_w = sample.grid
        runs = sample.timestamp_runs(config.merge)
        metadata = LlavaOnevision2VideoMetadata(
            total_num_frames=sample.report["total_frames"],
            fps=sample.fps,
            width=int(sample.canvases.shape[2]),
            height=int(sample.canvases.shape[1]),
            duration=sample.report["duration"],
            video_backend=self.name,
            frames_indices=sample.candidate_ids,
            frame_timestamps=sample.candidate_times,
            grid_rows=1,
            video_format=None,
            codec=sample.report["codec"],
            source=sample.report["source"],
            codec_report=sample.report,
        )
        return SampledVideo(
            pixel_values=self.normalized_rows(canvases, settings),
            grid_thw=torch.tensor([[len(sample.canvases), grid_h, grid_w]], dtype=torch.long),
            positions=torch.from_numpy(np.ascontiguousarray(sample.positions)),
            fills=self.fills,
            metadata=metadata,
            runs=runs,
            run_end="\n",
        )

    def config(self, settings: dict) -> CodecSamplingConfig:
        """The processor's saved codec block < the call's `codec_config` < a call-level `max_pixels`."""
        config = CodecSamplingConfig.from_mapping(
            {
                "patch": settings["patch_size"],
                "merge": settings["merge_size"],
                "allow_truncated": settings["allow_truncated"],
            },
            self.processor.codec_config,
            settings["codec_config"],
            {"max_pixels": settings["call_max_pixels"]} if settings["call_max_pixels"] is not None else None,
        )
        if (config.patch, config.merge) != (settings["patch_size"], settings["merge_size"]):
            raise ValueError(
                f"codec_config patch/merge {config.patch}/{config.merge} differ from the processor's "
                f"{settings['patch_size']}/{settings['merge_size']}."
            )
        return config


BUILT_IN_SAMPLERS = (FramesSampler, CodecSampler)

__all__ = [
    "BUILT_IN_SAMPLERS",
    "CodecSampler",
    "FramesSampler",
    "LlavaOnevision2VideoMetadata",
    "SampledVideo",
    "VIDEO_FORMATS",
    "VideoSampler",
]
