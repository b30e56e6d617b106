"""Training data in the released schemas: local parquet / webdataset / jsonl layouts, Hub ids, column mapping, both
turn styles, embedded media; and the stream that deals records out to ranks and DataLoader workers."""

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from released_schemas import (
    finevision_data,
    instruct_data,
    mid_training_data,
    png,
    spatial_data,
    video_caption_data,
    write_parquet,
)

from llava_onevision2.training.data import (
    SampleStats,
    TrainingStream,
    budget_ladder,
    mixed_records,
    processed_samples,
    to_messages,
)
from llava_onevision2.training.sources import DataSource, SourceRecords, read_webdataset_samples
from llava_onevision2.training.toy import build_toy_processor

REPO = Path(__file__).resolve().parents[1]
LADDER = budget_ladder(4096, 4, 4096)


@pytest.fixture(scope="module")
def processor():
    return build_toy_processor()


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Every released layout, tiny, with the source entry a recipe would list for it."""
    root = tmp_path_factory.mktemp("released")
    captions, clips = video_caption_data(str(root))
    return {
        "instruct": DataSource(instruct_data(str(root)), name="instruct"),
        "mid_training": DataSource(mid_training_data(str(root)), name="mid_training"),
        "finevision": DataSource(finevision_data(str(root)), name="finevision"),
        "video_captions": DataSource(
            captions, media_root=clips, columns={"videos": "images_source"}, name="video_captions"
        ),
        "spatial": DataSource(spatial_data(str(root)), name="spatial"),
    }


def samples_of(source: DataSource, processor, stats: SampleStats | None = None) -> list[dict]:
    records = mixed_records([(source, SourceRecords(source).share())])
    return list(processed_samples(records, processor, 1024, LADDER, {}, stats, {source.label: source}))


def answer_text(sample: dict, processor) -> str:
    return processor.tokenizer.decode(sample["labels"][sample["labels"] != -100])


# -- each released schema -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, count, visual_key, answer",
    [
        ("instruct", 8, "pixel_values", "red"),  # two subsets x 2 shards, one per turn style
        ("mid_training", 4, "pixel_values", "A plain red square."),
        ("finevision", 4, "pixel_values", "red"),
        ("video_captions", 3, "pixel_values_videos", "### 0. Context and Environment"),
        ("spatial", 4, "pixel_values", "Neither; it is one flat colour."),
    ],
)
def test_every_released_schema_becomes_samples_without_drops(released, processor, name, count, visual_key, answer):
    stats = SampleStats()
    samples = samples_of(released[name], processor, stats)
    assert stats.dropped == Counter() and len(samples) == count
    assert all(visual_key in sample for sample in samples)
    assert answer in answer_text(samples[0], processor)
    assert samples[0]["sample_id"] == f"{name}#0"


def test_instruct_subsets_with_different_turn_styles_share_one_folder(released):
    records = list(SourceRecords(released["instruct"]))
    assert {"from" in r["conversations"][0] for r in records} == {True, False}
    first = to_messages(records[0], "auto", None)["messages"]
    assert first[0]["role"] == "user" and first[0]["content"][0]["type"] == "image"
    assert first[0]["content"][0]["image"].size == (48, 48)  # the embedded PNG, opened (not yet decoded)


def test_finevision_texts_become_alternating_turns(released):
    record = next(iter(SourceRecords(released["finevision"])))
    messages = to_messages(record, "auto", None)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"][0]["type"] == "image"  # no placeholder: the image goes first
    assert messages[3]["content"] == [{"type": "text", "text": "Yes."}]


def test_caption_records_take_the_source_prompt(released, processor):
    plain = to_messages(next(iter(SourceRecords(released["mid_training"]))), "auto", None)["messages"]
    assert [item["type"] for item in plain[0]["content"]] == ["image"]
    prompted = to_messages(next(iter(SourceRecords(released["mid_training"]))), "auto", None, "Describe it.")
    assert prompted["messages"][0]["content"][1] == {"type": "text", "text": "Describe it."}
    with pytest.raises(ValueError, match="caption_prompt.*llava record"):
        to_messages({"conversations": [{"from": "human", "value": "x"}]}, "auto", None, "Describe it.")


def test_video_caption_messages_get_their_clip_first(released):
    source = released["video_captions"]
    record = json.loads(next(iter(SourceRecords(source))))
    record["videos"] = record.pop("images_source")
    messages = to_messages(record, "auto", source.media_root)["messages"]
    assert messages[0]["content"][0] == {
        "type": "video",
        "video": os.path.join(source.media_root, "30s/clip_0000.mp4"),
    }


def test_role_content_turns_with_item_lists_place_their_media():
    record = {
        "images": ["a.png", "b.png"],
        "conversations": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and <image>: same?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "No."}]},
        ],
    }
    user, assistant = to_messages(record, "auto", "/m")["messages"]
    assert user["content"] == [
        {"type": "image", "image": "/m/a.png"},
        {"type": "text", "text": "and "},
        {"type": "image", "image": "/m/b.png"},
        {"type": "text", "text": ": same?"},
    ]
    assert assistant == {"role": "assistant", "content": [{"type": "text", "text": "No."}]}


def test_hub_webdataset_samples_with_decoded_annotation_and_encoded_media():
    from llava_onevision2.training.sources import unpack_webdataset_sample

    sample = {
        "__key__": "s0",
        "__url__": "hf://spatial-00000.tar",
        "json": {"conversations": [{"from": "human", "value": "<image>\nWhere?"}, {"from": "gpt", "value": "Left."}]},
        "jpg": {"bytes": png("red", image_format="JPEG"), "path": "s0.jpg"},
    }
    record = unpack_webdataset_sample(sample)
    assert record["id"] == "s0" and record["images"] == [sample["jpg"]]
    user = to_messages(record, "auto", None)["messages"][0]
    assert user["content"][0]["type"] == "image" and user["content"][0]["image"].format == "JPEG"


def test_webdataset_members_group_by_key(released):
    samples = list(read_webdataset_samples([os.path.join(released["spatial"].path, "spatial-00000.tar")]))
    assert [s["__key__"] for s in samples] == [f"refcoco_{i:06d}" for i in range(4)]
    assert set(samples[0]) == {"__key__", "jpg", "json"}


# -- sources, columns, media ----------------------------------------------------------------------------------------


def test_columns_map_other_names_and_a_missing_column_is_reported(tmp_path, processor):
    path = write_parquet(
        str(tmp_path / "odd" / "part.parquet"),
        {
            "picture": [{"bytes": png("green"), "path": None}] * 2,
            "dialogue": [[{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "green"}]]
            * 2,
        },
        {
            "picture": datasets.Image(),
            "dialogue": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        },
    )
    mapped = DataSource(path, columns={"conversations": "dialogue", "image": "picture"})
    assert [answer_text(s, processor) for s in samples_of(mapped, processor)] == ["green<|im_end|>"] * 2
    stats = SampleStats()
    wrong = DataSource(path, columns={"conversations": "turns"})
    assert samples_of(wrong, processor, stats) == []
    assert "column 'turns' (mapped to 'conversations') is missing" in stats.examples["malformed record"]
    with pytest.raises(ValueError, match="columns maps \\['dialog'\\]"):
        DataSource.from_dict({"path": path, "columns": {"dialog": "dialogue"}})


def test_embedded_videos_and_broken_images_in_one_parquet(tmp_path, processor):
    from synthetic_media import encode_video

    path = write_parquet(
        str(tmp_path / "mixed.parquet"),
        {
            "video": [encode_video(num_frames=8, rate=4, gop=4), None],
            "image": [None, {"bytes": b"not an image", "path": None}],
            "conversations": [
                [{"from": "human", "value": "<video>\nWhat moves?"}, {"from": "gpt", "value": "A bar."}],
                [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}],
            ],
        },
        {
            "video": datasets.Value("binary"),
            "image": datasets.Image(),
            "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
        },
    )
    stats = SampleStats()
    samples = samples_of(DataSource(path), processor, stats)
    assert len(samples) == 1 and "pixel_values_videos" in samples[0]
    assert stats.dropped == Counter({"unreadable sample (UnidentifiedImageError)": 1})
    assert "record 1 of mixed.parquet" in stats.examples["unreadable sample (UnidentifiedImageError)"]


def test_arrow_files_written_by_datasets_are_a_source(tmp_path, released, processor):
    """A `save_to_disk` folder: Arrow stream files next to its JSON bookkeeping (which is not read as records)."""
    local = datasets.Dataset.from_parquet(str(next(Path(released["instruct"].path, "ai2d_gpt4v").glob("*.parquet"))))
    local.save_to_disk(str(tmp_path / "saved"))
    assert {p.suffix for p in (tmp_path / "saved").iterdir()} == {".arrow", ".json"}
    source = DataSource(str(tmp_path / "saved"), name="saved")
    samples = samples_of(source, processor)
    assert len(samples) == len(local) and all("pixel_values" in s for s in samples)


def test_every_image_form_reaches_the_processor_as_an_image():
    from PIL import Image

    from llava_onevision2.training.data import image_input

    encoded = png("blue")
    opened = Image.open(io.BytesIO(encoded))
    assert image_input(opened, None) is opened  # datasets.Image decoded to PIL
    for value in ({"bytes": encoded, "path": "x.png"}, encoded, bytearray(encoded)):
        assert image_input(value, "/m").convert("RGB").getpixel((0, 0)) == (30, 40, 220)
    assert image_input({"bytes": None, "path": "x.png"}, "/m") == "/m/x.png"
    assert image_input("x.png", "/m") == "/m/x.png" and image_input("/abs/x.png", "/m") == "/abs/x.png"
    with pytest.raises(ValueError, match="neither bytes nor a path"):
        image_input({"bytes": None, "path": None}, "/m")


def test_a_folder_mixing_file_kinds_or_holding_none_is_refused(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    write_parquet(str(tmp_path / "b.parquet"), {"x": [1]}, {"x": datasets.Value("int64")})
    with pytest.raises(ValueError, match="mixes \\['json', 'parquet'\\] files"):
        SourceRecords(DataSource(str(tmp_path)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .json / .jsonl / .parquet / .arrow / .tar files"):
        SourceRecords(DataSource(str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a Hub dataset id"):
        SourceRecords(DataSource(str(tmp_path / "missing.parquet")))


@pytest.mark.parametrize("streaming", [False, True])
def test_a_hub_id_passes_subset_split_revision_and_streaming(monkeypatch, released, streaming):
    calls = []
    local = datasets.Dataset.from_parquet(
        sorted(str(p) for p in Path(released["instruct"].path, "ai2d_gpt4v").glob("*.parquet"))
    )

    def load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return local.to_iterable_dataset(num_shards=2) if kwargs["streaming"] else local

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    source = DataSource(
        "mvp-lab/LLaVA-OneVision-1.5-Instruct-Data", subset="ai2d_gpt4v", revision="abc123", streaming=streaming
    )
    records = list(SourceRecords(source))
    assert calls == [
        (
            "mvp-lab/LLaVA-OneVision-1.5-Instruct-Data",
            {"name": "ai2d_gpt4v", "split": "train", "revision": "abc123", "streaming": streaming},
        )
    ]
    assert len(records) == 4 and set(records[0]["image"]) == {"bytes", "path"}  # media stay encoded


def test_an_unreachable_hub_dataset_says_how_to_fetch_it(tmp_path):
    code = (
        "from llava_onevision2.training.sources import DataSource, SourceRecords\n"
        "SourceRecords(DataSource('mvp-lab/LLaVA-OneVision-2-Data', subset='spatial'))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "Could not load the Hub dataset 'mvp-lab/LLaVA-OneVision-2-Data'" in result.stderr
    assert "hf download mvp-lab/LLaVA-OneVision-2-Data --repo-type dataset --include 'spatial/*'" in result.stderr


def test_reader_stats_survive_the_trip_through_their_file(tmp_path):
    stats = SampleStats(sample_ids=[], path=str(tmp_path / "reader.json"))
    stats.use("a#0", retried=True)
    stats.drop("malformed record", "record 1 of a", "KeyError: 'conversations'")
    stats.drop("malformed record", "record 2 of a")
    loaded = SampleStats.load(str(tmp_path / "reader.json"))
    assert (loaded.used, loaded.retried_smaller, loaded.sample_ids) == (1, 1, ["a#0"])
    assert loaded.dropped == Counter({"malformed record": 2})
    assert loaded.examples["malformed record"] == "record 1 of a: KeyError: 'conversations'"
    total = SampleStats()
    total.merge(loaded)
    total.merge(loaded)
    assert total.used == 2 and total.dropped["malformed record"] == 4 and total.sample_ids == ["a#0", "a#0"]


def test_recorded_ids_are_appended_beside_counts_that_stay_small(tmp_path):
    """An audited run writes each id once: the counts file does not grow with the samples, the ids file grows by
    one line per sample, and stats cleared before training start their ids file afresh."""
    path = str(tmp_path / "reader.json")
    stats = SampleStats(sample_ids=[], path=path)
    stats.use("warm-up#0", retried=False)
    stats.clear()
    sizes = []
    for index in range(300):
        stats.use(f'source "{index % 3}"#{index}', retried=False)
        sizes.append((os.path.getsize(path), os.path.getsize(SampleStats.ids_path(path))))
    assert sizes[-1][0] == sizes[99][0] < 200  # counts only: from 100 used to 300, the same three digits
    assert all(later[1] > earlier[1] for earlier, later in zip(sizes, sizes[1:]))
    with open(SampleStats.ids_path(path)) as handle:
        assert len(handle.readlines()) == 300  # appended, not rewritten: no warm-up id, no repeats
    loaded = SampleStats.load(path)
    assert loaded.used == 300 and loaded.sample_ids == [f'source "{i % 3}"#{i}' for i in range(300)]
    assert SampleStats.load(str(tmp_path / "reader.json")).sample_ids == stats.sample_ids
    unaudited = SampleStats(path=str(tmp_path / "plain.json"))
    unaudited.use("x#1", retried=False)
    assert SampleStats.load(unaudited.path).sample_ids is None
    assert not os.path.exists(SampleStats.ids_path(unaudited.path))


# -- the training stream --------------------------------------------------------------------------------------------


def stream_ids(stream: TrainingStream, rank: int, world: int, workers: int, count: int, monkeypatch) -> list[str]:
    """Sample ids one rank's DataLoader yields, as accelerate and `datasets` deal the stream out."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    dataset = stream.as_dataset().shard(num_shards=world, index=rank)  # what accelerate does per rank
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=lambda b: b[0])
    ids = []
    for sample in loader:
        ids.append(sample["sample_id"])
        if len(ids) == count:
            break
    return ids


