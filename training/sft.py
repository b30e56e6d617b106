"""Train one stage of the LLaVA-OneVision-2 curriculum with TRL's SFTTrainer.

    python -m llava_onevision2.training --config training/configs/stage2_instruct.yaml training.max_steps=100
    accelerate launch --config_file training/accelerate/fsdp2_single_node.yaml \\
        -m llava_onevision2.training --config training/configs/stage2_instruct.yaml

The recipe (see `recipe.py`) names the data mixture, the parts that learn and their learning rates, the sequence,
frame and pixel budgets, and the TRL / Trainer arguments. Checkpoints are complete model folders (weights, config,
remote code, processor) that `from_pretrained` loads; `training.resume_from_checkpoint` continues a run exactly
(optimizer, scheduler, RNG and data position).
"""

from __future__ import annotations

import json
import logging
import os
import sys

import torch
from transformers import AutoProcessor, set_seed
from trl import SFTConfig, SFTTrainer

from ..modeling import LlavaOnevision2Config, LlavaOnevision2ForConditionalGeneration
from .collator import MultimodalCollator
from .data import DataSource, SampleStats, TrainingStream, budget_ladder, collect_stats, distributed_position
from .recipe import PARTS, Recipe, load_recipe
from .sources import HUB_ID

logger = logging.getLogger("llava_onevision2.training")


def model_part(parameter_name: str) -> str:
    """Which part of the model a parameter belongs to: "merger", "vision" or "llm"."""
    if "visual.merger." in parameter_name:
        return "merger"
    if "visual." in parameter_name:
        return "vision"
    return "llm"


def set_trainable(model, parts: list[str]) -> dict[str, int]:
    """Freeze every parameter outside `parts`; returns trainable parameter counts per part."""
    counts = dict.fromkeys(PARTS, 0)
    for name, parameter in model.named_parameters():
        part = model_part(name)
        parameter.requires_grad = part in parts
        if parameter.requires_grad:
            counts[part] += parameter.numel()
    return counts


class StageTrainer(SFTTrainer):
    """SFTTrainer with one optimizer parameter group per model part (vision tower, merger, LLM), each with its own
    learning rate; weight decay is kept off biases and norms as in the base Trainer."""

    def __init__(self, *args, learning_rates: dict | None = None, **kwargs):
        self.learning_rates = dict(learning_rates or {})
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = model or self.model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[str, bool], dict] = {}
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            part, decays = model_part(name), name in decay
            group = groups.setdefault(
                (part, decays),
                {
                    "params": [],
                    "lr": self.learning_rates.get(part, self.args.learning_rate),
                    "weight_decay": self.args.weight_decay if decays else 0.0,
                },
            )
            group["params"].append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(list(groups.values()), **optimizer_kwargs)
        return self.optimizer


def load_processor(recipe: Recipe):
    path = recipe.model.processor or recipe.model.name_or_path
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    processor.video_processor.video_format = recipe.data.video_format
    processor.video_processor.fps = recipe.data.video_fps
    return processor


def build_model(recipe: Recipe, processor):
    """The stage's starting weights: a checkpoint folder, or a preset with fresh weights sized to the tokenizer."""
    dtype = getattr(torch, recipe.model.dtype)
    quantization = None
    if recipe.lora is not None and recipe.lora.load_in_4bit:
        quantization = four_bit_quantization()
    if recipe.model.name_or_path:
        return LlavaOnevision2ForConditionalGeneration.from_pretrained(
            recipe.model.name_or_path,
            dtype=dtype,
            attn_implementation=recipe.model.attn_implementation,
            quantization_config=quantization,
        )
    tokenizer = processor.tokenizer
    if recipe.model.preset in (None, "custom"):
        config = LlavaOnevision2Config(**recipe.model.config_overrides)
    else:
        config = LlavaOnevision2Config.from_preset(recipe.model.preset, **recipe.model.config_overrides)
    config.image_token_id, config.video_token_id = processor.image_token_id, processor.video_token_id
    config.vision_start_token_id = processor.vision_start_token_id
    config.vision_end_token_id = processor.vision_end_token_id
    config.text_config.vocab_size = max(config.text_config.vocab_size, len(tokenizer))
    config.pad_token_id = config.text_config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = config.text_config.eos_token_id = tokenizer.eos_token_id
    model = LlavaOnevision2ForConditionalGeneration._from_config(
        config, dtype=dtype, attn_implementation=recipe.model.attn_implementation
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def four_bit_quantization():
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as error:
        raise ValueError("lora.load_in_4bit (QLoRA) needs the bitsandbytes package and a CUDA GPU.") from error
    if not torch.cuda.is_available():
        raise ValueError("lora.load_in_4bit (QLoRA) needs a CUDA GPU; none is visible.")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def lora_config(recipe: Recipe):
    if recipe.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=recipe.lora.target_modules,  # the language model only: the vision tower stays frozen
        modules_to_save=["merger"] if recipe.lora.train_merger else None,
        task_type="CAUSAL_LM",
    )


