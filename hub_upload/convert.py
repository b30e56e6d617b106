"""Conversions into model folders that this project's code loads.

- `convert_release`: a released LLaVA-OneVision-2 checkpoint folder (weights in the release layout, upstream remote
  code) -> the same weights, untouched, with our config, code and processor. Key names and shapes are checked
  against the model the config describes before anything is written; image settings and the `codec` block of the
  upstream `preprocessor_config.json` are carried over.
- `convert_encoder_plus_llm`: a standalone OneVision-Encoder checkpoint (separate q / k / v / out projections, a
  pooling head) plus a Qwen3 checkpoint -> a stage-0 starting checkpoint: q / k / v fused into `qkv`, `out_proj`
  renamed `proj`, the head and post-norm dropped, the language model under `model.language_model`, a fresh merger.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer

from ..modeling import LlavaOnevision2Config, LlavaOnevision2ForConditionalGeneration
from ..processing.codec_sampling_llava_onevision2 import CodecSamplingConfig
from ..processing.image_processing_llava_onevision2 import LlavaOnevision2ImageProcessor
from ..processing.processing_llava_onevision2 import LlavaOnevision2Processor
from ..processing.video_processing_llava_onevision2 import LlavaOnevision2VideoProcessor

CODE_DIRS = (Path(__file__).resolve().parents[1] / "modeling", Path(__file__).resolve().parents[1] / "processing")
WEIGHT_PATTERN = re.compile(r".*\.safetensors(\.index\.json)?$")


# -- shared helpers -------------------------------------------------------------------------------------------------


def safetensors_files(folder: str) -> list[Path]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"No .safetensors weights in {folder} (convert .bin checkpoints with safetensors first)."
        )
    return files


def stored_shapes(folder: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in a folder's safetensors files, read from the headers only."""
    shapes = {}
    for file in safetensors_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def expected_shapes(config: LlavaOnevision2Config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = LlavaOnevision2ForConditionalGeneration(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def layout_problems(stored: dict, expected: dict) -> list[str]:
    problems = [f"missing {key} {shape}" for key, shape in expected.items() if key not in stored]
    problems += [f"unexpected {key} {shape}" for key, shape in stored.items() if key not in expected]
    problems += [
        f"shape of {key}: stored {stored[key]}, expected {shape}"
        for key, shape in expected.items()
        if key in stored and stored[key] != shape
    ]
    return problems


def copy_remote_code(output: str) -> None:
    for folder in CODE_DIRS:
        for file in folder.glob("*_llava_onevision2.py"):
            shutil.copy2(file, Path(output) / file.name)


def write_config(config: LlavaOnevision2Config, output: str) -> None:
    config.architectures = ["LlavaOnevision2ForConditionalGeneration"]
    config.auto_map = {
        "AutoConfig": "configuration_llava_onevision2.LlavaOnevision2Config",
        "AutoModel": "modeling_llava_onevision2.LlavaOnevision2Model",
        "AutoModelForImageTextToText": "modeling_llava_onevision2.LlavaOnevision2ForConditionalGeneration",
    }
    config.save_pretrained(output)


def build_processor(tokenizer_folder: str, vision: dict, image_settings: dict, codec_settings: dict):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    geometry = {"patch_size": vision["patch_size"], "merge_size": vision["spatial_merge_size"]}
    return LlavaOnevision2Processor(
        image_processor=LlavaOnevision2ImageProcessor(**geometry, **image_settings),
        tokenizer=tokenizer,
        video_processor=LlavaOnevision2VideoProcessor(**geometry, codec_config=codec_settings or None),
    )


# -- (a) released checkpoint ----------------------------------------------------------------------------------------


def upstream_processor_settings(source: str) -> tuple[dict, dict, list[str]]:
    """Image-processor settings and the codec block of an upstream `preprocessor_config.json`, plus notes."""
    path = Path(source) / "preprocessor_config.json"
    if not path.exists():
        return {}, {}, ["no preprocessor_config.json: release defaults used"]
    values = json.loads(path.read_text())
    notes, image = [], {}
    size = values.get("size") or {}
    min_pixels = values.get("min_pixels", size.get("shortest_edge", size.get("min_pixels")))
    max_pixels = values.get("max_pixels", size.get("longest_edge", size.get("max_pixels")))
    if min_pixels:
        image["min_pixels"] = int(min_pixels)
    if max_pixels:
        image["max_pixels"] = int(max_pixels)
    for key in ("image_mean", "image_std"):
        if key in values:
            image[key] = values[key]
    known = {f.name for f in fields(CodecSamplingConfig)} - {"cache_dir", "progress", "patch", "merge"}
    codec = {key: value for key, value in (values.get("codec") or {}).items() if key in known}
    dropped = sorted(set(values.get("codec") or {}) - known)
    if dropped:
        notes.append(f"codec keys not used by this implementation: {dropped}")
    return image, codec, notes


def convert_release(source: str, output: str, link: bool = False) -> dict:
    """Re-point a released checkpoint folder at this project's code; the weights are copied (or linked) unchanged."""
    config = LlavaOnevision2Config.from_pretrained(source)
    problems = layout_problems(stored_shapes(source), expected_shapes(config))
    if problems:
        listing = "\n  ".join(problems[:20])
        raise ValueError(f"{source} is not in the released layout ({len(problems)} problems):\n  {listing}")
    os.makedirs(output, exist_ok=True)
    for file in Path(source).iterdir():
        if WEIGHT_PATTERN.match(file.name) or file.name == "generation_config.json":
            target = Path(output) / file.name
            if link:
                os.link(file, target)
            else:
                shutil.copy2(file, target)
    write_config(config, output)
    image, codec, notes = upstream_processor_settings(source)
    processor = build_processor(source, config.vision_config.to_dict(), image, codec)
    processor.save_pretrained(output)
    copy_remote_code(output)
    return {"output": output, "tensors": len(expected_shapes(config)), "notes": notes}


# -- (b) standalone encoder + Qwen3 --------------------------------------------------------------------------------

ENCODER_DROPPED = re.compile(r"^(head\.|layernorm_post\.|class_embedding)")
ENCODER_PREFIXES = ("vision_model.", "model.", "encoder_model.")


def encoder_state(folder: str) -> dict[str, torch.Tensor]:
    """Standalone OneVision-Encoder weights -> `model.visual.*` keys with q / k / v fused and the head dropped."""
    raw = {}
    for file in safetensors_files(folder):
        raw.update(load_file(str(file)))
    for prefix in ENCODER_PREFIXES:
        if raw and all(key.startswith(prefix) for key in raw):
            raw = {key[len(prefix) :]: value for key, value in raw.items()}
            break
    state, attention = {}, {}
    for key, value in raw.items():
        if ENCODER_DROPPED.match(key):
            continue
        match = re.match(r"^(encoder\.layers\.\d+\.self_attn)\.(q|k|v)_proj\.(weight|bias)$", key)
        if match:
            attention.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
            continue
        state["model.visual." + key.replace("self_attn.out_proj.", "self_attn.proj.")] = value
    for (layer, kind), parts in attention.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{folder}: {layer} has only {sorted(parts)} projections for {kind}.")
        state[f"model.visual.{layer}.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return state


def language_model_state(folder: str, tie_embeddings: bool) -> dict[str, torch.Tensor]:
    """Qwen3 causal-LM weights -> `model.language_model.*` and `lm_head.weight`."""
    raw = {}
    for file in safetensors_files(folder):
        raw.update(load_file(str(file)))
    state = {}
    for key, value in raw.items():
        if key.startswith("model."):
            state["model.language_model." + key[len("model.") :]] = value
        elif key == "lm_head.weight":
            state[key] = value
        else:
            raise ValueError(f"{folder}: unexpected key {key} for a Qwen3 causal LM checkpoint.")
    if "lm_head.weight" not in state:
        if not tie_embeddings:
            raise ValueError(f"{folder} has no lm_head.weight and does not tie it to the embeddings.")
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"].clone()
    return state


def convert_encoder_plus_llm(
    encoder: str, llm: str, output: str, spatial_merge_size: int = 2, processor: str | None = None, seed: int = 0
) -> dict:
    """Stage-0 starting checkpoint: pretrained encoder and language model, freshly initialised merger."""
    encoder_config = json.loads((Path(encoder) / "config.json").read_text())
    text_config = json.loads((Path(llm) / "config.json").read_text())
    vision_keys = {f.name for f in fields(LlavaOnevision2Config.sub_configs["vision_config"])} - {"use_head"}
    vision = {k: v for k, v in encoder_config.items() if k in vision_keys and not k.startswith("_")}
    vision.update(spatial_merge_size=spatial_merge_size, out_hidden_size=text_config["hidden_size"])
    text_config.pop("architectures", None)
    config = LlavaOnevision2Config(vision_config=vision, text_config=text_config, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlavaOnevision2ForConditionalGeneration(config)
    state = encoder_state(encoder) | language_model_state(llm, text_config.get("tie_word_embeddings", False))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = layout_problems({k: tuple(v.shape) for k, v in state.items()}, expected)
    merger_missing = [p for p in problems if p.startswith("missing model.visual.merger.")]
    other = [p for p in problems if p not in merger_missing]
    if other:
        raise ValueError("Encoder + LLM weights do not fit the model:\n  " + "\n  ".join(other[:20]))
    model.load_state_dict(state, strict=False)
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output)
    if processor:
        LlavaOnevision2Processor.from_pretrained(processor, trust_remote_code=True).save_pretrained(output)
    else:
        build_processor(llm, config.vision_config.to_dict(), {}, {}).save_pretrained(output)
    return {"output": output, "fresh_merger_tensors": len(merger_missing), "loaded_tensors": len(state)}


__all__ = ["convert_encoder_plus_llm", "convert_release", "encoder_state", "language_model_state"]
