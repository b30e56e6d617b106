"""The released resize rule, with no dependency beyond the standard library: the codec sampler imports it without
torch or transformers (a fresh process that only samples a video stays light); `vision_layout_llava_onevision2`
re-exports it for the image and video processors."""

from __future__ import annotations

import math

MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int, budget_on_source: bool = False
) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area within [min_pixels, max_pixels], aspect kept.

    Each side is first rounded to the nearest multiple (Python rounding, half to even); if the area is then too
    large both sides shrink by the same factor and round down, if too small they grow and round up. The image
    processors test the rounded area; the codec canvases test the source area (`budget_on_source=True`), as the
    released codec tool does, so a canvas can end slightly above `max_pixels`.
    """
    if min(height, width) <= 0:
        raise ValueError(f"Image size must be positive, got {height}x{width}.")
    if min_pixels > max_pixels:
        raise ValueError(
            f"min_pixels ({min_pixels}) exceeds max_pixels ({max_pixels}); lower min_pixels or raise max_pixels."
        )
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"Image aspect ratio {max(height, width) / min(height, width):.1f} ({height}x{width}) exceeds "
            f"{MAX_ASPECT_RATIO}; crop or pad it first."
        )
    resized_h = max(factor, round(height / factor) * factor)
    resized_w = max(factor, round(width / factor) * factor)
    area = height * width if budget_on_source else resized_h * resized_w
    if area > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        resized_h = max(factor, math.floor(height / beta / factor) * factor)
        resized_w = max(factor, math.floor(width / beta / factor) * factor)
    elif area < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_h = math.ceil(height * beta / factor) * factor
        resized_w = math.ceil(width * beta / factor) * factor
    return resized_h, resized_w


__all__ = ["MAX_ASPECT_RATIO", "smart_resize"]
