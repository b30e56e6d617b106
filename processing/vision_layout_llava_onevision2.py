"""Resizing, patch order and token counts shared by the image, video and codec paths.

One source of truth on the processing side (the model keeps its own copy of the block layout, because remote-code
files in `processing/` may not import `modeling/`; tests check that the two agree):

- `smart_resize` (defined in `resize_rule_llava_onevision2.py`, which needs neither torch nor transformers, so the
  codec sampler can import it alone): the released resize rule (multiples of patch x merge, pixel budget, aspect
  ratio <= 200);
- `patchify`: frames -> pixel rows in block layout (each merge x merge group of patches contiguous);
- `block_layout_positions`: the (t, h, w) of every row, in that same order;
- `merged_token_count`: how many placeholder tokens a grid row becomes;
- `VISUAL_KEYS` / `VisualItem` / `join_items`: which output keys hold an image's or a video's rows, and how items
  (one image, one sampled video) are concatenated under them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.image_utils import SizeDict

from .resize_rule_llava_onevision2 import smart_resize


def patchify(frames: torch.Tensor, patch_size: int, merge_size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """`[T, C, H, W]` frames -> `[T * H/P * W/P, C * P * P]` rows, frame by frame, each frame in block layout.

    A row is one patch flattened channel-major (C, P, P). H and W must be multiples of P * merge. `out`: a
    contiguous tensor of that shape to write the rows into (one copy instead of two).
    """
    num_frames, channels, height, width = frames.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    if grid_h * patch_size != height or grid_w * patch_size != width or grid_h % merge_size or grid_w % merge_size:
        raise ValueError(f"Frame size {height}x{width} is not a multiple of patch {patch_size} x merge {merge_size}.")
    patches = frames.reshape(
        num_frames,
        channels,
        grid_h // merge_size,
        merge_size,
        patch_size,
        grid_w // merge_size,
        merge_size,
        patch_size,
    )
    # -> [T, h/m, w/m, m (row), m (col), C, P, P]
    patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7)
    if out is None:
        return patches.reshape(num_frames * grid_h * grid_w, channels * patch_size * patch_size)
    out.view(patches.shape).copy_(patches)
    return out


def block_layout_positions(frame_positions: Sequence[int], grid_h: int, grid_w: int, merge_size: int) -> torch.Tensor:
    """(t, h, w) of every row `patchify` produces for frames whose temporal positions are `frame_positions`.

    Returns `[len(frame_positions) * grid_h * grid_w, 3]` int64; h / w are patch coordinates inside the frame.
    """
    rows = (
        torch.arange(grid_h)
        .view(grid_h // merge_size, 1, merge_size, 1)
        .expand(-1, grid_w // merge_size, -1, merge_size)
    )
    cols = (
        torch.arange(grid_w)
        .view(1, grid_w // merge_size, 1, merge_size)
        .expand(grid_h // merge_size, -1, merge_size, -1)
    )
    spatial = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)  # [h*w, 2] in block order
    t = torch.as_tensor(list(frame_positions), dtype=torch.long).repeat_interleave(grid_h * grid_w)
    return torch.cat([t[:, None], spatial.repeat(len(frame_positions), 1)], dim=-1)


def merged_token_count(grid_row: Sequence[int] | torch.Tensor, merge_size: int) -> int:
    """Placeholder tokens of one (t, h, w) grid row: every merge x merge patch block becomes one token."""
    t, h, w = (int(v) for v in grid_row)
    return t * h * w // merge_size**2


# Output keys per placeholder kind: pixel rows, grid rows (t, h, w), (t, h, w) position of every pixel row. The
# model reads the same names (it keeps its own copy: remote-code files in `modeling/` may not import these).
VISUAL_KEYS = {
    "image": ("pixel_values", "image_grid_thw", "patch_positions"),
    "video": ("pixel_values_videos", "video_grid_thw", "video_patch_positions"),
}


@dataclass
class VisualItem:
    """One image or one sampled video as model inputs, and which placeholder (`fills`: "image" or "video") its
    tokens repeat, which also names the keys that hold its rows."""

    pixel_values: torch.Tensor  # [N, C * P * P]
    grid_thw: torch.Tensor  # [R, 3] int64
    positions: torch.Tensor  # [N, 3] int64
    fills: str


def split_items(outputs, fills: str, rows_per_item: Sequence[int] | None = None) -> list[VisualItem]:
    """The items held under the `fills` keys of a processor output; one grid row per item unless given."""
    pixel_key, grid_key, positions_key = VISUAL_KEYS[fills]
    if pixel_key not in outputs:
        return []
    grids = torch.as_tensor(outputs[grid_key])
    pixels, positions = torch.as_tensor(outputs[pixel_key]), torch.as_tensor(outputs[positions_key])
    items, grid_start, pixel_start = [], 0, 0
    for count in rows_per_item or [1] * len(grids):
        item_grids = grids[grid_start : grid_start + count]
        patches = int(item_grids.prod(-1).sum())
        rows = slice(pixel_start, pixel_start + patches)
        items.append(VisualItem(pixels[rows], item_grids, positions[rows], fills))
        grid_start, pixel_start = grid_start + count, pixel_start + patches
    return items


def concatenated(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """`torch.cat` that hands back a lone tensor as it is: one long video's pixel rows (gigabytes at the released
    defaults) are then never held twice."""
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors))


def join_items(items: Sequence[VisualItem], as_numpy: bool = False) -> dict:
    """Concatenate items, in the order given, under the keys their `fills` names (kinds with no item get no keys)."""
    joined = {}
    for fills, (pixel_key, grid_key, positions_key) in VISUAL_KEYS.items():
        chosen = [item for item in items if item.fills == fills]
        if not chosen:
            continue
        joined[pixel_key] = concatenated([item.pixel_values for item in chosen])
        joined[grid_key] = concatenated([item.grid_thw.view(-1, 3) for item in chosen]).long()
        joined[positions_key] = concatenated([item.positions for item in chosen]).long()
    if as_numpy:
        joined = {key: np.asarray(value) for key, value in joined.items()}
    return joined


def pixel_bounds(size, min_pixels: int | None = None, max_pixels: int | None = None) -> dict:
    """`{"shortest_edge": min, "longest_edge": max}` from a size mapping and optional explicit bounds.

    Older Qwen2-VL configs spell the bounds `size = {"min_pixels", "max_pixels"}`; both spellings are read. Explicit
    bounds win over `size`. Raises when a bound is missing or not a positive integer. The order of the two is checked
    where they are used (`smart_resize`), so that they can be assigned one after the other in either order.
    """
    size = dict(size or {})
    bounds = {
        "shortest_edge": size.get("shortest_edge", size.get("min_pixels")),
        "longest_edge": size.get("longest_edge", size.get("max_pixels")),
    }
    if min_pixels is not None:
        bounds["shortest_edge"] = min_pixels
    if max_pixels is not None:
        bounds["longest_edge"] = max_pixels
    for key, name in (("shortest_edge", "min_pixels"), ("longest_edge", "max_pixels")):
        value = bounds[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or value != int(value):
            raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}.")
        bounds[key] = int(value)
    return bounds


class PixelBudgetMixin:
    """`min_pixels` / `max_pixels` (the names released configs and lmms-eval use) as the two bounds of an image/video
    processor's `size = {"shortest_edge": min, "longest_edge": max}`: at construction, at call time, as settable
    attributes (`processor.image_processor.max_pixels = ...` changes the budget of later calls) and in the saved
    config. `size` stays the single stored value, so the two spellings cannot disagree."""

    def __init__(self, **kwargs):
        size = pixel_bounds(
            kwargs.pop("size", None) or self.size, kwargs.pop("min_pixels", None), kwargs.pop("max_pixels", None)
        )
        super().__init__(size=size, **kwargs)

    @property
    def min_pixels(self) -> int:
        return self.size["shortest_edge"]

    @min_pixels.setter
    def min_pixels(self, value: int) -> None:
        self.size = SizeDict(**pixel_bounds(self.size, min_pixels=value))

    @property
    def max_pixels(self) -> int:
        return self.size["longest_edge"]

    @max_pixels.setter
    def max_pixels(self, value: int) -> None:
        self.size = SizeDict(**pixel_bounds(self.size, max_pixels=value))

    def to_dict(self) -> dict:
        # Written next to `size` for tools that read the released key names from preprocessor_config.json.
        return {**super().to_dict(), "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}

    def _standardize_kwargs(self, size=None, min_pixels: int | None = None, max_pixels: int | None = None, **kwargs):
        if min_pixels is not None or max_pixels is not None:
            size = SizeDict(**pixel_bounds(size if size is not None else self.size, min_pixels, max_pixels))
        return super()._standardize_kwargs(size=size, **kwargs)


__all__ = [
    "VISUAL_KEYS",
    "PixelBudgetMixin",
    "VisualItem",
    "join_items",
    "split_items",
    "pixel_bounds",
    "block_layout_positions",
    "merged_token_count",
    "patchify",
    "smart_resize",
]
