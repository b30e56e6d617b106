"""A picture of what codec sampling hands the model: sampled frames with the chosen blocks outlined, beside the
packed canvases, one row per group."""

import numpy as np
from PIL import Image, ImageDraw

from .codec_sampling_llava_onevision2 import CodecSample, CodecSamplingConfig, sample_codec_video

ANCHOR_COLOUR = (40, 200, 60)
BLOCK_COLOUR = (235, 40, 40)
BACKGROUND = (24, 24, 24)


def visualize_codec_selection(
    source,
    output_path: str,
    config: CodecSamplingConfig | None = None,
    max_groups: int = 4,
    max_frames_per_group: int = 8,
    thumbnail_height: int = 96,
) -> CodecSample:
    """Sample `source` with codec selection and write a PNG to `output_path`; returns the sample.

    Each row shows up to `max_frames_per_group` sampled frames of one group (the anchor framed green, selected blocks
    outlined red), then that group's canvases (anchor canvas first, then the block collages).
    """
    config = config or CodecSamplingConfig()
    sample = sample_codec_video(source, config, keep_candidates=True)
    block_px = config.patch * config.merge
    scale = thumbnail_height / sample.candidate_frames.shape[1]
    rows, canvas_offset = [], 0
    for group, selected in list(zip(sample.groups, sample.selected))[:max_groups]:
        members = [i for i, t in enumerate(sample.candidate_ids) if group["first_frame"] <= t <= group["last_frame"]]
        chosen_frames = {t for t, _, _ in selected}
        shown = [i for i in members if sample.candidate_ids[i] == group["anchor_frame"]]
        shown += [i for i in members if sample.candidate_ids[i] in chosen_frames][: max_frames_per_group - 1]
        tiles = [
            outlined_frame(sample, index, selected, group["anchor_frame"], block_px, scale) for index in sorted(shown)
        ]
        canvases = sample.canvases[canvas_offset : canvas_offset + group["canvases"]]
        canvas_offset += group["canvases"]
        tiles.append(Image.new("RGB", (8, thumbnail_height), BACKGROUND))
        tiles += [resized(Image.fromarray(canvas), scale) for canvas in canvases]
        rows.append(tiles)
    picture = compose(rows, gap=4)
    picture.save(output_path, format="PNG")
    return sample


def outlined_frame(sample: CodecSample, index: int, selected, anchor_frame: int, block_px: int, scale: float):
    frame_id = sample.candidate_ids[index]
    image = Image.fromarray(sample.candidate_frames[index])
    draw = ImageDraw.Draw(image)
    if frame_id == anchor_frame:
        draw.rectangle([0, 0, image.width - 1, image.height - 1], outline=ANCHOR_COLOUR, width=4)
    for t, block_row, block_col in selected:
        if t == frame_id:
            left, top = block_col * block_px, block_row * block_px
            draw.rectangle([left, top, left + block_px - 1, top + block_px - 1], outline=BLOCK_COLOUR, width=2)
    return resized(image, scale)


def resized(image: Image.Image, scale: float) -> Image.Image:
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)


def compose(rows: list[list[Image.Image]], gap: int) -> Image.Image:
    width = max((sum(tile.width for tile in row) + gap * (len(row) - 1) for row in rows), default=1)
    height = sum(max(tile.height for tile in row) for row in rows) + gap * max(0, len(rows) - 1)
    picture = Image.new("RGB", (max(1, width), max(1, height)), BACKGROUND)
    top = 0
    for row in rows:
        left = 0
        for tile in row:
            picture.paste(tile, (left, top))
            left += tile.width + gap
        top += max(tile.height for tile in row) + gap
    return picture


def selection_mask(sample: CodecSample, config: CodecSamplingConfig) -> np.ndarray:
    """`[T, H, W]` bool: which pixels of each sampled frame went into the canvases (anchors entirely)."""
    block_px = config.patch * config.merge
    frames, height, width = sample.candidate_frames.shape[:3]
    mask = np.zeros((frames, height, width), dtype=bool)
    position = {t: i for i, t in enumerate(sample.candidate_ids)}
    for group, selected in zip(sample.groups, sample.selected):
        mask[position[group["anchor_frame"]]] = True
        for t, block_row, block_col in selected:
            mask[
                position[t],
                block_row * block_px : (block_row + 1) * block_px,
                block_col * block_px : (block_col + 1) * block_px,
            ] = True
    return mask


__all__ = ["selection_mask", "visualize_codec_selection"]
