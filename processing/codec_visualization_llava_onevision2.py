"""A picture of what codec sampling hands the model, readable at a glance.

One band per group: a label (frames and seconds the group spans, tokens it costs), the sampled frames that gave it
tokens (the anchor framed green, each block sent in a collage shaded red), each captioned with its frame index and
time, then an arrow and the canvases the model actually sees, each captioned with its token count. A title states the
totals (canvases, visual tokens, source frames reached); a legend explains the marks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .codec_sampling_llava_onevision2 import CodecSample, CodecSamplingConfig, sample_codec_video
from .vision_layout_llava_onevision2 import merged_token_count

ANCHOR_COLOUR = (40, 200, 60)
BLOCK_COLOUR = (235, 40, 40)
BACKGROUND = (250, 250, 250)
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)
RULE = (200, 200, 200)
GAP = 8
MARGIN = 12


@dataclass
class SelectionSummary:
    """The numbers the picture prints (also handy on their own)."""

    groups: int
    canvases: int
    visual_tokens: int
    tokens_per_canvas: int
    frames_reached: int
    frames_sampled: int
    total_frames: int
    duration: float

    @property
    def title(self) -> str:
        return (
            f"Codec sampling: {self.canvases} canvases = {self.visual_tokens} visual tokens "
            f"({self.tokens_per_canvas} per canvas), from {self.frames_reached} of {self.total_frames} frames "
            f"({self.duration:.1f} s) in {self.groups} group{'s' if self.groups != 1 else ''}"
        )


def counted(count: int, noun: str) -> str:
    """A count with its noun, plural unless the count is one: "1 block", "2 blocks"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def summarize_selection(sample: CodecSample, config: CodecSamplingConfig) -> SelectionSummary:
    grid_h, grid_w = sample.grid
    tokens_per_canvas = merged_token_count((1, grid_h, grid_w), config.merge)
    return SelectionSummary(
        groups=len(sample.groups),
        canvases=len(sample.canvases),
        visual_tokens=len(sample.canvases) * tokens_per_canvas,
        tokens_per_canvas=tokens_per_canvas,
        frames_reached=len({int(t) for t in sample.positions[:, 0] if t >= 0}),
        frames_sampled=len(sample.candidate_ids),
        total_frames=int(sample.report["total_frames"]),
        duration=float(sample.report["duration"]),
    )


def visualize_codec_selection(
    source,
    output_path: str,
    config: CodecSamplingConfig | None = None,
    max_groups: int = 4,
    max_frames_per_group: int = 8,
    thumbnail_height: int = 160,
) -> CodecSample:
    """Sample `source` with codec selection and write the picture (PNG) to `output_path`; returns the sample.

    Frames and canvases are drawn `thumbnail_height` pixels tall (small videos are enlarged with sharp pixels, so a
    64-pixel toy clip stays legible). At most `max_groups` groups and `max_frames_per_group` frames per group are
    drawn; the labels say how many were left out.
    """
    config = config or CodecSamplingConfig()
    sample = sample_codec_video(source, config, keep_candidates=True)
    summary = summarize_selection(sample, config)
    font, small = fonts()
    scale = thumbnail_height / sample.candidate_frames.shape[1]
    bands, canvas_offset = [], 0
    for number, (group, selected) in enumerate(zip(sample.groups, sample.selected), start=1):
        canvases = sample.canvases[canvas_offset : canvas_offset + group["canvases"]]
        canvas_offset += group["canvases"]
        if number <= max_groups:
            bands.append(
                group_band(
                    sample, config, number, group, selected, canvases, scale, summary, small, max_frames_per_group
                )
            )
    if len(sample.groups) > max_groups:
        bands.append(
            text_tile([f"... {counted(len(sample.groups) - max_groups, 'more group')} not drawn"], small, MUTED)
        )
    picture = stack_vertically([text_tile([summary.title], font, TEXT), *bands, legend(summary, small)])
    picture.save(output_path, format="PNG")
    return sample


# -- pieces -----------------------------------------------------------------------------------------------------------


def fonts():
    try:
        return ImageFont.load_default(size=15), ImageFont.load_default(size=13)
    except TypeError:  # Pillow built without FreeType: one fixed size
        default = ImageFont.load_default()
        return default, default


def group_band(
    sample, config, number, group, selected, canvases, scale, summary, small, max_frames_per_group
) -> Image.Image:
    """One group: label, its frames (anchor and those that gave blocks), an arrow, its canvases."""
    seconds = dict(zip(sample.candidate_ids, sample.candidate_times))
    members = [i for i, t in enumerate(sample.candidate_ids) if group["first_frame"] <= t <= group["last_frame"]]
    blocks_per_frame: dict[int, int] = {}
    for t, _, _ in selected:
        blocks_per_frame[t] = blocks_per_frame.get(t, 0) + 1
    anchor = [i for i in members if sample.candidate_ids[i] == group["anchor_frame"]]
    givers = [i for i in members if sample.candidate_ids[i] in blocks_per_frame]  # the anchor never gives blocks
    shown = anchor + givers[: max(0, max_frames_per_group - len(anchor))]
    tokens = group["canvases"] * summary.tokens_per_canvas
    label = [
        f"Group {number}",
        f"frames {group['first_frame']}-{group['last_frame']}",
        f"{seconds[group['first_frame']]:.1f}-{seconds[group['last_frame']]:.1f} s",
        f"{tokens} tokens",
    ]
    if len(anchor) + len(givers) > len(shown):
        label.append(f"({counted(len(anchor) + len(givers) - len(shown), 'frame')} not drawn)")
    tiles = [text_tile(label, small, TEXT, width=150)]
    block_px = config.patch * config.merge
    for index in sorted(set(shown)):
        frame_id = sample.candidate_ids[index]
        picture = marked_frame(sample, index, selected, group["anchor_frame"], block_px, scale)
        role = "anchor (whole)" if frame_id == group["anchor_frame"] else counted(blocks_per_frame[frame_id], "block")
        tiles.append(captioned(picture, [f"frame {frame_id} · {seconds[frame_id]:.1f} s", role], small))
    tiles.append(arrow_tile(round(sample.candidate_frames.shape[1] * scale)))
    for position, canvas in enumerate(canvases):
        kind = "anchor canvas" if position == 0 else "collage"
        tiles.append(
            captioned(enlarged(Image.fromarray(canvas), scale), [kind, f"{summary.tokens_per_canvas} tokens"], small)
        )
    return stack_horizontally(tiles)


