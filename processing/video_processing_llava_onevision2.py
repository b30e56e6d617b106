"""Video processor of LLaVA-OneVision-2: PyAV decoding, time-uniform frame sampling, block-layout patches.

Outputs per call: `pixel_values_videos` `[N, 3*P*P]`, `video_grid_thw` (one `[T, h, w]` row per video in the
training format, or `T` rows of `[1, h, w]` in the evaluated format, so that each frame is its own attention window),
`video_patch_positions` `[N, 3]` (t = source frame index, or 0 with `temporal_positions="zero"`), and
`video_metadata`: one `LlavaOnevision2VideoMetadata` per video with the per-frame timestamps in seconds.

Inputs: file paths, bytes, binary file objects, or frames already decoded (a list of PIL images or a `[T, H, W, C]`
array). Decoded frames are taken as sampled at the `fps` given in `video_metadata`; without it they are kept as
they are (up to `max_frames`) and stamped at one frame per second.

Defaults follow the released processor: 8 frames for clips under 10 s, 16 under 30 s, else `max_frames` (384);
each frame resized within 200,704-1,605,632 pixels (multiples of 28); no frame repeated. `fps`, `num_frames`,
`total_pixels` and `pad_to_even_frames` are explicit overrides.
"""

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, SizeDict
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from .codec_sampling_llava_onevision2 import CodecSamplingConfig, sample_codec_video
from .video_decoding_llava_onevision2 import DecodedClip, read_video, sample_frame_indices
from .vision_layout_llava_onevision2 import PixelBudgetMixin, block_layout_positions, patchify, smart_resize

VIDEO_FORMATS = ("evaluated", "training")
TEMPORAL_POSITIONS = ("frame_index", "zero")
# Seconds per frame assumed for decoded frames passed without `video_metadata`.
FRAMES_WITHOUT_METADATA_FPS = 1.0


class LlavaOnevision2VideosKwargs(VideosKwargs, total=False):
    r"""
    min_pixels / max_pixels (`int`): area bounds per frame after resizing.
    total_pixels (`int`, *optional*): budget over all frames of a video; lowers the per-frame maximum.
    fps (`float`, *optional*): sample at this rate (capped by `max_frames`) instead of the released count rule.
    num_frames (`int`, *optional*): sample exactly this many frames (capped by `max_frames`).
    max_frames (`int`): upper bound on sampled frames (384, the released default).
    pad_to_even_frames (`bool`): repeat the last frame when the count is odd (what lmms-eval's frame path does; off
        by default, as in the released processor).
    video_format (`str`): "evaluated" (each frame its own grid row, no newline between frame blocks) or
        "training" (one multi-frame grid row, a newline after each frame block).
    temporal_positions (`str`): "frame_index" (t = source frame index) or "zero" (t = 0, as at evaluation).
    video_backend (`str`): "frames" (decode sampled frames) or "codec" (codec-aligned canvases, see
        `codec_sampling_llava_onevision2`); samplers are registered in `video_backends`.
    codec_config (`dict`): overrides of `CodecSamplingConfig` for the codec back-end, in the released "codec" block's
        key names (`target_canvas, group_size, images_per_group, patch, max_pixels, min_group_frames,
        max_group_frames, spatial_mask_mode, cache_root, timeout`, plus this implementation's own). Precedence: the
        processor's saved block < this argument < a call-level `max_pixels`, which sets the canvas pixel budget as
        in the released processor.
    allow_truncated (`bool`): accept files whose frames end well before their declared duration.
    patch_size / merge_size / temporal_patch_size (`int`): vision geometry (14 / 2 / 1).
    """

    min_pixels: int
    max_pixels: int
    total_pixels: int | None
    max_frames: int
    pad_to_even_frames: bool
    video_format: str
    temporal_positions: str
    video_backend: str
    codec_config: dict | None
    allow_truncated: bool
    patch_size: int
    merge_size: int
    temporal_patch_size: int


@dataclass
class LlavaOnevision2VideoMetadata(VideoMetadata):
    """`VideoMetadata` plus what the prompt and the model need: exact per-frame times and the grid layout."""

    frame_timestamps: list[float] | None = None
    grid_rows: int = 1
    video_format: str = "evaluated"
    codec_runs: list[tuple[float, int]] | None = None  # codec back-end: (seconds, tokens) per run of one frame
    codec_report: dict | None = None
    codec: str | None = None
    source: str | None = None

    @property
    def timestamps(self) -> list[float]:
        if self.frame_timestamps is not None:
            return list(self.frame_timestamps)
        return super().timestamps