def resolve_sources(recipe: Recipe) -> list[DataSource]:
    """The stage's data sources, with relative paths under `data.root` (a Hub id stays a Hub id unless a folder of
    that name exists there)."""
    sources = []
    for values in recipe.data.sources:
        source = DataSource.from_dict(dict(values))
        if recipe.data.root:
            local = os.path.join(recipe.data.root, source.path)
            if os.path.exists(local) or not HUB_ID.match(source.path):
                source.path = local
            if source.media_root:
                source.media_root = os.path.join(recipe.data.root, source.media_root)
        sources.append(source)
    return sources


def check_sources(sources: list[DataSource], processor) -> None:
    """Distinct labels (drop reports and sample ids name records by them) and valid per-source video back-ends."""
    labels = [source.label for source in sources]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(
            f"Data sources share the name(s) {repeated}; give each a distinct `name` (e.g. one file listed per "
            "backend, or two subsets of one Hub dataset)."
        )
    backends = processor.video_processor.video_backends
    for source in sources:
        if source.video_backend is not None and source.video_backend not in backends:
            raise ValueError(
                f"Data source {source.label!r}: video_backend {source.video_backend!r} is not one of "
                f"{sorted(backends)}."
            )


def data_stats_dir(recipe: Recipe) -> str:
    return os.path.join(recipe.training.get("output_dir", "."), "data_stats")


def training_dataset(recipe: Recipe, processor) -> TrainingStream:
    sources = resolve_sources(recipe)
    check_sources(sources, processor)
    return TrainingStream(
        sources,
        processor,
        recipe.data.max_length,
        budget_ladder(recipe.data.max_pixels, recipe.data.max_frames, recipe.data.video_max_pixels),
        recipe.data.video_backend,
        seed=recipe.data.seed,
        stats_dir=data_stats_dir(recipe),
        record_sample_ids=recipe.data.record_sample_ids,
    )


