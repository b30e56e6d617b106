"""Training path: data adapters, labels, packing, bad samples, every stage recipe, LoRA, resume and FSDP2 on CPU."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from llava_onevision2.modeling import LlavaOnevision2ForConditionalGeneration
from llava_onevision2.training.collator import MultimodalCollator, first_fit_rows, one_shared_buffer
from llava_onevision2.training.data import (
    DataSource,
    SampleStats,
    SourceRecord,
    budget_ladder,
    llava_to_messages,
    messages_record,
    mixed_records,
    processed_samples,
    video_budget,
)
from llava_onevision2.training.recipe import load_recipe, read_recipe_file
from llava_onevision2.training.sft import load_processor, model_part, prepare, training_dataset
from llava_onevision2.training.sources import SourceRecords
from llava_onevision2.training.toy import build_toy_processor, write_toy_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
# The tiny preset, one layer deep: fresh weights for one-step stage runs.
TOY_SHAPES = "--config_overrides={vision_config: {num_hidden_layers: 1, frame_windows_size: 4}, text_config: {num_hidden_layers: 1}}"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_dataset(str(root / "data"), images=12, videos=12, frames=4)
    build_toy_processor(str(root / "processor"))
    return root


@pytest.fixture(scope="module")
def processor(toy):
    return build_toy_processor()


# -- adapters -------------------------------------------------------------------------------------------------------


def test_llava_placeholders_become_media_items_in_place():
    record = {
        "images": ["a.png", "b.png"],
        "conversations": [
            {"from": "human", "value": "Compare <image> with <image>\nnow."},
            {"from": "gpt", "value": "Same."},
        ],
    }
    messages = llava_to_messages(record, media_root="/m")["messages"]
    assert messages[0]["content"] == [
        {"type": "text", "text": "Compare "},
        {"type": "image", "image": "/m/a.png"},
        {"type": "text", "text": " with "},
        {"type": "image", "image": "/m/b.png"},
        {"type": "text", "text": "\nnow."},
    ]
    assert messages[1] == {"role": "assistant", "content": [{"type": "text", "text": "Same."}]}


def test_llava_placeholder_mismatch_puts_media_first():
    record = {
        "video": "v.mp4",
        "image": "i.png",
        "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "X"}],
    }
    content = llava_to_messages(record)["messages"][0]["content"]
    assert content == [
        {"type": "image", "image": "i.png"},
        {"type": "video", "video": "v.mp4"},
        {"type": "text", "text": "What?"},
    ]


def test_messages_records_fill_media_from_lists():
    record = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "video"}, {"type": "image", "path": "x.png"}, {"type": "text", "text": "?"}],
            },
            {"role": "assistant", "content": "ok"},
        ],
        "videos": ["clip.mp4"],
    }
    messages = messages_record(record, media_root="/data")["messages"]
    assert messages[0]["content"][:2] == [
        {"type": "video", "video": "/data/clip.mp4"},
        {"type": "image", "image": "/data/x.png"},
    ]
    assert messages[1]["content"] == [{"type": "text", "text": "ok"}]


def test_weighted_mixture_draws_from_every_source(tmp_path):
    for name, count in (("a", 50), ("b", 50)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"id": f"{name}{i}"}) + "\n" for i in range(count)))
    sources = [DataSource(str(tmp_path / "a.jsonl"), weight=3.0), DataSource(str(tmp_path / "b.jsonl"), weight=1.0)]
    mixed = mixed_records([(s, SourceRecords(s).share()) for s in sources], endless=True)
    drawn = [item for _, item in zip(range(4000), mixed)]
    share_a = sum(item.source == "a.jsonl" for item in drawn) / len(drawn)
    assert abs(share_a - 0.75) < 0.03  # the weights are the proportions (sources restart when they run out)
    b_passes = Counter(item.epoch for item in drawn if item.source == "b.jsonl")
    assert len(b_passes) >= 18 and all(b_passes[epoch] == 50 for epoch in range(len(b_passes) - 1))  # whole passes
    again = mixed_records([(s, SourceRecords(s).share()) for s in sources], endless=True)
    assert [item.sample_id for _, item in zip(range(4000), again)] == [item.sample_id for item in drawn]
    streamed = DataSource(str(tmp_path / "a.jsonl"), streaming=True)
    assert len(list(mixed_records([(streamed, SourceRecords(streamed).share())]))) == 50


# -- labels, packing, bad samples -----------------------------------------------------------------------------------


def samples_for(records, processor, root, max_length=512, stats=None):
    path = Path(root) / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    source = DataSource(str(path), media_root=str(root))
    raw = mixed_records([(source, SourceRecords(source).share())])
    ladder = budget_ladder(4096, 4, 4096)
    return list(processed_samples(raw, processor, max_length, ladder, {}, stats, {"records.jsonl": source}))


def test_labels_cover_only_assistant_turns(processor, toy):
    record = {
        "image": "train_image_00000.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"},
            {"from": "gpt", "value": "red"},
            {"from": "human", "value": "Describe the image."},
            {"from": "gpt", "value": "A red square."},
        ],
    }
    (sample,) = samples_for([record], processor, toy / "data" / "media")
    labelled = sample["labels"] != -100
    assert processor.decode(sample["input_ids"][labelled]) == "red<|im_end|>A red square.<|im_end|>"
    # The two labelled spans are separate: the user turn between them is masked.
    assert np.count_nonzero(np.diff(labelled.astype(int)) == 1) == 2


def test_packing_gives_the_unpacked_loss(processor, toy):
    media = toy / "data" / "media"
    records = [
        json.loads(line) for line in (toy / "data" / "train_questions_image.jsonl").read_text().splitlines()[:3]
    ]
    records += [
        json.loads(line) for line in (toy / "data" / "train_questions_video.jsonl").read_text().splitlines()[:3]
    ]
    samples = samples_for(records, processor, media)
    recipe = load_recipe(
        str(CONFIGS / "toy" / "stage2_instruct.yaml"),
        [f"--processor={toy / 'processor'}", "--output_dir=/tmp/x", "--preset=tiny", TOY_SHAPES],
    )
    from llava_onevision2.training.sft import build_model

    torch.manual_seed(0)
    model = build_model(recipe, processor).eval()
    padded = MultimodalCollator(processor.tokenizer.pad_token_id)(samples)
    packed = MultimodalCollator(processor.tokenizer.pad_token_id, packing=True, max_length=512)(samples)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    with torch.no_grad():
        torch.testing.assert_close(model(**packed).loss, model(**padded).loss, atol=1e-5, rtol=1e-5)


def test_first_fit_rows():
    assert first_fit_rows([5, 4, 3, 2, 6], 8) == [[0, 2], [1, 3], [4]]


def test_one_shared_buffer_keeps_every_value_in_one_aligned_shared_segment():
    batch = {
        "input_ids": torch.arange(14).view(2, 7),
        "pixel_values": torch.randn(5, 3),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 4),
        "half": torch.randn(3, 2).to(torch.bfloat16),
        "use_cache": False,
    }
    shared = one_shared_buffer(batch)
    assert shared["use_cache"] is False
    storages = set()
    for key, tensor in batch.items():
        if not torch.is_tensor(tensor):
            continue
        assert shared[key].dtype == tensor.dtype and torch.equal(shared[key], tensor), key
        assert shared[key].is_shared() and shared[key].data_ptr() % 64 == 0, key
        storages.add(shared[key].untyped_storage().data_ptr())
    assert len(storages) == 1


class IndexBatches(torch.utils.data.IterableDataset):
    """Two samples per batch, each with an image row block, for collating in a worker."""

    def __iter__(self):
        for index in range(4):
            yield {
                "input_ids": np.full(3 + index, index),
                "labels": np.full(3 + index, index),
                "pixel_values": np.full((4, 6), float(index), dtype=np.float32),
                "image_grid_thw": np.array([[1, 2, 2]]),
            }


def test_a_worker_hands_the_batch_over_as_one_buffer_with_the_values_built_in_process():
    collator = MultimodalCollator(pad_token_id=0)
    in_process = list(torch.utils.data.DataLoader(IndexBatches(), batch_size=2, collate_fn=collator))
    from_worker = list(torch.utils.data.DataLoader(IndexBatches(), batch_size=2, collate_fn=collator, num_workers=1))
    assert len(in_process) == len(from_worker) == 2
    for here, there in zip(in_process, from_worker):
        assert here.keys() == there.keys()
        assert all(torch.equal(here[key], there[key]) for key in here)
        assert len({there[key].untyped_storage().data_ptr() for key in there}) == 1
        assert len({here[key].untyped_storage().data_ptr() for key in here}) == len(here)  # nothing to hand over


def test_per_frame_pixel_budget_never_becomes_the_codec_canvas_budget(processor):
    rung = budget_ladder(4096, 8, 2048)[0]
    frames = video_budget(processor, rung, "frames")
    assert frames == {"max_frames": 8, "video_backend": "frames", "max_pixels": 2048, "min_pixels": 2048}
    # A call-level max_pixels sets the codec canvas (released convention): the codec block keeps that say; and the
    # codec sampler reads no frame cap, which it would refuse.
    assert video_budget(processor, rung, "codec") == {"video_backend": "codec"}


def test_bad_samples_are_counted_not_fatal(processor, toy):
    media = toy / "data" / "media"
    good = {
        "image": "train_image_00001.png",
        "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "red"}],
    }
    missing = {
        "image": "nope.png",
        "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "red"}],
    }
    broken = {"conversations": [{"from": "alien", "value": "x"}]}
    long_video = {
        "video": "train_video_00000.mp4",
        "conversations": [{"from": "human", "value": "<video>\n" + "go " * 10}, {"from": "gpt", "value": "left"}],
    }
    stats = SampleStats()
    samples = samples_for([good, missing, broken, long_video, good], processor, media, max_length=150, stats=stats)
    assert len(samples) == 3 and stats.used == 3
    assert stats.retried_smaller == 1  # the video fitted with fewer frames
    reasons = " ".join(stats.dropped)
    assert "unreadable" in reasons and "malformed" in reasons
    too_long = SampleStats()
    assert samples_for([long_video], processor, media, max_length=40, stats=too_long) == []
    assert "longer than max_length=40" in " ".join(too_long.dropped)
    assert "1 dropped" in too_long.summary()


# -- stages ---------------------------------------------------------------------------------------------------------

STAGES = sorted(p.name for p in CONFIGS.glob("stage*.yaml"))


def stage_overrides(toy, output, extra=()):
    """Command-line flags that run a stage recipe on the toy data with fresh tiny weights."""
    return [
        "--model_name_or_path=",
        "--preset=tiny",
        "--dtype=float32",
        TOY_SHAPES,
        f"--processor={toy / 'processor'}",
        f"--data_root={toy / 'data'}",
        "--sources=[{path: train_questions_image.jsonl, media_root: media}, {path: train_questions_video.jsonl, media_root: media}]",
        "--max_length=512",
        f"--output_dir={output}",
        "--max_steps=1",
        "--per_device_train_batch_size=4",
        "--gradient_accumulation_steps=1",
        "--save_strategy=no",
        "--logging_steps=1",
        "--warmup_steps=0",  # one step of warmup would mean a learning rate of zero
        *extra,
    ]


@pytest.mark.parametrize("stage", STAGES)
def test_one_step_of_each_stage_changes_only_its_parts(stage, toy, tmp_path):
    recipe = load_recipe(str(CONFIGS / stage), stage_overrides(toy, tmp_path))
    trainer, processor, stats = prepare(recipe)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(before[name], p.detach())}
    assert changed, "nothing learned"
    if not recipe.model.use_peft:
        assert {model_part(name) for name in changed} == set(recipe.vision.trainable)
    else:
        assert all("lora_" in name or "merger" in name for name in changed)
        assert not any("visual.encoder" in name for name in changed)
    assert stats.used >= 4


def test_learning_rate_groups_per_part(toy, tmp_path):
    recipe = load_recipe(str(CONFIGS / "stage2_instruct.yaml"), stage_overrides(toy, tmp_path))
    trainer, _, _ = prepare(recipe)
    optimizer = trainer.create_optimizer()
    rates = sorted({group["lr"] for group in optimizer.param_groups})
    assert rates == sorted({2.0e-6, 1.0e-5})
    vision_ids = {id(p) for n, p in trainer.model.named_parameters() if model_part(n) == "vision"}
    for group in optimizer.param_groups:
        if any(id(p) in vision_ids for p in group["params"]):
            assert group["lr"] == 2.0e-6 and all(id(p) in vision_ids for p in group["params"])


def test_a_source_can_sample_its_videos_its_own_way(processor, toy):
    """One stage mixes views of the same clips: a source's `video_backend` overrides the stage's for its records."""
    media = str(toy / "data" / "media")
    record = (toy / "data" / "train_questions_video.jsonl").read_text().splitlines()[0]
    rows = [SourceRecord("codec_view", "0", 0, record), SourceRecord("frames_view", "0", 0, record)]
    sources = {
        "codec_view": DataSource(path="unused", format="llava", media_root=media, video_backend="codec"),
        "frames_view": DataSource(path="unused", format="llava", media_root=media),
    }
    stage = {"videos_kwargs": {"video_backend": "frames", "video_format": "training", "fps": 1.0}}
    codec, frames = processed_samples(rows, processor, 512, budget_ladder(4096, 6, 4096), stage, sources=sources)
    assert "pixel_values_videos" in frames
    assert "pixel_values_videos" not in codec and "patch_positions" in codec  # canvases travel in the image keys
    assert frames["video_grid_thw"][0][0] == 4 and codec["image_grid_thw"][0][0] < 4  # 4 frames vs fewer canvases


def test_an_unknown_source_backend_fails_before_training(toy, tmp_path):
    sources = "--sources=[{path: train_questions_video.jsonl, media_root: media, video_backend: keyframes}]"
    recipe = load_recipe(str(CONFIGS / "stage2_instruct.yaml"), stage_overrides(toy, tmp_path, [sources]))
    with pytest.raises(ValueError, match="video_backend 'keyframes' is not one of"):
        prepare(recipe)


def recipe_with_flags(toy, tmp_path, path="stage2_instruct.yaml", **settings):
    """A stage recipe on the toy data with `settings` written into a recipe file that inherits it."""
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"inherit": str(CONFIGS / path), **settings}))
    return load_recipe(str(recipe), stage_overrides(toy, tmp_path))


@pytest.mark.parametrize(
    "given, expected",
    [({}, True), ({"gradient_checkpointing": False}, False), ({"activation_checkpointing": False}, False)],
)
def test_trainer_arguments_are_built_without_warnings(toy, tmp_path, given, expected):
    """The recipe spells checkpointing with transformers' current name (TRL defaults the deprecated one to True) and
    does not ask for pinned memory without a GPU; a recipe's either spelling takes effect."""
    import warnings

    settings = {"activation_checkpointing": None, **given}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        args = recipe_with_flags(toy, tmp_path, **settings).sft
    assert args.activation_checkpointing is expected and args.gradient_checkpointing is expected
    assert args.dataloader_pin_memory is torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert args.dataloader_num_workers == 0  # workers would only compete with the step for the cores


