"""Stage recipes: TRL's own configuration classes, plus one dataclass for what they have no field for.

A recipe is a YAML file of flat keys that TRL's `TrlParser` reads into three dataclasses:

- `SFTConfig` (TRL): the trainer's arguments - `output_dir`, `max_steps`, `learning_rate`, `seed`, `fsdp`, ... and
  `max_length`, the token budget of one sample (the data path lowers frame/pixel budgets to fit it, so truncation
  never cuts through vision tokens);
- `ModelConfig` (TRL): where the weights come from and how they are adapted - `model_name_or_path`, `dtype`,
  `attn_implementation`, `use_peft`, `lora_r`, `lora_alpha`, `lora_target_modules`, `lora_modules_to_save`,
  `load_in_4bit`, ...; TRL's `get_peft_config` / `get_quantization_config` turn them into PEFT and bitsandbytes
  configs;
- `VisionArguments` (below): the data mixture, the visual budgets, per-part learning rates, fresh weights from a
  preset, and `processor_kwargs`, the one mapping of processor settings passed on every processor call.

`inherit: base.yaml` (a path relative to the file) starts from another recipe; each key the file sets replaces the
inherited value. The stage files inherit `training/configs/base.yaml` and list only their differences. Command-line
flags override the file: `--max_steps 100 --data_root /data/ov2 --learning_rates '{merger: 1.0e-4}'` (mappings and
lists as YAML).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, fields

import torch
import yaml
from trl import ModelConfig, SFTConfig, TrlParser

PARTS = ("vision", "merger", "llm")
INHERIT = "inherit"
# Processor call arguments the budget ladder sets itself (they shrink together when a sample is too long).
BUDGET_KEYS = {
    "images_kwargs": ("max_pixels", "min_pixels"),
    "videos_kwargs": ("max_pixels", "min_pixels", "max_frames"),
}


class FromYaml:
    """Command-line type of the fields that hold a mapping or a list: the flag's text is read as YAML."""

    def __new__(cls, text: str):
        return yaml.safe_load(text)


