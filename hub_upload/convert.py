"""Conversions into model folders that this project's code loads.

- `convert_release`: a released LLaVA-OneVision-2 checkpoint folder (weights in the release layout, upstream remote
  code) -> the same weights, untouched, with our config, code and processor. Key names and shapes are checked
  against the model the config describes before anything is written. The processor keeps the checkpoint's own
  chat template and every setting of its `preprocessor_config.json` (image settings and the whole `codec` block)
  and `video_preprocessor_config.json`; keys this implementation cannot honour are listed in the report.
- `convert_encoder_plus_llm`: a standalone OneVision-Encoder checkpoint (separate q / k / v / out projections, a
  pooling head) plus a language model -> a stage-0 starting checkpoint: q / k / v fused into `qkv`, `out_proj`
  renamed `proj`, the head and post-norm dropped, the language model under `model.language_model`, a fresh merger.
  The language model is a Qwen3 causal-LM checkpoint or a LLaVA-OneVision-1.5 checkpoint (its Qwen3 part is taken,
  its RICE vision tower left out). Tensors are streamed shard by shard in their stored dtype, so peak memory stays
  near one shard (bench/convert_bench.py measures it).

Both write into a staging folder next to the output and move it into place only when everything succeeded: a
failed conversion leaves no half-written output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from ..modeling import MODEL_AUTO_MAP, LlavaOnevision2Config, LlavaOnevision2ForConditionalGeneration
from ..processing.codec_sampling_llava_onevision2 import CodecSamplingConfig
from ..processing.image_processing_llava_onevision2 import (
    LlavaOnevision2ImageProcessor,
    LlavaOnevision2ImagesKwargs,
)
from ..processing.processing_llava_onevision2 import (
    CHAT_TEMPLATE,
    LlavaOnevision2Processor,
    marks_assistant_turns,
)
from ..processing.video_processing_llava_onevision2 import (
    LlavaOnevision2VideoProcessor,
    LlavaOnevision2VideosKwargs,
)
from .export import copy_remote_code

WEIGHT_PATTERN = re.compile(r".*\.safetensors(\.index\.json)?$")
# Keys of processor configs that describe the file rather than a setting.
PROCESSOR_METADATA_KEYS = {"image_processor_type", "video_processor_type", "processor_class", "auto_map", "codec"}
# Call-time options that are not settings of a saved processor.
RUNTIME_KWARGS = {"return_tensors", "device", "data_format", "input_data_format", "disable_grouping", "video_metadata"}


# -- shared helpers -------------------------------------------------------------------------------------------------


def safetensors_files(folder: str) -> list[Path]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"No .safetensors weights in {folder} (convert .bin checkpoints with safetensors first)."
        )
    return files


def stored_tensor_info(folder: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, safetensors dtype name) of every tensor in a folder, read from the headers only."""
    info = {}
    for file in safetensors_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                view = handle.get_slice(key)
                info[key] = (tuple(view.get_shape()), view.get_dtype())
    return info


def stored_shapes(folder: str) -> dict[str, tuple[int, ...]]:
    return {key: shape for key, (shape, _) in stored_tensor_info(folder).items()}


SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def read_header(handle) -> tuple[dict, int]:
    """The JSON header of an open safetensors file and where its data starts."""
    (size,) = struct.unpack("<Q", handle.read(8))
    header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def iter_tensors(folder: str) -> Iterator[tuple[str, int, Callable[[], torch.Tensor]]]:
    """(key, bytes, load) for every tensor of a folder; `load()` reads that one tensor into its own buffer.

    Reading is deferred so that a writer can flush before the next tensor arrives, and uses plain file reads: a
    memory map would keep the read pages resident beside the copy. Peak memory is then one output shard. Call
    `load` before advancing the iterator (the file closes after its last tensor).
    """
    for file in safetensors_files(folder):
        with open(file, "rb") as handle:
            header, data_start = read_header(handle)
            for key, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
                begin, end = entry["data_offsets"]

                def load(entry=entry, begin=begin, end=end, handle=handle, data_start=data_start) -> torch.Tensor:
                    dtype = SAFETENSORS_DTYPES[entry["dtype"]]
                    if end == begin:
                        return torch.empty(entry["shape"], dtype=dtype)
                    buffer = bytearray(end - begin)
                    handle.seek(data_start + begin)
                    handle.readinto(buffer)
                    return torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])

                yield key, end - begin, load


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file written tensor by tensor from the tensors' own memory (no serialised copy)."""
    header, offset = {}, 0
    for key, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[key] = {
            "dtype": DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps({"__metadata__": {"format": "pt"}, **header}, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                handle.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().data)


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


def write_config(config: LlavaOnevision2Config, output: str) -> None:
    config.architectures = ["LlavaOnevision2ForConditionalGeneration"]
    config.auto_map = dict(MODEL_AUTO_MAP)
    config.save_pretrained(output)


@contextlib.contextmanager
def staged_output(output: str) -> Iterator[Path]:
    """A staging folder beside `output`, moved into place only if the block succeeds (removed otherwise)."""
    target = Path(output).resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"Output folder {output} already exists and is not empty; choose a new one.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        target.rmdir()
    staging.rename(target)


def load_tokenizer(folder: str):
    """The tokenizer of a checkpoint folder, or a one-line error naming the folder and the files it needs."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model")
    if not any((Path(folder) / name).exists() for name in names):
        raise FileNotFoundError(
            f"{folder} has no tokenizer files (expected tokenizer.json or vocab.json + merges.txt); copy them from "
            "the original checkpoint or pass a folder that has them."
        )
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"Could not load the tokenizer of {folder}: {first_line}") from error


def checkpoint_chat_template(folder: str, tokenizer) -> str | None:
    """The chat template a checkpoint ships: chat_template.jinja, else chat_template.json, else the tokenizer's."""
    jinja = Path(folder) / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    legacy = Path(folder) / "chat_template.json"
    if legacy.exists():
        return json.loads(legacy.read_text(encoding="utf-8"))["chat_template"]
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else None


def processor_chat_templates(released: str | None) -> str | dict:
    """The released template as the default. Training needs `{% generation %}` markers for assistant masks; a
    template without them gets this project's template beside it under the name "training"."""
    if released is None:
        return CHAT_TEMPLATE
    if marks_assistant_turns(released):
        return released
    return {"default": released, "training": CHAT_TEMPLATE}


def build_processor(
    tokenizer, vision: dict, image_settings: dict, video_settings: dict, codec_settings: dict, chat_template=None
):
    geometry = {"patch_size": vision["patch_size"], "merge_size": vision["spatial_merge_size"]}
    return LlavaOnevision2Processor(
        image_processor=LlavaOnevision2ImageProcessor(**{**image_settings, **geometry}),
        tokenizer=tokenizer,
        video_processor=LlavaOnevision2VideoProcessor(
            **{**video_settings, **geometry}, codec_config=codec_settings or None
        ),
        chat_template=chat_template,
    )


# -- (a) released checkpoint ----------------------------------------------------------------------------------------


def processor_settings(values: dict, accepted: set[str], kind: str, vision: dict) -> tuple[dict, list[str]]:
    """The settings of one saved processor config that our processor takes, and notes on the rest."""
    settings, ignored = {}, []
    for key, value in values.items():
        if key in PROCESSOR_METADATA_KEYS or key.startswith("_"):
            continue
        if key in accepted and key not in RUNTIME_KWARGS:
            settings[key] = value
        else:
            ignored.append(key)
    for key, model_key in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size")):
        if key in settings and settings[key] != vision[model_key]:
            raise ValueError(
                f"The {kind} config says {key}={settings[key]} but the model config has "
                f"{model_key}={vision[model_key]}; the folder is inconsistent."
            )
    notes = [f"{kind} keys not used by this implementation: {sorted(ignored)}"] if ignored else []
    return settings, notes


def released_processor_settings(source: str, vision: dict) -> tuple[dict, dict, dict, list[str]]:
    """Image settings, video settings and the codec block of a released folder's processor configs, plus notes."""
    notes, image, video, codec = [], {}, {}, {}
    image_path = Path(source) / "preprocessor_config.json"
    if image_path.exists():
        values = json.loads(image_path.read_text())
        image, image_notes = processor_settings(
            values, set(LlavaOnevision2ImagesKwargs.__annotations__), "preprocessor_config.json", vision
        )
        notes += image_notes
        codec = dict(values.get("codec") or {})
    else:
        notes.append("no preprocessor_config.json: release defaults used for images")
    video_path = Path(source) / "video_preprocessor_config.json"
    if video_path.exists():
        video, video_notes = processor_settings(
            json.loads(video_path.read_text()),
            set(LlavaOnevision2VideosKwargs.__annotations__),
            "video_preprocessor_config.json",
            vision,
        )
        notes += video_notes
        codec = {**codec, **(video.pop("codec_config", None) or {})}
    unknown = sorted(set(codec) - set(CodecSamplingConfig.accepted_keys()))
    if unknown:
        notes.append(f"codec keys not used by this implementation: {unknown}")
        codec = {key: value for key, value in codec.items() if key not in unknown}
    return image, video, codec, notes


def convert_release(source: str, output: str, link: bool = False) -> dict:
    """Re-point a released checkpoint folder at this project's code; the weights are copied (or linked) unchanged."""
    config = LlavaOnevision2Config.from_pretrained(source)
    problems = layout_problems(stored_shapes(source), expected_shapes(config))
    if problems:
        listing = "\n  ".join(problems[:20])
        raise ValueError(f"{source} is not in the released layout ({len(problems)} problems):\n  {listing}")
    tokenizer = load_tokenizer(source)
    vision = config.vision_config.to_dict()
    image, video, codec, notes = released_processor_settings(source, vision)
    template = checkpoint_chat_template(source, tokenizer)
    if template is None:
        notes.append("the checkpoint ships no chat template: this project's template is used")
    processor = build_processor(tokenizer, vision, image, video, codec, processor_chat_templates(template))
    with staged_output(output) as staging:
        for file in Path(source).iterdir():
            if WEIGHT_PATTERN.match(file.name) or file.name == "generation_config.json":
                target = staging / file.name
                if link:
                    os.link(file, target)
                else:
                    shutil.copy2(file, target)
        write_config(config, str(staging))
        processor.save_pretrained(str(staging))
        copy_remote_code(str(staging))
    return {"output": output, "tensors": len(expected_shapes(config)), "notes": notes}


# -- (b) standalone encoder + language model ------------------------------------------------------------------------

ENCODER_DROPPED = re.compile(r"^(head\.|layernorm_post\.|class_embedding)")
ENCODER_PREFIXES = ("vision_model.", "model.", "encoder_model.")
ENCODER_QKV = re.compile(r"^(encoder\.layers\.\d+\.self_attn)\.(q|k|v)_proj\.(weight|bias)$")
# A LLaVA-OneVision-1.5 checkpoint: RICE vision tower under `visual.` (released remote code) or `model.visual.`
# (transformers' port), Qwen3 under `model.` or `model.language_model.`, and `lm_head.weight`.
OV15_VISION = re.compile(r"^(model\.)?visual\.")


def encoder_prefix(keys) -> str:
    keys = list(keys)
    for prefix in ENCODER_PREFIXES:
        if keys and all(key.startswith(prefix) for key in keys):
            return prefix
    return ""


def encoder_target(key: str, prefix: str) -> str | None:
    """Our key for one standalone-encoder key (None: dropped). q / k / v keys map to their fused `qkv` key."""
    key = key[len(prefix) :]
    if ENCODER_DROPPED.match(key):
        return None
    if match := ENCODER_QKV.match(key):
        return f"model.visual.{match.group(1)}.qkv.{match.group(3)}"
    return "model.visual." + key.replace("self_attn.out_proj.", "self_attn.proj.")


def language_model_target(key: str, folder: str) -> str | None:
    """Our key for one key of a Qwen3 causal LM or a LLaVA-OneVision-1.5 checkpoint (None: not part of the LM)."""
    if OV15_VISION.match(key):
        return None
    if key == "lm_head.weight" or key.startswith("model.language_model."):
        return key
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :]
    raise ValueError(f"{folder}: unexpected key {key} for a Qwen3 or LLaVA-OneVision-1.5 checkpoint.")