def is_frame(item) -> bool:
    return isinstance(item, PIL.Image.Image) or (isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 3)


def is_single_video(item) -> bool:
    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(item, "read"):
        return True
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return item.ndim == 4
    return isinstance(item, (list, tuple)) and len(item) > 0 and all(is_frame(frame) for frame in item)


def flatten_video_inputs(videos) -> list:
    """One entry per video from a video, a list of videos, or a per-sample nested list of videos."""
    if is_single_video(videos):
        return [videos]
    if isinstance(videos, (list, tuple)):
        return [video for item in videos for video in flatten_video_inputs(item)]
    raise TypeError(
        f"Unsupported video input of type {type(videos).__name__}: pass a path, bytes, a binary file, a list of "
        "PIL images or a [T, H, W, C] array (or a list of these)."
    )


def frames_to_array(frames, name: str) -> np.ndarray:
    """Decoded frames -> `[T, H, W, 3]` uint8."""
    if isinstance(frames, (list, tuple)):
        frames = [np.asarray(f.convert("RGB")) if isinstance(f, PIL.Image.Image) else np.asarray(f) for f in frames]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"{name}: all frames must have one size, got {sorted(shapes)}.")
        frames = np.stack(frames)
    array = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"{name}: decoded frames must be [T, H, W, 3], got shape {tuple(array.shape)}.")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no frames.")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max() <= 1.0:
            raise ValueError(f"{name}: frames look like floats in [0, 1]; pass uint8 values in [0, 255].")
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array


def codec_config_for_saving(codec_config: dict | None) -> dict | None:
    """The processor's default codec block, checked now (unknown keys and bad values fail at load, naming the
    accepted keys) and kept JSON-ready (`cache_root` may be a `pathlib.Path`)."""
    if not codec_config:
        return None
    CodecSamplingConfig.from_mapping(codec_config)
    return {key: os.fspath(value) if isinstance(value, os.PathLike) else value for key, value in codec_config.items()}