@dataclass
class VisionArguments:
    """What a stage needs beyond TRL's `SFTConfig` and `ModelConfig`."""

    stage: str = field(default="stage", metadata={"help": "Name of the stage in logs and reports."})
    preset: str | None = field(
        default=None,
        metadata={
            "help": "Fresh weights at a preset's shapes ('tiny', '8b', ...; 'custom': config_overrides alone) "
            "instead of model_name_or_path."
        },
    )
    config_overrides: FromYaml = field(
        default_factory=dict, metadata={"help": "Configuration keys over the preset's (nested configs merge)."}
    )
    processor: str | None = field(
        default=None, metadata={"help": "Processor folder (tokenizer, image/video processors); default: the model's."}
    )
    processor_kwargs: FromYaml = field(
        default_factory=dict,
        metadata={
            "help": "Processor settings for every call, e.g. {videos_kwargs: {video_format: training, fps: 1.0, "
            "video_backend: codec}}; the budgets below set pixel and frame limits."
        },
    )
    data_root: str | None = field(default=None, metadata={"help": "Relative source paths resolve against it."})
    sources: FromYaml = field(default_factory=list, metadata={"help": "Data sources (all keys: training/README.md)."})
    max_pixels: int = field(default=1_605_632, metadata={"help": "Pixels per image (top of the budget ladder)."})
    max_frames: int = field(default=32, metadata={"help": "Frames per video (top of the budget ladder)."})
    video_max_pixels: int = field(default=401_408, metadata={"help": "Pixels per frame (top of the budget ladder)."})
    pack_samples: bool = field(default=False, metadata={"help": "Pack several samples into each row of max_length."})
    mixture_seed: int = field(default=0, metadata={"help": "Seed of the weighted interleaving of the sources."})
    record_sample_ids: bool = field(
        default=False, metadata={"help": "List every used sample's id in <output_dir>/data_stats (audits, tests)."}
    )
    trainable: list[str] = field(
        default_factory=lambda: list(PARTS), metadata={"help": "Parts that learn (with LoRA: the adapters instead)."}
    )
    learning_rates: FromYaml = field(
        default_factory=dict, metadata={"help": "Learning rate per part, e.g. {vision: 2.0e-6, merger: 1.0e-5}."}
    )
    merge_lora: bool = field(default=True, metadata={"help": "With LoRA, also save merged weights under merged/."})

    def __post_init__(self):
        for name in ("config_overrides", "processor_kwargs", "learning_rates"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping, got {getattr(self, name)!r}.")
        if not isinstance(self.sources, list) or not self.sources:
            raise ValueError(f"Stage {self.stage!r} lists no data sources (sources).")
        unknown = set(self.trainable) - set(PARTS)
        if unknown:
            raise ValueError(f"trainable parts must be among {PARTS}, got {sorted(unknown)}.")
        unknown = set(self.learning_rates) - set(PARTS)
        if unknown:
            raise ValueError(f"learning_rates keys must be among {PARTS}, got {sorted(unknown)}.")
        check_processor_kwargs(self.processor_kwargs)


def check_processor_kwargs(processor_kwargs: dict) -> None:
    """Only image and video settings, and none that the budget ladder sets (which would silently win)."""
    unknown = set(processor_kwargs) - set(BUDGET_KEYS)
    if unknown:
        raise ValueError(f"processor_kwargs takes {sorted(BUDGET_KEYS)}, got {sorted(unknown)}.")
    for group, keys in BUDGET_KEYS.items():
        taken = sorted(set(processor_kwargs.get(group) or {}) & set(keys))
        if taken:
            raise ValueError(
                f"processor_kwargs.{group} sets {taken}, which the budget ladder controls; use max_pixels, "
                "video_max_pixels and max_frames instead."
            )


@dataclass
class Recipe:
    """One stage: the vision settings, TRL's trainer arguments and TRL's model arguments."""

    vision: VisionArguments
    sft: SFTConfig
    model: ModelConfig

    def __post_init__(self):
        # An empty model_name_or_path (`--model_name_or_path=`) unsets an inherited one.
        self.model.model_name_or_path = self.model.model_name_or_path or None
        if (self.model.model_name_or_path is None) == (self.vision.preset is None):
            raise ValueError(
                "Set one of model_name_or_path (a checkpoint folder) or preset (fresh weights), got "
                f"{self.model.model_name_or_path!r} and {self.vision.preset!r}."
            )
        if self.vision.processor is None and self.model.model_name_or_path is None:
            raise ValueError("Set processor when building the model from a preset.")

    @property
    def stage(self) -> str:
        return self.vision.stage

    @property
    def processor_path(self) -> str:
        return self.vision.processor or self.model.model_name_or_path


def read_recipe_file(path: str, seen: tuple[str, ...] = ()) -> dict:
    """The keys of a recipe file, after resolving its `inherit:` chain (the file's own keys win)."""
    path = os.path.abspath(path)
    if path in seen:
        raise ValueError(f"Recipe inheritance loops: {' -> '.join((*seen, path))}.")
    with open(path) as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ValueError(f"Recipe {path} must be a YAML mapping.")
    parent = values.pop(INHERIT, None)
    if parent is None:
        return values
    return {**read_recipe_file(os.path.join(os.path.dirname(path), parent), (*seen, path)), **values}


# DataLoader workers per rank where the step runs on a GPU: decoding then overlaps the step instead of taking turns
# with it. A fixed count, not one per core, so a run resumed on another GPU machine reads its stream the same way.
GPU_DATA_WORKERS = 4
# Workers hand batches to the trainer through shared memory (/dev/shm); containers start with 64 MiB, which one
# batch of video rows exceeds (the worker then dies of a bus error).
MIN_WORKER_SHARED_MEMORY = 2 * 2**30
SHARED_MEMORY = "/dev/shm"


def shared_memory_bytes() -> int | None:
    """Size of the shared-memory file system DataLoader workers hand batches over through, or None without one."""
    import shutil

    try:
        return shutil.disk_usage(SHARED_MEMORY).total
    except OSError:
        return None


def default_data_workers(cuda: bool) -> int:
    """`dataloader_num_workers` where the recipe leaves it open: GPU_DATA_WORKERS on a GPU machine with room in
    /dev/shm, else 0. On a CPU-only machine workers would compete with the step for the same cores
    (bench/data_bench.py: fed by workers, training ran no faster on 2 cores); too little shared memory kills a worker
    on its first large batch, so the data path then stays in the training process, with a warning that says how to
    get the workers."""
    if not cuda:
        return 0
    room = shared_memory_bytes()
    if room is not None and room < MIN_WORKER_SHARED_MEMORY:
        warnings.warn(
            f"{SHARED_MEMORY} holds only {room / 2**20:.0f} MiB, too little for DataLoader workers to hand over "
            f"batches, so samples are decoded in the training process (dataloader_num_workers=0). In a container, "
            f"start it with more shared memory (docker run --shm-size=16g, or --ipc=host) to get "
            f"{GPU_DATA_WORKERS} workers per rank, or set dataloader_num_workers yourself.",
            stacklevel=3,
        )
        return 0
    return GPU_DATA_WORKERS


def apply_hardware_defaults(values: dict, given: set[str] = frozenset()) -> None:
    """Defaults that depend on the machine, where neither the recipe nor a command-line flag (`given`) sets them:
    TRL's bf16 mixed precision needs a GPU that supports it, pinning memory without a GPU only warns, and DataLoader
    workers pay off where the step does not run on the CPU cores (`default_data_workers`)."""
    cuda = torch.cuda.is_available()
    values.setdefault("bf16", cuda and torch.cuda.is_bf16_supported())
    values.setdefault("dataloader_pin_memory", cuda)
    if "dataloader_num_workers" not in values and "dataloader_num_workers" not in given:
        values["dataloader_num_workers"] = default_data_workers(cuda)


def use_current_checkpointing_names(values: dict) -> None:
    """Spell activation checkpointing with transformers' current names. TRL's configs default the deprecated
    `gradient_checkpointing` to True; a recipe may use either spelling, both map onto `activation_checkpointing*`
    (on when neither is given, TRL's default), and the old names are left unset."""
    for old, new, default in (
        ("gradient_checkpointing", "activation_checkpointing", True),
        ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs", None),
    ):
        given_old, given_new = values.pop(old, None), values.get(new)
        if given_old is not None and given_new is not None and given_old != given_new:
            raise ValueError(f"{old}={given_old!r} contradicts {new}={given_new!r}; set one.")
        values[new] = next((value for value in (given_new, given_old) if value is not None), default)
        values[old] = None


def recipe_parser() -> TrlParser:
    return TrlParser((VisionArguments, SFTConfig, ModelConfig))


def load_recipe(path: str, flags: list[str] = ()) -> Recipe:
    """The recipe in `path` (with its inherited files), then command-line `flags` (`--max_steps 10 ...`)."""
    values = read_recipe_file(path)
    for key, value in (values.pop("env", None) or {}).items():
        os.environ[key] = str(value)
    given = {flag[2:].split("=", 1)[0].replace("-", "_") for flag in flags if flag.startswith("--")}
    if "output_dir" not in values and "output_dir" not in given:
        raise ValueError(f"{path}: output_dir is required.")
    values.setdefault("stage", os.path.splitext(os.path.basename(path))[0])
    apply_hardware_defaults(values, given)
    use_current_checkpointing_names(values)
    parser = recipe_parser()
    unknown = parser.set_defaults_with_config(**values)
    if unknown:
        known = sorted(f.name for cls in (VisionArguments, SFTConfig, ModelConfig) for f in fields(cls))
        raise ValueError(
            f"Unknown keys in {path}: {unknown}. Keys are fields of VisionArguments, trl.SFTConfig or trl.ModelConfig "
            f"({len(known)} in all, e.g. {', '.join(known[:5])}, ...)."
        )
    vision, sft, model = parser.parse_args_into_dataclasses(args=list(flags))
    return Recipe(vision=vision, sft=sft, model=model)


__all__ = ["PARTS", "Recipe", "VisionArguments", "check_processor_kwargs", "load_recipe", "read_recipe_file"]