def language_model_config(folder: str) -> tuple[dict, bool, list[str]]:
    """The Qwen3 text config of a Qwen3 folder or of a LLaVA-OneVision-1.5 folder (its `text_config`), whether the
    embeddings are tied, and notes."""
    values = json.loads((Path(folder) / "config.json").read_text())
    notes = []
    if "text_config" in values:
        text = dict(values["text_config"])
        tie = values.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        notes.append(f"language model taken from the LLaVA-OneVision-1.5 checkpoint {folder}")
    else:
        text, tie = dict(values), values.get("tie_word_embeddings", False)
    if text.get("model_type") not in ("qwen3", "qwen3_moe"):
        notes.append(f"text model_type {text.get('model_type')!r} read as qwen3")
        text["model_type"] = "qwen3"
    for key in ("architectures", "auto_map", "_name_or_path", "transformers_version"):
        text.pop(key, None)
    return text, bool(tie), notes


def planned_source_shapes(encoder: str, llm: str) -> dict[str, tuple[int, ...]]:
    """Our key -> shape of everything both folders provide, from the headers (q / k / v fused by shape)."""
    encoder_info = stored_tensor_info(encoder)
    prefix = encoder_prefix(encoder_info)
    shapes = {}
    for key, (shape, _) in encoder_info.items():
        target = encoder_target(key, prefix)
        if target is None:
            continue
        if ".qkv." in target:
            fused = shapes.get(target)
            shapes[target] = (shape[0] + (fused[0] if fused else 0), *shape[1:])
        else:
            shapes[target] = shape
    for key, (shape, _) in stored_tensor_info(llm).items():
        if (target := language_model_target(key, llm)) is not None:
            shapes[target] = shape
    return shapes