class LlavaOnevision2VideoProcessor(PixelBudgetMixin, BaseVideoProcessor):
    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": 256 * 28 * 28, "longest_edge": 2048 * 28 * 28}
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = True
    patch_size = 14
    merge_size = 2
    temporal_patch_size = 1
    fps = None
    num_frames = None
    max_frames = 384
    total_pixels = None
    pad_to_even_frames = False
    video_format = "evaluated"
    temporal_positions = "frame_index"
    video_backend = "frames"
    codec_config = None
    allow_truncated = False
    return_metadata = False
    valid_kwargs = LlavaOnevision2VideosKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw", "video_patch_positions"]
    # Sampling back-ends by name -> method returning (pixel rows, grid rows, positions, metadata) for one video.
    video_backends: ClassVar[dict[str, str]] = {"frames": "frames_inputs", "codec": "codec_inputs"}

    def __init__(self, **kwargs):
        codec_config = kwargs.pop("codec_config", None)
        super().__init__(**kwargs)
        self.codec_config = codec_config_for_saving(codec_config)

    # -- settings --------------------------------------------------------------------------------------------------

    def resolve_settings(self, kwargs: dict) -> dict:
        """Call-time kwargs over the processor's own defaults, validated."""
        unknown = set(kwargs) - set(self.valid_kwargs.__annotations__) - {"return_tensors"}
        if unknown:
            raise TypeError(f"Unexpected video processor arguments: {sorted(unknown)}.")
        settings = {name: kwargs.get(name, getattr(self, name, None)) for name in self.valid_kwargs.__annotations__}
        bounds = dict(kwargs.get("size") or self.size)
        settings["min_pixels"] = kwargs.get("min_pixels", bounds["shortest_edge"])
        settings["max_pixels"] = kwargs.get("max_pixels", bounds["longest_edge"])
        settings["call_max_pixels"] = kwargs.get("max_pixels")
        if settings["video_format"] not in VIDEO_FORMATS:
            raise ValueError(f"video_format must be one of {VIDEO_FORMATS}, got {settings['video_format']!r}.")
        if settings["temporal_positions"] not in TEMPORAL_POSITIONS:
            raise ValueError(
                f"temporal_positions must be one of {TEMPORAL_POSITIONS}, got {settings['temporal_positions']!r}."
            )
        if settings["video_backend"] not in self.video_backends:
            raise ValueError(
                f"video_backend {settings['video_backend']!r} is not available; registered back-ends: "
                f"{sorted(self.video_backends)}."
            )
        if settings["temporal_patch_size"] not in (None, 1):
            raise ValueError(f"LLaVA-OneVision-2 uses temporal_patch_size=1, got {settings['temporal_patch_size']}.")
        return settings

    # -- loading ---------------------------------------------------------------------------------------------------

    def load_clip(self, video, metadata, settings: dict, name: str) -> DecodedClip:
        """Sampled RGB frames of one video: decoded from a file / bytes, or picked from frames given in memory."""
        sampling = dict(
            fps=settings["fps"] if settings["do_sample_frames"] else None,
            num_frames=settings["num_frames"] if settings["do_sample_frames"] else None,
            max_frames=settings["max_frames"],
            keep_all=not settings["do_sample_frames"],
        )
        if not (isinstance(video, (np.ndarray, torch.Tensor)) or isinstance(video, (list, tuple))):
            return read_video(video, allow_truncated=settings["allow_truncated"], **sampling)
        frames = frames_to_array(video, name)
        known_fps = (metadata or {}).get("fps") if metadata is not None else None
        if not known_fps:
            # No clock: keep the frames as given (capped) and stamp them one second apart, as the release does.
            sampling.update(fps=None, keep_all=True)
            known_fps = FRAMES_WITHOUT_METADATA_FPS
        timestamps = np.arange(len(frames)) / known_fps
        duration = len(frames) / known_fps
        wanted = sample_frame_indices(timestamps, duration, **sampling)
        return DecodedClip(
            frames=frames[wanted],
            frame_indices=wanted,
            timestamps=[float(timestamps[i]) for i in wanted],
            total_num_frames=len(frames),
            fps=float(known_fps),
            duration=duration,
            codec=None,
            source=name,
        )

    # -- to model inputs -------------------------------------------------------------------------------------------

    def clip_to_model_inputs(self, clip: DecodedClip, settings: dict) -> tuple[torch.Tensor, list, torch.Tensor, dict]:
        """Resize every frame to one size within the pixel budget, normalise, patchify; grid rows and positions."""
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
        indices, timestamps = list(clip.frame_indices), list(clip.timestamps)
        if settings["pad_to_even_frames"] and len(frames) % 2:
            frames = torch.cat([frames, frames[-1:]])
            indices.append(indices[-1])
            timestamps.append(timestamps[-1])
        patch, merge = settings["patch_size"], settings["merge_size"]
        factor = patch * merge
        min_pixels, max_pixels = settings["min_pixels"], settings["max_pixels"]
        if settings["total_pixels"]:
            max_pixels = max(factor * factor, min(max_pixels, settings["total_pixels"] // len(frames)))
            min_pixels = min(min_pixels, max_pixels)
        height, width = smart_resize(frames.shape[-2], frames.shape[-1], factor, min_pixels, max_pixels)
        if settings["do_resize"]:
            frames = self.resize(frames, size=SizeDict(height=height, width=width), resample=settings["resample"])
        frames = self.rescale_and_normalize(
            frames,
            settings["do_rescale"],
            settings["rescale_factor"],
            settings["do_normalize"],
            settings["image_mean"],
            settings["image_std"],
        )
        rows = patchify(frames, patch, merge)
        grid_h, grid_w = frames.shape[-2] // patch, frames.shape[-1] // patch
        t_values = indices if settings["temporal_positions"] == "frame_index" else [0] * len(indices)
        positions = block_layout_positions(t_values, grid_h, grid_w, merge)
        if settings["video_format"] == "training":
            grids = [[len(frames), grid_h, grid_w]]
        else:
            grids = [[1, grid_h, grid_w]] * len(frames)
        metadata = LlavaOnevision2VideoMetadata(
            total_num_frames=clip.total_num_frames,
            fps=clip.fps,
            width=int(clip.frames.shape[2]),
            height=int(clip.frames.shape[1]),
            duration=clip.duration,
            video_backend=settings["video_backend"],
            frames_indices=indices,
            frame_timestamps=timestamps,
            grid_rows=len(grids),
            video_format=settings["video_format"],
            codec=clip.codec,
            source=clip.source,
        )
        return rows, grids, positions, metadata

    def frames_inputs(self, video, metadata, settings: dict, name: str):
        """The frames back-end: sampled frames, resized to one size, as model inputs."""
        return self.clip_to_model_inputs(self.load_clip(video, metadata, settings, name), settings)

    def codec_inputs(self, video, metadata, settings: dict, name: str):
        """The codec back-end: anchor + collage canvases of one video as one merged grid row `[N_canvas, h, w]`."""
        if isinstance(video, (np.ndarray, torch.Tensor, list, tuple)):
            raise ValueError(
                f"{name}: codec sampling reads the compressed stream; pass a path, bytes or a binary file, not "
                "decoded frames (use video_backend='frames' for those)."
            )
        config = CodecSamplingConfig.from_mapping(
            {
                "patch": settings["patch_size"],
                "merge": settings["merge_size"],
                "allow_truncated": settings["allow_truncated"],
            },
            self.codec_config,
            settings["codec_config"],
            # As in the released processor, a call-level max_pixels is the canvas pixel budget.
            {"max_pixels": settings["call_max_pixels"]} if settings["call_max_pixels"] is not None else None,
        )
        if (config.patch, config.merge) != (settings["patch_size"], settings["merge_size"]):
            raise ValueError(
                f"codec_config patch/merge {config.patch}/{config.merge} differ from the processor's "
                f"{settings['patch_size']}/{settings['merge_size']}."
            )
        sample = sample_codec_video(video, config)
        canvases = torch.from_numpy(sample.canvases).permute(0, 3, 1, 2)
        canvases = self.rescale_and_normalize(
            canvases,
            settings["do_rescale"],
            settings["rescale_factor"],
            settings["do_normalize"],
            settings["image_mean"],
            settings["image_std"],
        )
        rows = patchify(canvases, config.patch, config.merge)
        grid_h, grid_w = sample.grid
        metadata = LlavaOnevision2VideoMetadata(
            total_num_frames=sample.report["total_frames"],
            fps=sample.fps,
            width=int(sample.canvases.shape[2]),
            height=int(sample.canvases.shape[1]),
            duration=sample.report["duration"],
            video_backend="codec",
            frames_indices=sample.candidate_ids,
            frame_timestamps=sample.candidate_times,
            grid_rows=1,
            video_format="codec",
            codec=sample.report["codec"],
            source=sample.report["source"],
            codec_runs=sample.timestamp_runs(config.merge),
            codec_report=sample.report,
        )
        return rows, [[len(sample.canvases), grid_h, grid_w]], torch.from_numpy(sample.positions), metadata

    def preprocess(self, videos, **kwargs) -> BatchFeature:
        return_tensors = kwargs.pop("return_tensors", None)
        given_metadata = kwargs.pop("video_metadata", None)
        settings = self.resolve_settings(kwargs)
        sources = flatten_video_inputs(videos)
        if given_metadata is None or isinstance(given_metadata, (dict, VideoMetadata)):
            given_metadata = [given_metadata] * len(sources)
        if len(given_metadata) != len(sources):
            raise ValueError(f"Got {len(given_metadata)} video_metadata entries for {len(sources)} videos.")
        to_model_inputs = getattr(self, self.video_backends[settings["video_backend"]])
        rows, grids, positions, metadata = [], [], [], []
        for index, (source, meta) in enumerate(zip(sources, given_metadata)):
            clip_rows, clip_grids, clip_positions, clip_metadata = to_model_inputs(
                source, meta, settings, name=f"video {index}"
            )
            rows.append(clip_rows)
            grids.extend(clip_grids)
            positions.append(clip_positions)
            metadata.append(clip_metadata)
        features = BatchFeature(
            data={
                "pixel_values_videos": torch.cat(rows) if rows else torch.zeros(0, 3 * settings["patch_size"] ** 2),
                "video_grid_thw": torch.tensor(grids, dtype=torch.long).view(-1, 3),
                "video_patch_positions": torch.cat(positions) if positions else torch.zeros(0, 3, dtype=torch.long),
            },
            tensor_type=return_tensors,
        )
        if settings["return_metadata"]:
            features["video_metadata"] = metadata
        return features


__all__ = ["LlavaOnevision2VideoMetadata", "LlavaOnevision2VideoProcessor"]

# Saved folders name this class in `auto_map`, so AutoVideoProcessor / AutoProcessor load it with trust_remote_code.
LlavaOnevision2VideoProcessor.register_for_auto_class("AutoVideoProcessor")
