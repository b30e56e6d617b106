"""Configuration of LLaVA-OneVision-2: the OneVision-Encoder vision tower and the composite vision-language model.

Defaults equal the released 8B checkpoint (patch 14, spatial merge 2, Qwen3-8B text model with RoPE base 8e6).
`LlavaOnevision2Config.from_preset` builds the other released or planned sizes.
"""

from __future__ import annotations

import copy
import dataclasses
import re

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

# Vision `model_type` written by checkpoints saved before the upstream 2026-04-30 config change.
LEGACY_VISION_MODEL_TYPES = ("llava_onevision2",)

# Qwen3-8B, as used by the released 8B. The RoPE base is the one the model was trained with (8e6), not Qwen3's 1e6.
QWEN3_8B_TEXT_CONFIG = {
    "model_type": "qwen3",
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 8_000_000.0},
    "attention_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "pad_token_id": 151643,
}


def _float_only_fields(config_class: type) -> set[str]:
    """Names of dataclass fields of `config_class` whose annotation admits `float` but not `int`."""
    names = set()
    for field in dataclasses.fields(config_class):
        # Annotations may be objects or strings (postponed evaluation); their text is enough here.
        spelled = (
            field.type if isinstance(field.type, str) else repr(field.type).replace("<class '", "").replace("'>", "")
        )
        members = {member.strip() for member in re.split(r"[|\[\],]", spelled)}
        if "float" in members and "int" not in members:
            names.add(field.name)
    return names


def coerce_int_floats(config_class: type, values: dict) -> dict:
    """Return a copy of `values` where integers given for float-typed fields of `config_class` become floats.

    JSON writers often emit `1` for `1.0` (`"rope_theta": 10000`); strict dataclass validation would reject them.
    """
    float_fields = _float_only_fields(config_class)
    return {
        key: float(value) if key in float_fields and isinstance(value, int) and not isinstance(value, bool) else value
        for key, value in values.items()
    }


@strict
class LlavaOnevision2VisionConfig(PreTrainedConfig):
    r"""
    OneVision-Encoder ViT plus the patch merger that projects into the language model.

    frame_windows_size (`int`, defaults to 4):
        Number of consecutive frames (or codec canvases) of one grid row that attend to each other. Images and
        single-frame rows always attend only to themselves. `0` puts a whole grid row into one window.
    out_hidden_size (`int`, defaults to 4096):
        Output width of the merger; equals the language model's hidden size.
    layer_norm_type (`str`, defaults to `"layer_norm"`):
        `"layer_norm"` (all releases) or `"rms_norm"` for the tower's norms. The merger always uses LayerNorm.
    temporal_patch_size (`int`, defaults to 1):
        Not read by the model; processors must use 1. Kept so that processor settings can be derived from it.
    """

    model_type = "onevision_encoder"
    base_config_key = "vision_config"

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 448
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float | int = 1e-6
    layer_norm_type: str = "layer_norm"
    attention_dropout: float | int = 0.0
    initializer_range: float | int = 0.02
    rope_theta: float | int = 10000.0
    use_head: bool = False
    out_hidden_size: int = 4096
    spatial_merge_size: int = 2
    temporal_patch_size: int = 1
    frame_windows_size: int = 4

    def __post_init__(self, **kwargs):
        for name in ("layer_norm_eps", "attention_dropout", "initializer_range", "rope_theta"):
            setattr(self, name, float(getattr(self, name)))
        # Pre-2026-04-30 checkpoints carry the vision `model_type` of the composite model; the class decides it.
        kwargs.pop("model_type", None)
        if kwargs.get("use_patch_position_encoding"):
            raise ValueError(
                "vision_config.use_patch_position_encoding=True asks for learned (h, w) position embeddings in the "
                "merger; no LLaVA-OneVision-2 release uses them and this implementation has no such weights. "
                "Set it to false (the value in every released config.json)."
            )
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checks the shapes that the 3-D rotary split and the merger rely on (run by `@strict` on construction)."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"vision hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        head_dim = self.hidden_size // self.num_attention_heads
        if head_dim % 32 != 0:
            raise ValueError(
                f"vision head_dim is {head_dim}; the 4:6:6 (t, h, w) rotary split needs a multiple of 32."
            )
        if self.spatial_merge_size < 1:
            raise ValueError(f"spatial_merge_size must be >= 1, got {self.spatial_merge_size}.")
        if self.layer_norm_type not in ("layer_norm", "rms_norm"):
            raise ValueError(f"layer_norm_type must be 'layer_norm' or 'rms_norm', got {self.layer_norm_type!r}.")
        if self.use_head:
            raise ValueError(
                "vision_config.use_head=True describes the standalone OneVision-Encoder with its pooling head; "
                "LLaVA-OneVision-2 feeds patch features to the merger and ships no head weights. Set use_head=false."
            )