def test_ranks_and_workers_decode_disjoint_shares_that_cover_each_pass(released, processor, monkeypatch):
    source = released["instruct"]  # 8 records
    stream = TrainingStream([source], processor, 1024, LADDER)
    shares = [stream_ids(stream, rank, 2, 2, 8, monkeypatch) for rank in range(2)]  # 2 passes' worth per rank
    everything = shares[0] + shares[1]
    assert len(set(everything)) == len(everything) == 16  # no stream position decoded twice
    for epoch in ("", "@1"):
        assert {i for i in everything if i.endswith(epoch) and (epoch or "@" not in i)} == {
            f"instruct#{k}{epoch}" for k in range(8)
        }
    assert shares[0][:4] == ["instruct#0", "instruct#1", "instruct#4", "instruct#5"]  # readers 0, 1 of 4 alternate


def test_a_large_source_is_dealt_by_whole_units_that_other_readers_never_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "many_groups"
    folder.mkdir()
    for file in range(2):
        table = pa.table({"id": [f"{file}-{row}" for row in range(32)], "conversations": [[]] * 32})
        pq.write_table(table, folder / f"part-{file}.parquet", row_group_size=4)  # 8 row groups per file
    records = SourceRecords(DataSource(str(folder)))
    assert len(records.units) == 16 and records.units[9].where.endswith("part-1.parquet row group 1")
    opened = []
    for unit in records.units:
        unit.read = (lambda read, number: lambda: opened.append(number) or read())(unit.read, unit.number)
    shares = [list(records.share(reader, 2)) for reader in range(2)]
    assert sorted(opened) == list(range(16))  # every unit read once, by one reader
    assert [k.key for k in shares[1][:5]] == ["1:0", "1:1", "1:2", "1:3", "3:0"]
    ids = [k.record["id"] for share in shares for k in share]
    assert sorted(ids) == sorted(f"{f}-{r}" for f in range(2) for r in range(32))
    opened.clear()
    list(records.share(1, 2))
    assert opened == list(range(1, 16, 2))  # reader 1 of 2 opens only the odd units


