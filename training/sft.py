"""Train one stage of the LLaVA-OneVision-2 curriculum with TRL's SFTTrainer.

    python -m llava_onevision2.training --config training/configs/stage2_instruct.yaml --max_steps 100
    accelerate launch --config_file training/accelerate/fsdp2_single_node.yaml \\
        -m llava_onevision2.training --config training/configs/stage2_instruct.yaml

The recipe (see `recipe.py`: TRL's SFTConfig and ModelConfig plus VisionArguments) names the data mixture, the parts
that learn and their learning rates, the sequence, frame and pixel budgets, and the trainer's arguments. Checkpoints
are complete model folders (weights, config, remote code, processor) that `from_pretrained` loads;
`--resume_from_checkpoint` continues a run exactly (optimizer, scheduler, RNG and data position; the data position
needs the same ranks and DataLoader workers, which each checkpoint records and a resumed run checks).
"""

from __future__ import annotations

import json
import logging
import os
import sys

import torch
from transformers import AutoProcessor, TrainerCallback, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import SFTConfig, SFTTrainer, get_peft_config, get_quantization_config

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

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        check_resume_readers(self.args, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

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


# Written into every checkpoint: how many readers dealt the data stream out (see TrainingStream).
DATA_READERS_FILE = "data_readers.json"


def data_readers(ranks: int, workers: int) -> dict:
    return {"ranks": ranks, "dataloader_workers_per_rank": workers}


class RecordDataReaders(TrainerCallback):
    """Records in each checkpoint the ranks and DataLoader workers that read the data stream: a resumed run replays
    its stream to the checkpoint's position only with the same ones (`check_resume_readers`)."""

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            with open(os.path.join(folder, DATA_READERS_FILE), "w") as handle:
                json.dump(data_readers(args.world_size, args.dataloader_num_workers), handle)


def resumed_checkpoint(resume, output_dir: str) -> str | None:
    """The checkpoint folder `trainer.train(resume_from_checkpoint=resume)` continues from, or None."""
    if resume in (None, False, "", "false", "False"):
        return None
    if resume in (True, "true", "True"):
        return get_last_checkpoint(output_dir)
    return str(resume)


def check_resume_readers(args: SFTConfig, resume) -> None:
    """A resumed run continues the data stream where it stopped only when the same ranks and DataLoader workers read
    it (each reader's share and draw depend on how many there are). Otherwise it would silently train on another
    order, so this fails, naming what to launch, unless `ignore_data_skip` says not to replay the stream."""
    checkpoint = resumed_checkpoint(resume, args.output_dir)
    path = os.path.join(checkpoint, DATA_READERS_FILE) if checkpoint else None
    if path is None or args.ignore_data_skip or not os.path.exists(path):  # older checkpoints have no record
        return
    with open(path) as handle:
        saved = json.load(handle)
    now = data_readers(args.world_size, args.dataloader_num_workers)
    if saved != now:
        raise ValueError(
            f"{checkpoint} was written by {saved['ranks']} rank(s) x {saved['dataloader_workers_per_rank']} "
            f"DataLoader worker(s), this run has {now['ranks']} x {now['dataloader_workers_per_rank']}: its data "
            f"stream would not continue where the checkpoint stopped. Launch {saved['ranks']} process(es) with "
            f"--dataloader_num_workers {saved['dataloader_workers_per_rank']}, or pass --ignore_data_skip true to "
            "go on with the stream restarted for the new layout."
        )


def load_processor(recipe: Recipe):
    """The stage's processor as saved; the recipe's `processor_kwargs` travel with every call instead of changing it,
    so checkpoints keep the processor's own defaults."""
    return AutoProcessor.from_pretrained(recipe.processor_path, trust_remote_code=True)


def build_model(recipe: Recipe, processor):
    """The stage's starting weights: a checkpoint folder, or a preset with fresh weights sized to the tokenizer."""
    # "auto": the checkpoint's own dtype (fresh weights: float32).
    dtype = "auto" if recipe.model.dtype in (None, "auto") else getattr(torch, recipe.model.dtype)
    if recipe.model.model_name_or_path:
        return LlavaOnevision2ForConditionalGeneration.from_pretrained(
            recipe.model.model_name_or_path,
            revision=recipe.model.model_revision,
            dtype=dtype,
            attn_implementation=recipe.model.attn_implementation,
            quantization_config=quantization_config(recipe),
        )
    tokenizer = processor.tokenizer
    config = fresh_model_config(recipe.vision.preset, recipe.vision.config_overrides, processor)
    model = LlavaOnevision2ForConditionalGeneration._from_config(
        config, dtype=torch.float32 if dtype == "auto" else dtype, attn_implementation=recipe.model.attn_implementation
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def fresh_model_config(preset: str, overrides: dict, processor) -> LlavaOnevision2Config:
    """A preset's configuration (with `overrides`) sized to the processor's tokenizer and using its token ids."""
    tokenizer = processor.tokenizer
    config = LlavaOnevision2Config.from_preset(preset, **overrides)
    config.image_token_id, config.video_token_id = processor.image_token_id, processor.video_token_id
    config.vision_start_token_id = processor.vision_start_token_id
    config.vision_end_token_id = processor.vision_end_token_id
    config.text_config.vocab_size = max(config.text_config.vocab_size, len(tokenizer))
    config.pad_token_id = config.text_config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = config.text_config.eos_token_id = tokenizer.eos_token_id
    return config


def quantization_config(recipe: Recipe):
    """TRL's bitsandbytes config for `load_in_4bit` / `load_in_8bit`, after checking this machine can run it."""
    if not (recipe.model.load_in_4bit or recipe.model.load_in_8bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ValueError(
            "load_in_4bit / load_in_8bit (QLoRA) needs the bitsandbytes package and a CUDA GPU."
        ) from error
    if not torch.cuda.is_available():
        raise ValueError("load_in_4bit / load_in_8bit (QLoRA) needs a CUDA GPU; none is visible.")
    return get_quantization_config(recipe.model)


def resolve_sources(recipe: Recipe) -> list[DataSource]:
    """The stage's data sources, with relative paths under `data_root` (a Hub id stays a Hub id unless a folder of
    that name exists there)."""
    sources = []
    root = recipe.vision.data_root
    for values in recipe.vision.sources:
        source = DataSource.from_dict(dict(values))
        if root:
            local = os.path.join(root, source.path)
            if os.path.exists(local) or not HUB_ID.match(source.path):
                source.path = local
            if source.media_root:
                source.media_root = os.path.join(root, source.media_root)
        sources.append(source)
    return sources


def recipe_videos_kwargs(processor_kwargs: dict) -> dict:
    return processor_kwargs.get("videos_kwargs") or {}


def check_sources(sources: list[DataSource], processor, processor_kwargs: dict) -> None:
    """Distinct labels (drop reports and sample ids name records by them) and valid per-source video back-ends."""
    labels = [source.label for source in sources]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(
            f"Data sources share the name(s) {repeated}; give each a distinct `name` (e.g. one file listed per "
            "backend, or two subsets of one Hub dataset)."
        )
    backends = processor.video_processor.video_samplers
    stage_backend = (recipe_videos_kwargs(processor_kwargs) or {}).get("video_backend")
    if stage_backend is not None and stage_backend not in backends:
        raise ValueError(
            f"processor_kwargs.videos_kwargs.video_backend {stage_backend!r} is not one of {sorted(backends)}."
        )
    for source in sources:
        if source.video_backend is not None and source.video_backend not in backends:
            raise ValueError(
                f"Data source {source.label!r}: video_backend {source.video_backend!r} is not one of "
                f"{sorted(backends)}."
            )


def data_stats_dir(recipe: Recipe) -> str:
    return os.path.join(recipe.sft.output_dir, "data_stats")


def training_dataset(recipe: Recipe, processor) -> TrainingStream:
    sources = resolve_sources(recipe)
    vision = recipe.vision
    check_sources(sources, processor, vision.processor_kwargs)
    return TrainingStream(
        sources,
        processor,
        recipe.sft.max_length,
        budget_ladder(vision.max_pixels, vision.max_frames, vision.video_max_pixels),
        vision.processor_kwargs,
        seed=vision.mixture_seed,
        stats_dir=data_stats_dir(recipe),
        record_sample_ids=vision.record_sample_ids,
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


def check_trainer_settings(args: SFTConfig) -> None:
    """What the data path needs from the trainer (training/configs/base.yaml sets it): every processed key reaches
    the collator, samples arrive tokenised and within max_length, and accelerate neither dispatches batches from rank
    0 (which would read only rank 0's share of the stream) nor splits each batch between ranks."""
    needs = {
        "remove_unused_columns": (args.remove_unused_columns is False, "false"),
        "dataset_kwargs": (
            (args.dataset_kwargs or {}).get("skip_prepare_dataset") is True,
            "{skip_prepare_dataset: true}",
        ),
        "max_length": (args.max_length is not None, "a token count"),
        "packing": (not args.packing, "false (use pack_samples: TRL's packing replaces the collator)"),
        "accelerator_config": (
            args.accelerator_config.dispatch_batches is False and args.accelerator_config.split_batches is False,
            "{dispatch_batches: false, split_batches: false}",
        ),
    }
    wrong = [f"{name}: {wanted}" for name, (ok, wanted) in needs.items() if not ok]
    if wrong:
        raise ValueError(
            "The recipe's trainer settings do not fit the training stream; set "
            + "; ".join(wrong)
            + " (training/configs/base.yaml has them: inherit it)."
        )


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
    if recipe.model.use_peft and recipe.vision.merge_lora:
        merged_dir = os.path.join(output_dir, "merged")
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(merged_dir)
        processor.save_pretrained(merged_dir)


def prepare(recipe: Recipe, model=None, processor=None):
    """Trainer (ready to `train()`), processor and the `SampleStats` of this process's data reading (without
    DataLoader workers; with them, `run` adds up every reader's counts) of a stage; the model's trainable parts are
    set."""
    check_trainer_settings(recipe.sft)
    processor = processor or load_processor(recipe)
    set_seed(recipe.sft.seed)  # fresh weights are part of the run: same seed, same start
    model = model or build_model(recipe, processor)
    model.config.use_cache = False
    if not recipe.model.use_peft:
        counts = set_trainable(model, recipe.vision.trainable)
        logger.info("Stage %s trains %s", recipe.stage, {k: f"{v:,}" for k, v in counts.items() if v})
    stream = training_dataset(recipe, processor)
    trainer = StageTrainer(
        model=model,
        args=recipe.sft,
        train_dataset=stream.as_dataset(),
        data_collator=MultimodalCollator(
            processor.tokenizer.pad_token_id, packing=recipe.vision.pack_samples, max_length=recipe.sft.max_length
        ),
        processing_class=processor,
        peft_config=get_peft_config(recipe.model),
        learning_rates=recipe.vision.learning_rates,
        callbacks=[RecordDataReaders()],
    )
    if recipe.sft.fsdp and not torch.cuda.is_available():
        enable_fsdp_on_cpu(trainer)
    stream.reset_stats()  # SFTTrainer reads one sample to inspect the data; training starts from zero
    return trainer, processor, stream.stats


def run(recipe: Recipe) -> dict:
    # Our progress lines at INFO, libraries at WARNING (accelerate repeats an INFO line on every evaluation pass).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    trainer, processor, _ = prepare(recipe)
    result = trainer.train(resume_from_checkpoint=recipe.sft.resume_from_checkpoint)
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
        print("usage: python -m llava_onevision2.training --config RECIPE.yaml [--key value ...]")
        return 2
    position = argv.index("--config")
    config_path = argv[position + 1]
    flags = argv[:position] + argv[position + 2 :]
    run(load_recipe(config_path, flags))
    return 0


__all__ = [
    "StageTrainer",
    "build_model",
    "fresh_model_config",
    "main",
    "model_part",
    "prepare",
    "run",
    "set_trainable",
]
