"""Configuration: release defaults, presets, parameter counts and every config.json shape seen upstream."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError

from conftest import tiny_config
from llava_onevision2.modeling import (
    PRESETS,
    LlavaOnevision2Config,
    LlavaOnevision2ForConditionalGeneration,
    LlavaOnevision2VisionConfig,
)


def test_defaults_are_the_released_8b():
    config = LlavaOnevision2Config()
    vision, text = config.vision_config, config.text_config
    assert config.model_type == "llava_onevision2" and vision.model_type == "onevision_encoder"
    assert (vision.patch_size, vision.spatial_merge_size, vision.frame_windows_size) == (14, 2, 4)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (1024, 24, 16)
    assert vision.out_hidden_size == text.hidden_size == 4096
    assert text.model_type == "qwen3"
    assert (text.num_hidden_layers, text.num_key_value_heads, text.intermediate_size) == (36, 8, 12288)
    assert text.rope_parameters["rope_theta"] == 8_000_000
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    assert config.eos_token_id == 151645 and config.tie_word_embeddings is False


@pytest.mark.parametrize(
    ("name", "total", "merger", "tensors"),
    [
        ("8b", 8_527_213_568, 33_564_672, 696),
        ("4b", 4_741_609_472, 27_271_680, 696),
        ("4b-p16m3", 4_823_063_552, 108_541_440, 696),
    ],
)
def test_preset_parameter_counts_on_meta_device(name, total, merger, tensors):
    with torch.device("meta"):
        model = LlavaOnevision2ForConditionalGeneration(LlavaOnevision2Config.from_preset(name))
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.model.visual.merger.parameters()) == merger
    assert len(model.state_dict()) == tensors


def test_8b_parts_and_shapes():
    with torch.device("meta"):
        model = LlavaOnevision2ForConditionalGeneration(LlavaOnevision2Config())
    visual = model.model.visual
    assert sum(p.numel() for n, p in visual.named_parameters() if not n.startswith("merger")) == 302_913_536
    assert sum(p.numel() for p in model.model.language_model.parameters()) == 7_568_405_504
    assert model.lm_head.weight.numel() == 622_329_856
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["model.visual.embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert shapes["model.visual.encoder.layers.0.self_attn.qkv.weight"] == (3072, 1024)
    assert shapes["model.visual.merger.mlp.0.weight"] == (4096, 4096)
    assert shapes["model.language_model.layers.0.self_attn.k_proj.weight"] == (1024, 4096)
    assert shapes["model.language_model.layers.0.self_attn.q_norm.weight"] == (128,)
    assert "model.visual.embeddings.patch_embedding.bias" not in shapes


def test_all_presets_build_and_moe_resolves():
    assert set(PRESETS) == {"tiny", "8b", "4b", "4b-p16m3", "2b", "30b-a3b"}
    tiny = LlavaOnevision2Config.from_preset("tiny", vision_config={"patch_size": 4}, text_config={"vocab_size": 96})
    # Nested overrides merge into the preset's sub-configs key by key.
    assert (tiny.vision_config.patch_size, tiny.vision_config.hidden_size) == (4, 64)
    assert (tiny.text_config.vocab_size, tiny.text_config.hidden_size) == (96, 128)
    assert LlavaOnevision2Config.from_preset("custom", **PRESETS["tiny"]).to_dict() == (
        LlavaOnevision2Config.from_preset("tiny").to_dict()
    )
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        LlavaOnevision2Config.from_preset("huge")
    moe = LlavaOnevision2Config.from_preset("30b-a3b")
    assert moe.text_config.model_type == "qwen3_moe" and moe.text_config.num_experts == 128
    with torch.device("meta"):
        model = LlavaOnevision2ForConditionalGeneration(moe)
    assert "Qwen3MoeDecoderLayer" in model._no_split_modules
    assert LlavaOnevision2Config.from_preset("4b-p16m3").vision_config.patch_size == 16
    with pytest.raises(ValueError, match="Unknown preset 'nope'"):
        LlavaOnevision2Config.from_preset("nope")


UPSTREAM_STYLE_CONFIG = {
    "architectures": ["LlavaOnevision2ForConditionalGeneration"],
    "model_type": "llava_onevision2",
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "torch_dtype": "bfloat16",
    "vision_config": {
        # pre-2026-04-30 checkpoints: the composite model_type and position-encoding keys in the vision block
        "model_type": "llava_onevision2",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "layer_norm_eps": 1e-06,
        "rope_theta": 10000,  # an int where a float is expected
        "attention_dropout": 0,
        "out_hidden_size": 4096,
        "text_hidden_size": 4096,
        "use_patch_position_encoding": False,
        "patch_position_encoding_type": "absolute",
        "max_position_embeddings": 8192,
        "tokens_per_second": 1,
        "temporal_patch_size": 1,
        "frame_windows_size": 4,
        "use_head": False,
    },
    "text_config": {
        "model_type": "qwen3",
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rope_theta": 8000000,
        "rms_norm_eps": 1,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "eos_token_id": 151645,
    },
}


def test_upstream_config_json_loads(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(UPSTREAM_STYLE_CONFIG))
    config = LlavaOnevision2Config.from_pretrained(tmp_path)
    assert config.vision_config.model_type == "onevision_encoder"
    assert config.vision_config.rope_theta == 10000.0 and isinstance(config.vision_config.rope_theta, float)
    assert config.text_config.rope_parameters["rope_theta"] == 8000000
    assert isinstance(config.text_config.rms_norm_eps, float)
    assert config.eos_token_id == 151645
    # Unknown legacy keys are kept (and written back) rather than dropped.
    assert config.vision_config.text_hidden_size == 4096
    config.save_pretrained(tmp_path / "again")
    again = LlavaOnevision2Config.from_pretrained(tmp_path / "again")
    assert again.to_dict()["vision_config"] == config.to_dict()["vision_config"]
    assert json.loads((tmp_path / "again" / "config.json").read_text())["vision_config"]["model_type"] == (
        "onevision_encoder"
    )


def test_text_config_may_be_moe_dict():
    config = LlavaOnevision2Config(
        text_config={"model_type": "qwen3_moe", "hidden_size": 64, "num_experts": 4},
        vision_config={"out_hidden_size": 64},
    )
    assert type(config.text_config).__name__ == "Qwen3MoeConfig"


@pytest.mark.parametrize(
    ("vision", "message"),
    [
        ({"use_head": True}, "use_head=True"),
        ({"use_patch_position_encoding": True}, "use_patch_position_encoding=True"),
        ({"hidden_size": 48, "num_attention_heads": 3}, "multiple of 32"),
        ({"layer_norm_type": "batch_norm"}, "layer_norm_type"),
    ],
)
def test_unsupported_vision_settings_fail_with_reason(vision, message):
    with pytest.raises((ValueError, StrictDataclassError), match=message):
        tiny_config(vision=vision)


def test_vision_config_standalone_roundtrip(tmp_path):
    config = LlavaOnevision2VisionConfig(patch_size=16, spatial_merge_size=3, layer_norm_eps=1)
    assert config.layer_norm_eps == 1.0
    config.save_pretrained(tmp_path)
    assert LlavaOnevision2VisionConfig.from_pretrained(tmp_path).spatial_merge_size == 3
