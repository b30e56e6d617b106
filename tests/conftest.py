"""Tiny configurations and input builders shared by the test modules.

The tiny model (the "tiny" preset, at patch 4 with 2-frame attention windows) still reaches every path: vision
head_dim 32 (the smallest the 4:6:6 rotary split allows), merge 2, GQA in the text model.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from llava_onevision2.modeling import LlavaOnevision2Config, LlavaOnevision2ForConditionalGeneration


def use_a_private_codec_cache() -> None:
    """Codec sampling caches under the released default root unless told otherwise: keep test runs out of ~/.cache
    with a folder of their own (subprocesses inherit it), removed when the session ends."""
    if "ONLINE_CODEC_CACHE_DIR" in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="ov2-test-codec-cache-")
    os.environ["ONLINE_CODEC_CACHE_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


use_a_private_codec_cache()

PAD, BOS, EOS, VISION_START, VISION_END, IMAGE, VIDEO = 0, 1, 2, 3, 4, 5, 6
MERGE = 2
PATCH = 4
ROW_WIDTH = 3 * PATCH * PATCH


def tiny_config(vision: dict | None = None, text: dict | None = None, **top) -> LlavaOnevision2Config:
    """The "tiny" preset at the tests' patch size and window, sized to the tests' tokenizer."""
    vision_config = {"patch_size": PATCH, "spatial_merge_size": MERGE, "frame_windows_size": 2, **(vision or {})}
    text_config = {"vocab_size": 96, "pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS, **(text or {})}
    return LlavaOnevision2Config.from_preset("tiny", vision_config=vision_config, text_config=text_config, **top)


def tiny_model(attn: str | dict = "sdpa", seed: int = 0, config: LlavaOnevision2Config | None = None, cls=None):
    cls = cls or LlavaOnevision2ForConditionalGeneration
    torch.manual_seed(seed)
    model = cls._from_config(config or tiny_config(), attn_implementation=attn)
    return model.eval()


def tokens_for(grid: list[list[int]] | torch.Tensor) -> int:
    grid = torch.as_tensor(grid)
    return int(grid.prod(-1).sum()) // MERGE**2


def pixels_for(grid: list[list[int]], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tokens_for(grid) * MERGE**2, ROW_WIDTH, generator=generator)


def prompt(*segments) -> list[int]:
    """Token ids from segments: a list of text ids, or ("image" | "video", number_of_placeholder_tokens)."""
    ids = [BOS]
    for segment in segments:
        if isinstance(segment, tuple):
            kind, count = segment
            ids += [VISION_START] + [IMAGE if kind == "image" else VIDEO] * count + [VISION_END]
        else:
            ids += list(segment)
    return ids


@pytest.fixture(autouse=True)
def codec_cache_per_test(monkeypatch, tmp_path_factory):
    """Each test samples into its own codec cache, so no test sees another's results."""
    monkeypatch.setenv("ONLINE_CODEC_CACHE_DIR", str(tmp_path_factory.mktemp("codec-cache")))


@pytest.fixture
def model():
    return tiny_model()


# -- processing fixtures --------------------------------------------------------------------------------------------

CORPUS = [
    "You are a helpful assistant.",
    "Describe the image. What happens in the video? The red square moves to the right.",
    "system user assistant seconds 0123456789 . , ! ? : ; < > \n",
    "A blue circle, a green triangle and a yellow star on a white background.",
]


def tiny_tokenizer():
    """A byte-level BPE Qwen2 tokenizer trained in memory (no download), with the Qwen special tokens."""
    from llava_onevision2.training.toy import build_tokenizer

    return build_tokenizer(CORPUS)


# -- checkpoint folders ---------------------------------------------------------------------------------------------


def tiny_overrides(processor) -> dict:
    tokenizer = processor.tokenizer
    return {
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "patch_size": 8,
            "out_hidden_size": 64,
        },
        "text_config": {
            "model_type": "qwen3",
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        "image_token_id": processor.image_token_id,
        "video_token_id": processor.video_token_id,
        "vision_start_token_id": processor.vision_start_token_id,
        "vision_end_token_id": processor.vision_end_token_id,
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A trained-checkpoint-like folder: tiny random model plus the toy processor."""
    folder = tmp_path_factory.mktemp("checkpoint")
    from llava_onevision2.training.toy import build_toy_processor

    processor = build_toy_processor(str(folder))
    torch.manual_seed(0)
    model = LlavaOnevision2ForConditionalGeneration._from_config(LlavaOnevision2Config(**tiny_overrides(processor)))
    model.save_pretrained(folder)
    return folder


def released_layout(checkpoint: Path, folder: Path) -> Path:
    """A folder as the release ships it: release weight names, upstream config and preprocessor config."""
    folder.mkdir()
    shutil.copy2(checkpoint / "model.safetensors", folder / "model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(checkpoint / name, folder / name)
    config = json.loads((checkpoint / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_llava_onevision2.LlavaOnevision2Config",
        "AutoModelForImageTextToText": "modeling_llava_onevision2.LlavaOnevision2ForConditionalGeneration",
    }
    config["vision_config"]["model_type"] = "llava_onevision2"  # the pre-2026-04-30 spelling
    config["vision_config"]["use_patch_position_encoding"] = False
    config["vision_config"]["rope_theta"] = 10000  # an int, as some writers emit it
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Qwen2VLImageProcessor",
                "patch_size": 8,
                "merge_size": 2,
                "temporal_patch_size": 1,
                "min_pixels": 4096,
                "max_pixels": 8192,
                "codec": {
                    "target_canvas": 16,
                    "group_size": 32,
                    "images_per_group": 4,
                    "max_pixels": 150000,
                    "min_group_frames": 8,
                    "max_group_frames": 64,
                    "spatial_mask_mode": "off",
                    "cache_root": "/tmp",
                    "timeout": 7200,
                },
            }
        )
    )
    return folder