def test_a_source_smaller_than_the_reader_count_still_feeds_every_reader(tmp_path):
    path = tmp_path / "two.jsonl"
    path.write_text('{"id": 0}\n{"id": 1}\n')
    records = SourceRecords(DataSource(str(path)))
    got = [[k.record for k in records.share(reader, 4)] for reader in range(4)]
    assert got == [['{"id": 0}'], ['{"id": 1}'], ['{"id": 0}'], ['{"id": 1}']]


def test_the_stream_replays_identically(released, processor, monkeypatch):
    stream = TrainingStream([released["instruct"], released["finevision"]], processor, 1024, LADDER, seed=3)
    first = stream_ids(stream, 0, 1, 2, 12, monkeypatch)
    assert first == stream_ids(stream, 0, 1, 2, 12, monkeypatch)
    assert {i.split("#")[0] for i in first} == {"instruct", "finevision"}


# -- end to end -----------------------------------------------------------------------------------------------------

TOY_RECIPE = REPO / "training" / "configs" / "toy" / "stage0_alignment.yaml"  # fresh toy weights


def cli_overrides(output: Path, processor_dir: Path, sources: str, extra=()) -> list[str]:
    return [
        f"--processor={processor_dir}",
        f"--sources={sources}",
        "--max_length=1024",
        f"--output_dir={output}",
        "--per_device_train_batch_size=2",
        "--gradient_accumulation_steps=1",
        "--save_strategy=no",
        "--logging_steps=1",
        "--warmup_steps=0",
        *extra,
    ]