def source_dtype(llm: str) -> torch.dtype:
    """The dtype of the language model's floating-point tensors (the bulk of the checkpoint)."""
    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
    found = {names[dtype] for _, dtype in stored_tensor_info(llm).values() if dtype in names}
    if len(found) != 1:
        raise ValueError(f"{llm}: mixed floating-point dtypes {sorted(map(str, found))}; pass dtype explicitly.")
    return found.pop()


class ShardWriter:
    """Writes tensors into safetensors shards of at most `max_shard_bytes` as they arrive, then the index."""

    def __init__(self, folder: Path, max_shard_bytes: int):
        self.folder, self.max_shard_bytes = folder, max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes, self.shards, self.weight_map = 0, [], {}

    def make_room(self, size: int) -> None:
        """Flush first if `size` more bytes would overflow the shard (call before loading the tensor)."""
        if self.pending and self.pending_bytes + size > self.max_shard_bytes:
            self.flush()

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        self.make_room(size)
        self.pending[key] = tensor.contiguous()
        self.pending_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"shard-{len(self.shards):05d}.tmp"
        write_safetensors(self.folder / name, self.pending)
        self.shards.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> int:
        """Final names (`model.safetensors`, or numbered shards plus `model.safetensors.index.json`); tensor count."""
        self.flush()
        if len(self.shards) == 1:
            os.replace(self.folder / self.shards[0][0], self.folder / "model.safetensors")
            return len(self.shards[0][1])
        total = len(self.shards)
        for number, (name, keys) in enumerate(self.shards, start=1):
            final = f"model-{number:05d}-of-{total:05d}.safetensors"
            os.replace(self.folder / name, self.folder / final)
            self.weight_map.update(dict.fromkeys(keys, final))
        size = sum((self.folder / f).stat().st_size for f in set(self.weight_map.values()))
        index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return len(self.weight_map)


def stream_encoder(encoder: str, writer: ShardWriter, dtype: torch.dtype) -> None:
    """Standalone-encoder tensors into `writer`, renamed, q / k / v fused once all three parts of a layer arrived."""
    prefix = encoder_prefix(stored_tensor_info(encoder))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, size, load in iter_tensors(encoder):
        target = encoder_target(key, prefix)
        if target is None:
            continue
        writer.make_room(size * (3 if ".qkv." in target else 1))
        tensor = cast_floating(load(), dtype)
        if ".qkv." not in target:
            writer.add(target, tensor)
            continue
        parts.setdefault(target, {})[ENCODER_QKV.match(key[len(prefix) :]).group(2)] = tensor
        if len(parts[target]) == 3:
            fused = parts.pop(target)
            writer.add(target, torch.cat([fused["q"], fused["k"], fused["v"]], dim=0))
    if parts:
        incomplete = {target: sorted(found) for target, found in parts.items()}
        raise ValueError(f"{encoder}: attention projections incomplete: {incomplete}")


