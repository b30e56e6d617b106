"""Video processor of LLaVA-OneVision-2: settings, input handling, and a registry of video samplers.

Each video goes through the sampler `video_backend` names (`video_samplers_llava_onevision2`), which returns one item;
items are concatenated under the keys each names. With the frames sampler: `pixel_values_videos` `[N, 3*P*P]`,
`video_grid_thw` (one `[T, h, w]` row per video in the training format, or `T` rows of `[1, h, w]` in the evaluated
format, so that each frame is its own attention window), `video_patch_positions` `[N, 3]` (t = source frame index,
or 0 with `temporal_positions="zero"`). The codec sampler's canvases go under the image keys (`pixel_values`,
`image_grid_thw`, `patch_positions`), as released. With `return_metadata`: `video_metadata`, one
`LlavaOnevision2VideoMetadata` per video with the per-frame timestamps in seconds.

Inputs: file paths, bytes, binary file objects, or frames already decoded (a list of PIL images or a `[T, H, W, C]`
array). Decoded frames are taken as sampled at the `fps` given in `video_metadata`; without it they are kept as
they are (up to `max_frames`) and stamped at one frame per second.

Defaults follow the released processor: 8 frames for clips under 10 s, 16 under 30 s, else `max_frames` (384);
each frame resized within 200,704-1,605,632 pixels (multiples of 28); no frame repeated. `fps`, `num_frames`,
`total_pixels` and `pad_to_even_frames` are explicit overrides.
"""

import os
from typing import ClassVar

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from .codec_sampling_llava_onevision2 import CodecSamplingConfig
from .video_samplers_llava_onevision2 import (
    BUILT_IN_SAMPLERS,
    LlavaOnevision2VideoMetadata,
    SampledVideo,
    VideoSampler,
)
from .vision_layout_llava_onevision2 import VISUAL_KEYS, PixelBudgetMixin, join_items

TEMPORAL_POSITIONS = ("frame_index", "zero")


class LlavaOnevision2VideosKwargs(VideosKwargs, total=False):
    r"""
    min_pixels / max_pixels (`int`): area bounds per frame after resizing.
    total_pixels (`int`, *optional*): budget over all frames of a video; lowers the per-frame maximum.
    fps (`float`, *optional*): sample at this rate (capped by `max_frames`) instead of the released count rule.
    num_frames (`int`, *optional*): sample exactly this many frames (capped by `max_frames`).
    max_frames (`int`): upper bound on sampled frames (384, the released default).
    pad_to_even_frames (`bool`): repeat the last frame when the count is odd (what lmms-eval's frame path does; off
        by default, as in the released processor).
    video_format (`str`): the layout of sampled frames: "evaluated" (each frame its own grid row, no newline between
        frame blocks) or "training" (one multi-frame grid row, a newline after each frame block).
    temporal_positions (`str`): "frame_index" (t = source frame index) or "zero" (t = 0, as at evaluation).
    video_backend (`str`): the sampler: "frames" (decode sampled frames) or "codec" (codec-aligned canvases, see
        `codec_sampling_llava_onevision2`); more register with `register_video_sampler`. Settings a sampler does not
        read (e.g. `fps` with "codec") are refused when passed at call time.
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
    model_input_names = list(VISUAL_KEYS["video"])
    # `video_backend` name -> sampler class; extend with `register_video_sampler`.
    video_samplers: ClassVar[dict[str, type[VideoSampler]]] = {sampler.name: sampler for sampler in BUILT_IN_SAMPLERS}

    def __init__(self, **kwargs):
        codec_config = kwargs.pop("codec_config", None)
        super().__init__(**kwargs)
        self.codec_config = codec_config_for_saving(codec_config)

    @classmethod
    def register_video_sampler(cls, sampler: type[VideoSampler]) -> None:
        """Make `sampler` available as `video_backend=sampler.name` for this class and its subclasses (a subclass's
        registration does not reach its parent)."""
        if not (isinstance(sampler, type) and issubclass(sampler, VideoSampler)):
            raise TypeError(f"A video sampler is a VideoSampler subclass, got {sampler!r}.")
        cls.video_samplers = {**cls.video_samplers, sampler.name: sampler}

    def sampler_class(self, video_backend: str) -> type[VideoSampler]:
        if video_backend not in self.video_samplers:
            raise ValueError(
                f"video_backend {video_backend!r} is not available; registered back-ends: {sorted(self.video_samplers)}."
            )
        return self.video_samplers[video_backend]

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
        if settings["temporal_positions"] not in TEMPORAL_POSITIONS:
            raise ValueError(
                f"temporal_positions must be one of {TEMPORAL_POSITIONS}, got {settings['temporal_positions']!r}."
            )
        sampler = self.sampler_class(settings["video_backend"])
        passed_but_unread = [
            name
            for name in sampler.unread_settings
            if kwargs.get(name) is not None and kwargs[name] != getattr(self, name, None)
        ]
        if passed_but_unread:
            raise ValueError(
                f"video_backend={sampler.name!r} does not read {passed_but_unread}; drop them or use a back-end that "
                "does (e.g. 'frames')."
            )
        if settings["temporal_patch_size"] not in (None, 1):
            raise ValueError(f"LLaVA-OneVision-2 uses temporal_patch_size=1, got {settings['temporal_patch_size']}.")
        return settings

    # -- sampling --------------------------------------------------------------------------------------------------

    def sample_videos(self, videos, **kwargs) -> list[SampledVideo]:
        """One item per video (paths, bytes, binary files or decoded frames; see the module docstring), from the
        sampler `video_backend` names. `video_metadata` (one mapping per video, or one for all) gives the frame rate
        of decoded frames."""
        kwargs.pop("return_tensors", None)
        kwargs.pop("return_metadata", None)
        given_metadata = kwargs.pop("video_metadata", None)
        settings = self.resolve_settings(kwargs)
        sources = flatten_video_inputs(videos)
        if given_metadata is None or isinstance(given_metadata, (dict, VideoMetadata)):
            given_metadata = [given_metadata] * len(sources)
        if len(given_metadata) != len(sources):
            raise ValueError(f"Got {len(given_metadata)} video_metadata entries for {len(sources)} videos.")
        sampler = self.sampler_class(settings["video_backend"])(self)
        items = []
        for index, (source, meta) in enumerate(zip(sources, given_metadata)):
            item = sampler.sample(source, meta, settings, name=f"video {index}")
            item.check_runs(settings["merge_size"])
            items.append(item)
        return items

    def preprocess(self, videos, **kwargs) -> BatchFeature:
        return_tensors = kwargs.get("return_tensors")
        return_metadata = kwargs.get("return_metadata", self.return_metadata)
        items = self.sample_videos(videos, **kwargs)
        data = join_items(items)
        if not items:
            patch = kwargs.get("patch_size") or self.patch_size
            data = {
                "pixel_values_videos": torch.zeros(0, 3 * patch**2),
                "video_grid_thw": torch.zeros(0, 3, dtype=torch.long),
                "video_patch_positions": torch.zeros(0, 3, dtype=torch.long),
            }
        features = BatchFeature(data=data, tensor_type=return_tensors)
        if return_metadata:
            features["video_metadata"] = [item.metadata for item in items]
        return features


__all__ = ["LlavaOnevision2VideoMetadata", "LlavaOnevision2VideoProcessor"]

# Saved folders name this class in `auto_map`, so AutoVideoProcessor / AutoProcessor load it with trust_remote_code.
LlavaOnevision2VideoProcessor.register_for_auto_class("AutoVideoProcessor")
