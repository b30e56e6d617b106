"""Image processor: parity with transformers' Qwen2-VL processor, positions, token counts and bad images."""

import numpy as np
import PIL.Image
import pytest
import torch
from synthetic_media import solid_image
from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil

from llava_onevision2.modeling.vision_geometry_llava_onevision2 import (
    block_layout_positions as model_block_layout_positions,
)
from llava_onevision2.processing.image_processing_llava_onevision2 import LlavaOnevision2ImageProcessor
from llava_onevision2.processing.vision_layout_llava_onevision2 import merged_token_count, smart_resize

SIZES = [(300, 400), (57, 1000), (1000, 1000), (30, 40), (448, 448), (2100, 1500)]


@pytest.mark.parametrize(
    ("resize_backend", "reference_class"),
    [("pil", Qwen2VLImageProcessorPil), ("torchvision", Qwen2VLImageProcessor)],
)
def test_pixel_values_and_grids_equal_qwen2vl_processor(resize_backend, reference_class):
    images = [solid_image(w, h, value=i) for i, (h, w) in enumerate(SIZES)]
    ours = LlavaOnevision2ImageProcessor(resize_backend=resize_backend)
    reference = reference_class(
        patch_size=14, merge_size=2, temporal_patch_size=1, min_pixels=ours.min_pixels, max_pixels=ours.max_pixels
    )
    a, b = ours(images, return_tensors="pt"), reference(images, return_tensors="pt")
    assert torch.equal(a["image_grid_thw"], b["image_grid_thw"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_unknown_resize_backend_is_an_error():
    with pytest.raises(ValueError, match="resize_backend must be one of"):
        LlavaOnevision2ImageProcessor(resize_backend="cv2")


def test_release_defaults():
    processor = LlavaOnevision2ImageProcessor()
    assert (processor.patch_size, processor.merge_size, processor.temporal_patch_size) == (14, 2, 1)
    assert (processor.min_pixels, processor.max_pixels) == (200_704, 4_000_000)
    assert list(processor.image_mean) == [0.48145466, 0.4578275, 0.40821073]
    assert processor.resample == PIL.Image.BICUBIC


def test_outputs_positions_in_block_layout_and_token_counts():
    processor = LlavaOnevision2ImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 64)
    out = processor([solid_image(200, 120), solid_image(64, 64)], return_tensors="pt")
    grids = out["image_grid_thw"]
    assert out["pixel_values"].shape == (int(grids.prod(-1).sum()), 3 * 14 * 14)
    # The processor's positions equal the model's own block layout for the same grid (t = 0 for images).
    assert torch.equal(out["patch_positions"], model_block_layout_positions(grids, 2))
    assert [merged_token_count(g, 2) for g in grids] == [int(g.prod()) // 4 for g in grids]
    assert processor.get_number_of_image_tokens(120, 200) == merged_token_count(grids[0], 2)


def test_patch_rows_are_channel_major_blocks():
    """Row 1 of the output is the patch right of row 0 (same 2x2 block), flattened as (C, P, P)."""
    processor = LlavaOnevision2ImageProcessor(
        min_pixels=56 * 56, max_pixels=56 * 56, do_rescale=False, do_normalize=False, do_resize=False
    )
    image = np.zeros((56, 56, 3), dtype=np.uint8)
    image[:14, 14:28, 0] = 200  # patch (0, 1), red channel
    image[14:28, :14, 2] = 100  # patch (1, 0), blue channel
    image[:14, 28:42, 1] = 50  # patch (0, 2): first patch of the second block
    rows = processor(PIL.Image.fromarray(image), return_tensors="pt")["pixel_values"].view(-1, 3, 14, 14)
    assert rows[1, 0].unique().tolist() == [200] and rows[1, 1:].abs().sum() == 0
    assert rows[2, 2].unique().tolist() == [100]
    assert rows[4, 1].unique().tolist() == [50]


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(448, 448, (448, 448)), (100, 100, (448, 448)), (3000, 2000, (2436, 1624)), (29, 57, (336, 644))],
)
def test_smart_resize_rule(height, width, expected):
    assert smart_resize(height, width, 28, 200_704, 4_000_000) == expected


def test_extreme_aspect_ratio_is_rejected():
    with pytest.raises(ValueError, match="aspect ratio 250.0"):
        LlavaOnevision2ImageProcessor()(solid_image(2500, 10))


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    solid_image(300, 300).save(path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100 * 100 // 2)
    with pytest.raises(ValueError, match=r"big\.png exceeds the decompression-bomb limit"):
        LlavaOnevision2ImageProcessor().fetch_images(str(path))
    with pytest.raises(ValueError, match="Image 0 has 300x300 = 90000 pixels, over the decompression-bomb limit"):
        LlavaOnevision2ImageProcessor()(solid_image(300, 300))


def test_missing_and_unreadable_image_files(tmp_path):
    processor = LlavaOnevision2ImageProcessor()
    with pytest.raises(FileNotFoundError, match="nope.png"):
        processor.fetch_images(str(tmp_path / "nope.png"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ValueError, match=r"Could not read image .*broken\.jpg"):
        processor.fetch_images(str(broken))