def cast_floating(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def stream_language_model(llm: str, writer: ShardWriter, dtype: torch.dtype, tie_embeddings: bool) -> None:
    has_head = False
    for key, size, load in iter_tensors(llm):
        target = language_model_target(key, llm)
        if target is None:
            continue
        has_head = has_head or target == "lm_head.weight"
        writer.make_room(size)
        writer.add(target, cast_floating(load(), dtype))
    if not has_head:
        if not tie_embeddings:
            raise ValueError(f"{llm} has no lm_head.weight and does not tie it to the embeddings.")
        for key, size, load in iter_tensors(llm):  # tied: the embeddings again, as the separate released head
            if language_model_target(key, llm) == "model.language_model.embed_tokens.weight":
                writer.make_room(size)
                writer.add("lm_head.weight", cast_floating(load(), dtype))


def fresh_merger_state(config: LlavaOnevision2Config, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """The merger's weights, initialised as the full model would initialise them, and nothing else in memory."""
    with torch.device("meta"):
        skeleton = LlavaOnevision2ForConditionalGeneration(config)
    merger = skeleton.model.visual.merger.to_empty(device="cpu")
    torch.manual_seed(seed)
    for module in merger.modules():
        skeleton._init_weights(module)
    return {f"model.visual.merger.{key}": value.to(dtype) for key, value in merger.state_dict().items()}


def convert_encoder_plus_llm(
    encoder: str,
    llm: str,
    output: str,
    spatial_merge_size: int = 2,
    processor: str | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    max_shard_size: int = 5 * 1024**3,
) -> dict:
    """Stage-0 starting checkpoint: pretrained encoder and language model, freshly initialised merger.

    `dtype` defaults to the language model's stored dtype (bf16 in, bf16 out); tensors are streamed into shards
    of at most `max_shard_size` bytes.
    """
    encoder_config = json.loads((Path(encoder) / "config.json").read_text())
    text_config, tie_embeddings, notes = language_model_config(llm)
    vision_keys = {f.name for f in fields(LlavaOnevision2Config.sub_configs["vision_config"])} - {"use_head"}
    vision = {k: v for k, v in encoder_config.items() if k in vision_keys and not k.startswith("_")}
    vision.update(spatial_merge_size=spatial_merge_size, out_hidden_size=text_config["hidden_size"])
    config = LlavaOnevision2Config(vision_config=vision, text_config=text_config, tie_word_embeddings=False)
    dtype = dtype or source_dtype(llm)
    expected = expected_shapes(config)
    planned = planned_source_shapes(encoder, llm)
    if "lm_head.weight" not in planned and "model.language_model.embed_tokens.weight" in planned:
        planned["lm_head.weight"] = planned["model.language_model.embed_tokens.weight"]
    problems = layout_problems(planned, expected)
    merger_missing = [p for p in problems if p.startswith("missing model.visual.merger.")]
    other = [p for p in problems if p not in merger_missing]
    if other:
        raise ValueError("Encoder + LLM weights do not fit the model:\n  " + "\n  ".join(other[:20]))
    tokenizer = None if processor else load_tokenizer(llm)
    with staged_output(output) as staging:
        writer = ShardWriter(staging, max_shard_size)
        stream_encoder(encoder, writer, dtype)
        for key, tensor in fresh_merger_state(config, dtype, seed).items():
            writer.add(key, tensor)
        stream_language_model(llm, writer, dtype, tie_embeddings)
        tensors = writer.close()
        config.dtype = dtype
        write_config(config, str(staging))
        copy_remote_code(str(staging))
        if (Path(llm) / "generation_config.json").exists():
            shutil.copy2(Path(llm) / "generation_config.json", staging / "generation_config.json")
        if processor:
            LlavaOnevision2Processor.from_pretrained(processor, trust_remote_code=True).save_pretrained(str(staging))
        else:
            build_processor(tokenizer, config.vision_config.to_dict(), {}, {}, {}).save_pretrained(str(staging))
    return {
        "output": output,
        "dtype": str(dtype).removeprefix("torch."),
        "fresh_merger_tensors": len(merger_missing),
        "tensors": tensors,
        "shards": len(writer.shards),
        "notes": notes,
    }


__all__ = ["convert_encoder_plus_llm", "convert_release", "language_model_target", "staged_output"]