@pytest.mark.slow
def test_the_released_schemas_train_through_the_cli_with_zero_drops(released, tmp_path):
    build_toy_processor(str(tmp_path / "processor"))
    entries = []
    for source in released.values():
        entry = {"path": source.path, "name": source.name}
        if source.media_root:
            entry.update(media_root=source.media_root, columns=source.columns)
        entries.append(entry)
    command = [sys.executable, "-m", "llava_onevision2.training", "--config", str(TOY_RECIPE)]
    overrides = cli_overrides(
        tmp_path / "out",
        tmp_path / "processor",
        json.dumps(entries),
        ["--max_steps=12", "--record_sample_ids=true"],
    )
    result = subprocess.run(command + overrides, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "training_report.json").read_text())
    assert report["global_step"] == 12 and report["samples_dropped"] == {}
    assert report["samples_used"] >= 24
    (reader,) = (tmp_path / "out" / "data_stats").glob("*.json")
    used = SampleStats.load(str(reader)).sample_ids
    assert {sample_id.split("#")[0] for sample_id in used} == set(released)  # every source took part


def broken(index: int) -> bool:
    return index % 4 in (2, 3) and (index // 4) % 2 == 0


def write_unevenly_broken_records(folder: Path, count: int = 48) -> Path:
    """Colour questions; records dealt to rank 1 (stream positions 2 and 3 mod 4 with 2 ranks x 2 workers) are
    broken half the time, so the ranks drop very different numbers of samples (48 records: every pass repeats the
    pattern)."""
    folder.mkdir(parents=True, exist_ok=True)
    for colour in ("red", "green", "blue"):
        (folder / f"{colour}.png").write_bytes(png(colour))
    lines = []
    for index in range(count):
        colour = ("red", "green", "blue")[index % 3]
        image = "missing.png" if broken(index) else f"{colour}.png"
        turns = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": colour}]
        lines.append(json.dumps({"id": index, "image": image, "conversations": turns}))
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "records.jsonl"


def run_two_ranks(output: Path, processor_dir: Path, records: Path, extra: list[str]) -> dict:
    sources = json.dumps([{"path": str(records), "media_root": str(records.parent), "name": "colours"}])
    overrides = cli_overrides(
        output,
        processor_dir,
        sources,
        [
            "--per_device_train_batch_size=4",
            "--gradient_accumulation_steps=2",
            "--dataloader_num_workers=2",
            "--use_cpu=true",
            "--learning_rate=1.0e-3",
            "--record_sample_ids=true",
            *extra,
        ],
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    command += ["-m", "llava_onevision2.training", "--config", str(TOY_RECIPE), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((output / "training_report.json").read_text())


@pytest.mark.slow
def test_two_ranks_with_two_workers_stay_in_step_share_the_data_and_resume_exactly(tmp_path):
    build_toy_processor(str(tmp_path / "processor"))
    records = write_unevenly_broken_records(tmp_path / "data")
    common = ["--max_steps=4", "--save_strategy=steps", "--save_steps=2"]
    straight = run_two_ranks(tmp_path / "straight", tmp_path / "processor", records, common)

    # Lockstep: both ranks took every step although half of rank 1's records are broken and none of rank 0's.
    assert straight["steps_per_rank"] == [4, 4]
    readers = {
        path.name: SampleStats.load(str(path)) for path in (tmp_path / "straight" / "data_stats").glob("*.json")
    }
    assert len(readers) == 4
    drops = {name.split("-reader")[0]: sum(s.dropped.values()) for name, s in readers.items()}
    assert drops["rank000-of-2"] == 0 and drops["rank001-of-2"] > 0

    # Every stream position was decoded by exactly one reader, and the first pass over the good records is covered.
    decoded = [sample_id for stats in readers.values() for sample_id in stats.sample_ids]
    assert len(decoded) == len(set(decoded))
    first_pass = {int(i.split("#")[1]) for i in decoded if "@" not in i}
    assert first_pass == {index for index in range(48) if not broken(index)}

    resumed = run_two_ranks(
        tmp_path / "resumed",
        tmp_path / "processor",
        records,
        [*common, f"--resume_from_checkpoint={tmp_path / 'straight' / 'checkpoint-2'}"],
    )
    losses = lambda report: [e["loss"] for e in report["log_history"] if "loss" in e]  # noqa: E731
    assert resumed["steps_per_rank"] == [4, 4]
    assert len(losses(straight)) == 4
    assert losses(resumed)[-2:] == pytest.approx(losses(straight)[2:], rel=1e-4)


def test_hub_selectors_on_a_local_path_fail_instead_of_being_ignored(released):
    for selector in ({"subset": "ai2d_gpt4v"}, {"split": "validation"}, {"revision": "main"}):
        with pytest.raises(ValueError, match=f"{next(iter(selector))} select within a Hub dataset"):
            SourceRecords(DataSource(released["instruct"].path, **selector))


def test_every_documented_format_is_accepted_and_others_are_named():
    for name in ("auto", "llava", "messages", "texts", "caption"):
        assert DataSource.from_dict({"path": "x", "format": name}).format == name
    with pytest.raises(ValueError, match="format 'sharegpt' is not one of"):
        DataSource.from_dict({"path": "x", "format": "sharegpt"})