def marked_frame(sample: CodecSample, index: int, selected, anchor_frame: int, block_px: int, scale: float):
    """The frame enlarged, the anchor framed green, each selected block shaded and outlined red."""
    frame_id = sample.candidate_ids[index]
    image = enlarged(Image.fromarray(sample.candidate_frames[index]), scale).convert("RGBA")
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    if frame_id == anchor_frame:
        draw.rectangle([0, 0, image.width - 1, image.height - 1], outline=ANCHOR_COLOUR + (255,), width=5)
    step = block_px * scale
    for t, block_row, block_col in selected:
        if t == frame_id:
            box = [block_col * step, block_row * step, (block_col + 1) * step - 1, (block_row + 1) * step - 1]
            draw.rectangle(box, fill=BLOCK_COLOUR + (70,), outline=BLOCK_COLOUR + (255,), width=2)
    return Image.alpha_composite(image, overlay).convert("RGB")


def enlarged(image: Image.Image, scale: float) -> Image.Image:
    """Scaled by `scale`; enlarging keeps pixels sharp (a 64-pixel clip stays readable), shrinking smooths."""
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.NEAREST if scale >= 1 else Image.BILINEAR)


def text_size(text: str, font) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def text_tile(lines: list[str], font, colour, width: int | None = None) -> Image.Image:
    line_height = max(text_size("Ag", font)[1], 10) + 5
    width = width or max(text_size(line, font)[0] for line in lines) + 4
    tile = Image.new("RGB", (width, line_height * len(lines) + 4), BACKGROUND)
    draw = ImageDraw.Draw(tile)
    for row, line in enumerate(lines):
        draw.text((2, 2 + row * line_height), line, fill=colour, font=font)
    return tile


def captioned(picture: Image.Image, lines: list[str], font) -> Image.Image:
    caption = text_tile(lines, font, MUTED, width=max(picture.width, max(text_size(x, font)[0] for x in lines) + 4))
    tile = Image.new("RGB", (caption.width, picture.height + caption.height + 2), BACKGROUND)
    tile.paste(picture, (0, 0))
    tile.paste(caption, (0, picture.height + 2))
    return tile


def arrow_tile(height: int) -> Image.Image:
    tile = Image.new("RGB", (36, height), BACKGROUND)
    draw = ImageDraw.Draw(tile)
    middle = height // 2
    draw.line([(4, middle), (30, middle)], fill=MUTED, width=3)
    draw.polygon([(30, middle - 7), (35, middle), (30, middle + 7)], fill=MUTED)
    return tile


def legend(summary: SelectionSummary, font) -> Image.Image:
    entries = [
        (ANCHOR_COLOUR, "anchor frame: sent whole, as the group's first canvas"),
        (BLOCK_COLOUR, "block sent in a collage (keeps its frame time and place as positions)"),
    ]
    rows = []
    for colour, text in entries:
        swatch = Image.new("RGB", (18, 18), BACKGROUND)
        ImageDraw.Draw(swatch).rectangle([0, 0, 17, 17], outline=colour, width=3)
        rows.append(stack_horizontally([swatch, text_tile([text], font, TEXT)], gap=6))
    note = f"Each canvas is {summary.tokens_per_canvas} visual tokens; frames without marks were sampled and skipped."
    rows.append(text_tile([note], font, MUTED))
    return stack_vertically(rows, gap=2, rules=False)


def stack_horizontally(tiles: list[Image.Image], gap: int = GAP) -> Image.Image:
    width = sum(tile.width for tile in tiles) + gap * (len(tiles) - 1)
    height = max(tile.height for tile in tiles)
    band = Image.new("RGB", (width, height), BACKGROUND)
    left = 0
    for tile in tiles:
        band.paste(tile, (left, 0))
        left += tile.width + gap
    return band


def stack_vertically(bands: list[Image.Image], gap: int = GAP, rules: bool = True) -> Image.Image:
    """Bands one under the other inside a margin; `rules` draws a line between bands (the group boundaries)."""
    width = max(band.width for band in bands) + 2 * MARGIN
    height = sum(band.height for band in bands) + 2 * gap * (len(bands) - 1) + 2 * MARGIN
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    top = MARGIN
    for number, band in enumerate(bands):
        if number and rules:
            draw.line([(MARGIN, top - gap), (width - MARGIN, top - gap)], fill=RULE, width=1)
        picture.paste(band, (MARGIN, top))
        top += band.height + 2 * gap
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


__all__ = ["SelectionSummary", "selection_mask", "summarize_selection", "visualize_codec_selection"]