@strict
class LlavaOnevision2Config(PreTrainedConfig):
    r"""
    LLaVA-OneVision-2: OneVision-Encoder + merger + a Qwen3 (dense or MoE) language model.

    `text_config` is resolved through the transformers config mapping from its `model_type` (`qwen3` by default,
    `qwen3_moe` for the 30B-A3B). Defaults reproduce the released 8B.

    image_token_id (`int`, defaults to 151655):
        `<|image_pad|>`; images, frames passed as images and codec canvases fill these positions.
    video_token_id (`int`, defaults to 151656):
        `<|video_pad|>`; filled from `pixel_values_videos`.
    vision_start_token_id / vision_end_token_id (`int`):
        `<|vision_start|>` / `<|vision_end|>`; kept for processors and tools, not read by the model.
    """

    model_type = "llava_onevision2"
    sub_configs_defaults = {
        "vision_config": LlavaOnevision2VisionConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3", init_kwargs=QWEN3_8B_TEXT_CONFIG),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if isinstance(self.vision_config, dict) and self.vision_config.get("model_type") in LEGACY_VISION_MODEL_TYPES:
            self.vision_config = {**self.vision_config, "model_type": LlavaOnevision2VisionConfig.model_type}
        if isinstance(self.text_config, dict):
            text = dict(self.text_config)
            text_class = AutoConfig.for_model(text.get("model_type", "qwen3")).__class__
            self.text_config = coerce_int_floats(text_class, text)
        super().__post_init__(**kwargs)
        out_width, text_width = self.vision_config.out_hidden_size, self.text_config.hidden_size
        if out_width != text_width:
            raise ValueError(
                f"vision_config.out_hidden_size ({out_width}) must equal text_config.hidden_size ({text_width}): the "
                "merger writes vision features into the language model's embedding space."
            )
        # Token ids the generation utilities look for live on the text model; copy them up when unset.
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(self.text_config, name, None))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> LlavaOnevision2Config:
        """Build the configuration of a named model size (see `PRESETS`; "custom": no preset, the overrides alone).
        Overrides of `vision_config` / `text_config` merge into the preset's, key by key."""
        if name != "custom" and name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; available: {', '.join(sorted(PRESETS))} or 'custom'.")
        values = copy.deepcopy(PRESETS.get(name, {}))
        for key, value in overrides.items():
            if key in ("vision_config", "text_config") and isinstance(value, dict):
                value = {**values.get(key, {}), **value}
            values[key] = value
        return cls(**values)


def _preset(text_overrides: dict, vision_overrides: dict | None = None) -> dict:
    text = {**QWEN3_8B_TEXT_CONFIG, **text_overrides}
    vision = {"out_hidden_size": text["hidden_size"], **(vision_overrides or {})}
    return {"text_config": text, "vision_config": vision}


QWEN3_4B_TEXT = {
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "max_position_embeddings": 262144,
    # Trained with base 5e6 (Qwen3-4B-Instruct-2507's own value); an upstream converter json still says 1e6.
    "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0},
}

# Named sizes. Text hyper-parameters follow the Qwen3 checkpoint each model was initialised from; RoPE bases are the
# ones used in training.
PRESETS: dict[str, dict] = {
    # Random weights for CPU: the tests, the benchmarks' smoke runs and the toy curriculum (whose model the demo
    # ships) build on it. Every path is reached: vision head_dim 32 (the smallest the 4:6:6 rotary split allows),
    # merge 2, GQA in the text model.
    "tiny": {
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 8,
            "spatial_merge_size": 2,
            "out_hidden_size": 128,
            "frame_windows_size": 6,
        },
        "text_config": {
            "model_type": "qwen3",
            "vocab_size": 512,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        # Inside the tiny vocabulary (the tests' tokenizer numbers its special tokens this way).
        "vision_start_token_id": 3,
        "vision_end_token_id": 4,
        "image_token_id": 5,
        "video_token_id": 6,
    },
    "8b": _preset({}),
    "4b": _preset(QWEN3_4B_TEXT),
    "4b-p16m3": _preset(QWEN3_4B_TEXT, {"patch_size": 16, "spatial_merge_size": 3}),
    "2b": _preset(
        {
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        }
    ),
    "30b-a3b": _preset(
        {
            "model_type": "qwen3_moe",
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "moe_intermediate_size": 768,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "num_hidden_layers": 48,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10_000_000.0},
        }
    ),
}

__all__ = ["LlavaOnevision2Config", "LlavaOnevision2VisionConfig", "PRESETS"]

# What a saved folder's config.json names in `auto_map`, so that AutoConfig / AutoModel / AutoModelForImageTextToText
# load it with trust_remote_code (module names as they lie flat in the folder).
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_llava_onevision2.LlavaOnevision2Config",
    "AutoModel": "modeling_llava_onevision2.LlavaOnevision2Model",
    "AutoModelForImageTextToText": "modeling_llava_onevision2.LlavaOnevision2ForConditionalGeneration",
}

LlavaOnevision2Config.register_for_auto_class()