def test_data_workers_default_to_a_fixed_count_where_a_gpu_trains_and_shared_memory_has_room(monkeypatch):
    """Where the step runs on a GPU, DataLoader workers decode beside it: GPU_DATA_WORKERS per rank, whatever the core
    count (a resumed run reads its stream the same way). A container's small /dev/shm would kill the workers on their
    first large batch, so there the default is 0, with a warning naming the fix; a count the recipe or a flag sets is
    kept, without a warning."""
    import warnings

    from llava_onevision2.training import recipe as recipes

    def defaults(given=frozenset(), **values):
        recipes.apply_hardware_defaults(values, given)
        return values

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(recipes, "shared_memory_bytes", lambda: 64 * 2**30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert defaults()["dataloader_num_workers"] == recipes.GPU_DATA_WORKERS
        monkeypatch.setattr(recipes, "shared_memory_bytes", lambda: 64 * 2**20)
        assert defaults(dataloader_num_workers=2)["dataloader_num_workers"] == 2
        assert "dataloader_num_workers" not in defaults({"dataloader_num_workers"})  # the flag decides
    with pytest.warns(UserWarning, match=r"/dev/shm holds only 64 MiB.*--shm-size"):
        assert defaults()["dataloader_num_workers"] == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert defaults()["dataloader_num_workers"] == 0


def test_contradicting_checkpointing_names_fail_loudly(toy, tmp_path):
    with pytest.raises(ValueError, match="contradicts activation_checkpointing"):
        recipe_with_flags(toy, tmp_path, gradient_checkpointing=True, activation_checkpointing=False)


def test_stages_inherit_the_base_and_list_only_their_differences():
    """A stage file holds only what differs from base.yaml (no key repeats the inherited value)."""
    import yaml

    base = read_recipe_file(str(CONFIGS / "base.yaml"))
    for path in [*CONFIGS.glob("stage*.yaml"), CONFIGS / "toy" / "base.yaml"]:
        own = yaml.safe_load(path.read_text())
        assert own.pop("inherit") in ("base.yaml", "../base.yaml"), path
        repeated = {key for key, value in own.items() if key in base and base[key] == value}
        assert not repeated, (path.name, repeated)
    toy_base = read_recipe_file(str(CONFIGS / "toy" / "base.yaml"))
    for path in (CONFIGS / "toy").glob("stage*.yaml"):
        own = yaml.safe_load(path.read_text())
        assert own.pop("inherit") == "base.yaml"
        assert not {key for key, value in own.items() if key in toy_base and toy_base[key] == value}, path.name


def test_recipe_settings_that_would_be_ignored_fail_loudly(toy, tmp_path):
    with pytest.raises(ValueError, match=r"processor_kwargs.videos_kwargs sets \['max_frames'\]"):
        recipe_with_flags(toy, tmp_path, processor_kwargs={"videos_kwargs": {"max_frames": 8}})
    with pytest.raises(ValueError, match=r"Unknown keys in .*recipe.yaml: .*lora_rank"):
        recipe_with_flags(toy, tmp_path, lora_rank=8)
    with pytest.raises(ValueError, match="Set one of model_name_or_path"):
        load_recipe(str(CONFIGS / "stage2_instruct.yaml"), [*stage_overrides(toy, tmp_path), "--model_name_or_path=x"])
    # output_dir may come from the command line alone, in either spelling of the flag.
    bare = tmp_path / "bare.yaml"
    bare.write_text(f"inherit: {CONFIGS / 'toy' / 'base.yaml'}\n")
    assert load_recipe(str(bare), stage_overrides(toy, tmp_path)).sft.output_dir == str(tmp_path)
    with pytest.raises(ValueError, match="output_dir is required"):
        load_recipe(str(bare), [flag for flag in stage_overrides(toy, tmp_path) if "output_dir" not in flag])
    recipe = recipe_with_flags(toy, tmp_path, remove_unused_columns=True)
    with pytest.raises(ValueError, match="remove_unused_columns: false"):
        prepare(recipe)


def test_processor_settings_travel_with_each_call_and_leave_the_processor_as_saved(toy, tmp_path):
    settings = {"videos_kwargs": {"video_format": "evaluated", "num_frames": 2}}
    recipe = recipe_with_flags(toy, tmp_path, processor_kwargs=settings)
    processor = load_processor(recipe)
    samples = training_dataset(recipe, processor).samples(list(range(8)))
    video = next(sample for sample in samples if "video_grid_thw" in sample)
    grid = np.asarray(video["video_grid_thw"]).tolist()
    assert len(grid) == 2 and all(t == 1 for t, _, _ in grid)  # two frames, a grid row each (evaluated layout)
    # The toy processor's saved defaults are another layout and count; they stay as saved.
    assert (processor.video_processor.video_format, processor.video_processor.num_frames) == ("training", 6)
    assert load_processor(recipe).video_processor.to_dict() == processor.video_processor.to_dict()


@pytest.mark.slow
def test_resume_continues_the_same_loss_curve(toy, tmp_path):
    from llava_onevision2.training.sft import run

    recipe = str(CONFIGS / "toy" / "stage2_instruct.yaml")
    common = ["--max_steps=4", "--save_strategy=steps", "--save_steps=2", "--learning_rate=1.0e-3"]
    straight = run(load_recipe(recipe, stage_overrides(toy, tmp_path / "straight", common)))
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert checkpoint.exists() and (checkpoint / "optimizer.pt").exists() and (checkpoint / "rng_state.pth").exists()
    assert json.loads((checkpoint / "data_readers.json").read_text()) == {"ranks": 1, "dataloader_workers_per_rank": 0}
    with pytest.raises(ValueError, match=r"1 rank\(s\) x 0 DataLoader worker\(s\), this run has 1 x 1"):
        run(
            load_recipe(
                recipe,
                stage_overrides(toy, tmp_path / "other", common)
                + [f"--resume_from_checkpoint={checkpoint}", "--dataloader_num_workers=1"],
            )
        )
    resumed = run(
        load_recipe(
            recipe,
            stage_overrides(toy, tmp_path / "resumed", common) + [f"--resume_from_checkpoint={checkpoint}"],
        )
    )
    losses = lambda report: [e["loss"] for e in report["log_history"] if "loss" in e]  # noqa: E731
    assert resumed["global_step"] == 4 and len(losses(straight)) == 4
    # Steps 3 and 4 after resuming equal steps 3 and 4 of the uninterrupted run (same data, optimizer and RNG).
    np.testing.assert_allclose(losses(resumed)[-2:], losses(straight)[2:], rtol=1e-4)
    reloaded = LlavaOnevision2ForConditionalGeneration.from_pretrained(tmp_path / "resumed")
    assert reloaded.config.image_token_id == build_toy_processor().image_token_id


def test_resuming_with_other_readers_fails_unless_the_stream_is_not_replayed(tmp_path):
    """The check behind a resumed run's data position: the checkpoint's ranks x workers must be this run's; the
    latest checkpoint is found for `resume_from_checkpoint=True`; `ignore_data_skip` and checkpoints without a
    record pass."""
    from types import SimpleNamespace

    from llava_onevision2.training.sft import check_resume_readers

    for step, workers in ((2, 4), (4, 2)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "data_readers.json").write_text(
            json.dumps({"ranks": 8, "dataloader_workers_per_rank": workers})
        )
    (tmp_path / "checkpoint-1").mkdir()  # written before the record existed

    def args(workers=2, world_size=8, ignore_data_skip=False):
        return SimpleNamespace(
            output_dir=str(tmp_path),
            dataloader_num_workers=workers,
            world_size=world_size,
            ignore_data_skip=ignore_data_skip,
        )

    check_resume_readers(args(), True)  # the latest, checkpoint-4: 8 x 2, as now
    check_resume_readers(args(workers=0), None)  # not resuming
    check_resume_readers(args(workers=0), str(tmp_path / "checkpoint-1"))
    with pytest.raises(ValueError, match=r"8 rank\(s\) x 4 .* this run has 8 x 2.*--dataloader_num_workers 4"):
        check_resume_readers(args(), str(tmp_path / "checkpoint-2"))
    with pytest.raises(ValueError, match=r"this run has 4 x 2.*Launch 8 process"):
        check_resume_readers(args(world_size=4), True)
    check_resume_readers(args(ignore_data_skip=True), str(tmp_path / "checkpoint-2"))


@pytest.mark.slow
def test_lora_adapters_merge_into_a_loadable_model(toy, tmp_path):
    """The merged folder reproduces the trained adapter model's outputs, and the adapters changed them."""
    from PIL import Image

    from llava_onevision2.training.sft import save_outputs

    output = tmp_path / "lora"
    recipe = load_recipe(
        str(CONFIGS / "stage2_instruct_lora.yaml"),
        stage_overrides(toy, output, ["--max_steps=2", "--lora_r=4", "--lora_alpha=8", "--learning_rate=1.0e-2"]),
    )
    trainer, processor, _ = prepare(recipe)
    inputs = processor(
        text="<|image_pad|> hi", images=[Image.new("RGB", (64, 64), (200, 30, 30))], return_tensors="pt"
    )
    with torch.no_grad():
        trainer.model.eval()
        untrained = trainer.model(**inputs).logits
    trainer.train()
    trainer.model.eval()
    with torch.no_grad():
        adapted = trainer.model(**inputs).logits
    save_outputs(trainer, processor, recipe, str(output))
    assert (output / "adapter_config.json").exists()
    merged = LlavaOnevision2ForConditionalGeneration.from_pretrained(output / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(adapted, untrained, atol=1e-4)


@pytest.mark.slow
def test_fsdp2_two_processes_on_cpu_save_a_reloadable_checkpoint(toy, tmp_path):
    output = tmp_path / "fsdp"
    overrides = stage_overrides(toy, output, ["--max_steps=2", "--fsdp=full_shard", "--use_cpu=true"])
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "llava_onevision2.training",
        "--config",
        str(CONFIGS / "toy" / "stage2_instruct.yaml"),
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((output / "training_report.json").read_text())
    assert report["global_step"] == 2
    model = LlavaOnevision2ForConditionalGeneration.from_pretrained(output)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_systematic_failure_stops_with_a_diagnosis(processor, toy):
    missing = {
        "image": "nowhere.png",
        "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "red"}],
    }
    stats = SampleStats()
    with pytest.raises(
        RuntimeError, match=r"The first 50 samples all failed.*unreadable sample \(FileNotFoundError\)"
    ):
        samples_for([missing] * 60, processor, toy / "data" / "media", stats=stats)


RELEASED_SOURCES = {
    "stage1_video_bootstrap.yaml": ["split_30s.jsonl", "LLaVA-OneVision-1.5-Mid-Training-85M"],
    "stage2_instruct.yaml": ["LLaVA-OneVision-1.5-Instruct-Data", "split_60s.jsonl", "split_180s.jsonl"],
    "stage3_long_video.yaml": ["split_gt10min.jsonl", "LLaVA-Video-178K/"],
    "stage4_codec_spatial.yaml": ["split_gt10min.jsonl", "LLaVA-OneVision-2-Data/spatial"],
}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_recipes_name_the_released_sources(stage):
    recipe = load_recipe(str(CONFIGS / stage), [])
    sources = [DataSource.from_dict(dict(values)) for values in recipe.vision.sources]
    labels = [source.label for source in sources]
    assert len(set(labels)) == len(labels)
    paths = " ".join(source.path for source in sources)
    assert all(name in paths for name in RELEASED_SOURCES.get(stage, []))
    for source in sources:
        if source.path.endswith("jsonl") and "caption_v0" in source.path:
            assert source.columns == {"videos": "images_source"} and source.media_root
