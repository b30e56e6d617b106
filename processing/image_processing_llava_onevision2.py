"""Image processor of LLaVA-OneVision-2: native-resolution resize, CLIP normalisation, block-layout patches.

Outputs `pixel_values` `[N, 3*P*P]`, `image_grid_thw` `[n, 3]` (t = 1) and `patch_positions` `[N, 3]` (t = 0, block
layout) -- the keys the model and the released processor use. On the same inputs `pixel_values` and the grids equal
those of transformers' `Qwen2VLImageProcessorPil` (the path the released processor takes) with patch 14, merge 2 and
temporal patch 1; with `resize_backend="torchvision"` they equal `Qwen2VLImageProcessor`'s instead (faster, not
bit-equal to the release).
"""

import os

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import group_images_by_shape, reorder_images
from transformers.image_transforms import normalize as normalize_array
from transformers.image_transforms import rescale as rescale_array
from transformers.image_transforms import resize as resize_array
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, SizeDict, load_image
from transformers.processing_utils import ImagesKwargs

from .vision_layout_llava_onevision2 import (
    VISUAL_KEYS,
    PixelBudgetMixin,
    block_layout_positions,
    merged_token_count,
    patchify,
    smart_resize,
)

# Release defaults: at least 256 tokens' worth of pixels (256 * 28 * 28), at most 2000 x 2000.
DEFAULT_MIN_PIXELS = 256 * 28 * 28
DEFAULT_MAX_PIXELS = 2000 * 2000
# "pil": PIL bicubic resize and numpy normalisation, bit-identical to the `Qwen2VLImageProcessorPil` path the released
# processor uses. "torchvision": batched tensor resize, about 4x faster, differs by up to ~0.1 after normalisation on
# real photographs (measured in tests/test_release_compat.py and bench/image_bench.py).
RESIZE_BACKENDS = ("pil", "torchvision")


class LlavaOnevision2ImagesKwargs(ImagesKwargs, total=False):
    r"""
    min_pixels (`int`): smallest area after resizing (defaults to 200,704 = 256 * 28 * 28).
    max_pixels (`int`): largest area after resizing (defaults to 4,000,000).
    patch_size (`int`): ViT patch size (14).
    merge_size (`int`): spatial merge of the patch merger (2); sides become multiples of patch_size * merge_size.
    temporal_patch_size (`int`): must be 1 for this model.
    resize_backend (`str`): "pil" (default; equals the released processor) or "torchvision" (faster, not bit-equal).
    """

    min_pixels: int
    max_pixels: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    resize_backend: str


def image_size_error(image, name: str) -> ValueError | None:
    """A decompression-bomb guard for images that arrive already decoded (PIL checks files it opens)."""
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is None:
        return None
    if isinstance(image, PIL.Image.Image):
        width, height = image.size
    elif hasattr(image, "shape") and len(image.shape) >= 2:
        height, width = image.shape[-2:] if image.shape[0] in (1, 3, 4) else image.shape[:2]
    else:
        return None
    if width * height > limit:
        return ValueError(
            f"{name} has {width}x{height} = {width * height} pixels, over the decompression-bomb limit of {limit} "
            "(PIL.Image.MAX_IMAGE_PIXELS); downscale it or raise the limit explicitly if you trust the source."
        )
    return None


def check_resize_backend(name: str) -> str:
    if name not in RESIZE_BACKENDS:
        raise ValueError(f"resize_backend must be one of {RESIZE_BACKENDS}, got {name!r}.")
    return name