def all_ranks_values(value) -> list:
    """`value` of every rank, in rank order (a one-element list without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def all_ranks_stats(stats_dir: str) -> SampleStats:
    """The sample counts of every reader of every rank (each rank adds up its own readers' files, then the ranks
    exchange them, so no shared file system is needed)."""
    rank, world = distributed_position()
    total = SampleStats()
    for stats in all_ranks_values(collect_stats(stats_dir, rank, world)):
        total.merge(stats)
    return total


def sft_config(recipe: Recipe) -> SFTConfig:
    values = dict(recipe.training)
    values.setdefault("remove_unused_columns", False)  # the collator needs every processed key
    values.setdefault("dataset_kwargs", {"skip_prepare_dataset": True})
    values.setdefault("max_length", None)  # truncation is the data path's job (never through vision tokens)
    values.setdefault("report_to", "none")
    # TRL defaults to bf16 mixed precision, which needs a GPU that supports it.
    values.setdefault("bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    values.setdefault("dataloader_pin_memory", torch.cuda.is_available())  # pinning without a GPU only warns
    values.pop("resume_from_checkpoint", None)
    values["accelerator_config"] = stream_accelerator_config(values.get("accelerator_config"))
    use_current_checkpointing_names(values)
    return SFTConfig(**values)


def stream_accelerator_config(given: dict | None) -> dict:
    """The training stream is dealt out by rank and worker (see `TrainingStream`); accelerate must neither dispatch
    batches from rank 0 (which would read only rank 0's share) nor split each batch between ranks."""
    config = dict(given or {})
    for key in ("dispatch_batches", "split_batches"):
        if config.get(key):
            raise ValueError(
                f"training.accelerator_config.{key}=true does not work with the training stream, which gives each "
                "rank and DataLoader worker its own share of the records; leave it unset."
            )
        config[key] = False
    return config


def use_current_checkpointing_names(values: dict) -> None:
    """Spell activation checkpointing with transformers' current names.

    TRL's configs default the deprecated `gradient_checkpointing` to True, so every SFTConfig built without the new
    name warns. A recipe may use either spelling; both are mapped onto `activation_checkpointing*` (TRL's default,
    on, when neither is given), and the old names are left unset."""
    for old, new, default in (
        ("gradient_checkpointing", "activation_checkpointing", True),
        ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs", None),
    ):
        given_old, given_new = values.pop(old, None), values.get(new)
        if given_old is not None and given_new is not None and given_old != given_new:
            raise ValueError(f"training.{old}={given_old!r} contradicts training.{new}={given_new!r}; set one.")
        values[new] = next((value for value in (given_new, given_old) if value is not None), default)
        values[old] = None


def enable_fsdp_on_cpu(trainer) -> None:
    """accelerate silently falls back to DDP for FSDP on CPU; switch its state to FSDP2 so the sharded path can be
    exercised without GPUs (tests and debugging only)."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    layers = sorted(trainer.model._no_split_modules)
    trainer.accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=layers
    )
    trainer.accelerator.state.distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def save_outputs(trainer, processor, recipe: Recipe, output_dir: str) -> None:
    """Write a complete model folder (weights, config, code, processor); merged weights too for LoRA."""
    if trainer.is_fsdp_enabled and not torch.cuda.is_available():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(
            trainer.model_wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if trainer.accelerator.is_main_process:
            unwrapped = trainer.accelerator.unwrap_model(trainer.model)
            unwrapped.save_pretrained(output_dir, state_dict={k: v.clone() for k, v in state.items()})
    else:
        trainer.save_model(output_dir)
    if not trainer.accelerator.is_main_process:
        return
    processor.save_pretrained(output_dir)
    if recipe.lora is not None and recipe.merge_lora:
        merged_dir = os.path.join(output_dir, "merged")
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(merged_dir)
        processor.save_pretrained(merged_dir)


def prepare(recipe: Recipe, model=None, processor=None):
    """Trainer (ready to `train()`), processor and the `SampleStats` of this process's data reading (without
    DataLoader workers; with them, `run` adds up every reader's counts) of a stage; the model's trainable parts are
    set."""
    processor = processor or load_processor(recipe)
    set_seed(recipe.training.get("seed", 42))  # fresh weights are part of the run: same seed, same start
    model = model or build_model(recipe, processor)
    model.config.use_cache = False
    if recipe.lora is None:
        counts = set_trainable(model, recipe.trainable)
        logger.info("Stage %s trains %s", recipe.stage, {k: f"{v:,}" for k, v in counts.items() if v})
    stream = training_dataset(recipe, processor)
    trainer = StageTrainer(
        model=model,
        args=sft_config(recipe),
        train_dataset=stream.as_dataset(),
        data_collator=MultimodalCollator(
            processor.tokenizer.pad_token_id, packing=recipe.data.packing, max_length=recipe.data.max_length
        ),
        processing_class=processor,
        peft_config=lora_config(recipe),
        learning_rates=recipe.learning_rates,
    )
    if recipe.training.get("fsdp") and not torch.cuda.is_available():
        enable_fsdp_on_cpu(trainer)
    stream.reset_stats()  # SFTTrainer reads one sample to inspect the data; training starts from zero
    return trainer, processor, stream.stats


def run(recipe: Recipe) -> dict:
    # Our progress lines at INFO, libraries at WARNING (accelerate repeats an INFO line on every evaluation pass).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    trainer, processor, _ = prepare(recipe)
    result = trainer.train(resume_from_checkpoint=recipe.training.get("resume_from_checkpoint"))
    output_dir = trainer.args.output_dir
    save_outputs(trainer, processor, recipe, output_dir)
    stats = all_ranks_stats(data_stats_dir(recipe))
    steps_per_rank = all_ranks_values(trainer.state.global_step)
    logger.info("Data: %s", stats.summary())
    report = {
        "stage": recipe.stage,
        "global_step": trainer.state.global_step,
        "steps_per_rank": steps_per_rank,
        "train_loss": result.training_loss,
        "samples_used": stats.used,
        "samples_dropped": dict(stats.dropped),
        "samples_fitted_after_lowering_budgets": stats.retried_smaller,
        "log_history": trainer.state.log_history,
    }
    if trainer.accelerator.is_main_process:
        with open(os.path.join(output_dir, "training_report.json"), "w") as handle:
            json.dump(report, handle, indent=2, default=str)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        print(__doc__)
        print("usage: python -m llava_onevision2.training --config RECIPE.yaml [section.key=value ...]")
        return 2
    position = argv.index("--config")
    config_path = argv[position + 1]
    overrides = argv[:position] + argv[position + 2 :]
    run(load_recipe(config_path, overrides))
    return 0


__all__ = ["StageTrainer", "build_model", "main", "model_part", "prepare", "run", "set_trainable"]
