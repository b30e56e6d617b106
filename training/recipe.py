"""Stage recipes: one YAML file per stage, with `section.key=value` overrides from the command line.

stage: stage2_instruct
model:      # where the weights come from and how to build them
  name_or_path: outputs/stage1        # previous stage's output (a complete model folder)
  preset: null                        # or a preset name (random weights), with `config_overrides`
  processor: outputs/stage1           # processor folder (tokenizer, image/video processors, chat template)
  dtype: bfloat16
  attn_implementation: sdpa
data:
  root: /data/ov2                     # optional: relative paths below resolve against it
  sources: [{path: instruct.jsonl, media_root: media, weight: 3.0}, ...]  # all keys: training/README.md
  max_length: 16384
  max_pixels: 1605632                 # per image
  max_frames: 32
  video_max_pixels: 401408            # per frame
  video_backend: frames               # or codec
  video_format: training
  video_fps: 1.0                      # frames per second (None: the released count-by-duration rule)
  packing: true
trainable: [vision, merger, llm]      # parts that learn (ignored with LoRA, which trains its adapters)
learning_rates: {vision: 2.0e-6, merger: 1.0e-5, llm: 1.0e-5}
lora: null                            # or {r: 64, alpha: 128, dropout: 0.05, train_merger: true, load_in_4bit: false}
merge_lora: true                      # also save the adapters merged into the weights
training: {...}                       # any TRL SFTConfig / TrainingArguments field
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import yaml

PARTS = ("vision", "merger", "llm")


@dataclass
class ModelSection:
    name_or_path: str | None = None
    preset: str | None = None
    config_overrides: dict = field(default_factory=dict)
    processor: str | None = None
    dtype: str = "bfloat16"
    attn_implementation: str = "sdpa"


@dataclass
class DataSection:
    sources: list = field(default_factory=list)
    root: str | None = None  # relative source paths and media roots resolve against it
    max_length: int = 8192
    max_pixels: int = 1_605_632
    max_frames: int = 32
    video_max_pixels: int = 401_408
    video_backend: str = "frames"
    video_format: str = "training"
    video_fps: float | None = 1.0  # the released training frames were extracted at 1 fps (capped by max_frames)
    packing: bool = False
    seed: int = 0  # order of the weighted interleaving of sources
    record_sample_ids: bool = False  # list every used sample's id in <output_dir>/data_stats (audits, tests)


@dataclass
class LoraSection:
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    train_merger: bool = True
    load_in_4bit: bool = False
    target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class Recipe:
    stage: str
    model: ModelSection
    data: DataSection
    training: dict
    trainable: list = field(default_factory=lambda: list(PARTS))
    learning_rates: dict = field(default_factory=dict)
    lora: LoraSection | None = None
    merge_lora: bool = True

    def __post_init__(self):
        unknown = set(self.trainable) - set(PARTS)
        if unknown:
            raise ValueError(f"trainable parts must be among {PARTS}, got {sorted(unknown)}.")
        unknown = set(self.learning_rates) - set(PARTS)
        if unknown:
            raise ValueError(f"learning_rates keys must be among {PARTS}, got {sorted(unknown)}.")
        if not self.data.sources:
            raise ValueError(f"Stage {self.stage!r} lists no data sources (data.sources).")
        if self.model.name_or_path is None and self.model.preset is None:
            raise ValueError("Set model.name_or_path (a checkpoint folder) or model.preset.")
        if self.model.processor is None and self.model.name_or_path is None:
            raise ValueError("Set model.processor when building the model from a preset.")
        if "output_dir" not in self.training:
            raise ValueError("training.output_dir is required.")


def apply_override(values: dict, assignment: str) -> None:
    """`a.b.c=value` -> values["a"]["b"]["c"] = yaml(value)."""
    if "=" not in assignment:
        raise ValueError(f"Overrides look like section.key=value, got {assignment!r}.")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.split(".")
    target = values
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ValueError(f"Cannot override {dotted!r}: {key!r} is not a section.")
    target[keys[-1]] = yaml.safe_load(raw)


def section(cls, values: dict | None, name: str):
    values = values or {}
    known = set(cls.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"Unknown keys in {name}: {sorted(unknown)} (known: {sorted(known)}).")
    return cls(**values)


def load_recipe(path: str, overrides: list[str] = ()) -> Recipe:
    with open(path) as handle:
        values = yaml.safe_load(handle) or {}
    values = copy.deepcopy(values)
    for assignment in overrides:
        apply_override(values, assignment)
    unknown = set(values) - {"stage", "model", "data", "training", "trainable", "learning_rates", "lora", "merge_lora"}
    if unknown:
        raise ValueError(f"Unknown sections in {path}: {sorted(unknown)}.")
    return Recipe(
        stage=values.get("stage", path),
        model=section(ModelSection, values.get("model"), "model"),
        data=section(DataSection, values.get("data"), "data"),
        training=dict(values.get("training") or {}),
        trainable=list(values.get("trainable", PARTS)),
        learning_rates=dict(values.get("learning_rates") or {}),
        lora=section(LoraSection, values["lora"], "lora") if values.get("lora") else None,
        merge_lora=values.get("merge_lora", True),
    )


__all__ = ["DataSection", "LoraSection", "ModelSection", "PARTS", "Recipe", "apply_override", "load_recipe"]