class LlavaOnevision2ImageProcessor(PixelBudgetMixin, TorchvisionBackend):
    do_resize = True
    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": DEFAULT_MIN_PIXELS, "longest_edge": DEFAULT_MAX_PIXELS}
    default_to_square = False
    do_rescale = True
    do_normalize = True
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_convert_rgb = True
    patch_size = 14
    merge_size = 2
    temporal_patch_size = 1
    resize_backend = "pil"
    valid_kwargs = LlavaOnevision2ImagesKwargs
    model_input_names = list(VISUAL_KEYS["image"])

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.temporal_patch_size != 1:
            raise ValueError(f"LLaVA-OneVision-2 uses temporal_patch_size=1, got {self.temporal_patch_size}.")
        check_resize_backend(self.resize_backend)

    def fetch_images(self, image_url_or_urls):
        """Load paths / URLs with PIL (which enforces its decompression-bomb limit), naming the file on failure."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if not isinstance(image_url_or_urls, (str, os.PathLike)):
            return super().fetch_images(image_url_or_urls)
        source = os.fspath(image_url_or_urls)
        if "://" not in source and not os.path.exists(source):
            raise FileNotFoundError(f"Image file not found: {source}")
        try:
            return load_image(source)
        except PIL.Image.DecompressionBombError as error:
            raise ValueError(f"Image {source} exceeds the decompression-bomb limit: {error}") from error
        except (PIL.UnidentifiedImageError, OSError) as error:
            raise ValueError(f"Could not read image {source}: {error}") from error

    @staticmethod
    def pil_resize_and_normalize(
        image: torch.Tensor, target: tuple[int, int] | None, resample, rescale_factor, image_mean, image_std
    ) -> torch.Tensor:
        """One `[C, H, W]` image through the PIL path: PIL resize of the 8-bit image, then numpy rescale/normalise.

        The same functions and order as `Qwen2VLImageProcessorPil`, so the result is bit-identical to it.
        `target` None skips the resize; a None factor or mean skips that step.
        """
        array = image.numpy()
        if target is not None and tuple(array.shape[-2:]) != target:
            array = resize_array(
                array, target, resample=resample, data_format="channels_first", input_data_format="channels_first"
            )
        if rescale_factor is not None:
            array = rescale_array(
                array, rescale_factor, data_format="channels_first", input_data_format="channels_first"
            )
        if image_mean is not None:
            array = normalize_array(
                array, image_mean, image_std, data_format="channels_first", input_data_format="channels_first"
            )
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def _preprocess(
        self,
        images: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        patch_size: int,
        merge_size: int,
        disable_grouping: bool | None = None,
        return_tensors=None,
        resize_backend: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        backend = check_resize_backend(resize_backend or self.resize_backend)
        for index, image in enumerate(images):
            if (error := image_size_error(image, f"Image {index}")) is not None:
                raise error
        grouped, group_index = group_images_by_shape(images, disable_grouping=disable_grouping)
        processed_rows, processed_grids = {}, {}
        factor = patch_size * merge_size
        for shape, stack in grouped.items():
            target = (
                smart_resize(*stack.shape[-2:], factor, size.shortest_edge, size.longest_edge) if do_resize else None
            )
            if backend == "pil":
                stack = torch.stack(
                    [
                        self.pil_resize_and_normalize(
                            image,
                            target,
                            resample,
                            rescale_factor if do_rescale else None,
                            image_mean if do_normalize else None,
                            image_std,
                        )
                        for image in stack
                    ]
                )
            else:
                if target is not None:
                    stack = self.resize(stack, size=SizeDict(height=target[0], width=target[1]), resample=resample)
                stack = self.rescale_and_normalize(
                    stack, do_rescale, rescale_factor, do_normalize, image_mean, image_std
                )
            grid_h, grid_w = stack.shape[-2] // patch_size, stack.shape[-1] // patch_size
            rows = patchify(stack, patch_size, merge_size).view(len(stack), grid_h * grid_w, -1)
            processed_rows[shape] = list(rows)
            processed_grids[shape] = [[1, grid_h, grid_w]] * len(stack)
        rows = reorder_images(processed_rows, group_index)
        grids = reorder_images(processed_grids, group_index)
        positions = [block_layout_positions([0], h, w, merge_size) for _, h, w in grids]
        return BatchFeature(
            data={
                "pixel_values": torch.cat(rows),
                "image_grid_thw": torch.tensor(grids, dtype=torch.long),
                "patch_positions": torch.cat(positions),
            },
            tensor_type=return_tensors,
        )

    def get_number_of_image_patches(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        """Patches (before merging) an image of this size becomes; used to size prompts without pixels."""
        images_kwargs = images_kwargs or {}
        patch = images_kwargs.get("patch_size", self.patch_size)
        merge = images_kwargs.get("merge_size", self.merge_size)
        target_h, target_w = smart_resize(
            height,
            width,
            patch * merge,
            images_kwargs.get("min_pixels", self.min_pixels),
            images_kwargs.get("max_pixels", self.max_pixels),
        )
        return (target_h // patch) * (target_w // patch)

    def get_number_of_image_tokens(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        patches = self.get_number_of_image_patches(height, width, images_kwargs)
        return merged_token_count((1, patches, 1), (images_kwargs or {}).get("merge_size", self.merge_size))


__all__ = ["LlavaOnevision2ImageProcessor"]

# Saved folders name this class in `auto_map`, so AutoImageProcessor / AutoProcessor load it with trust_remote_code.
LlavaOnevision2ImageProcessor.register_for_auto_class("AutoImageProcessor")
