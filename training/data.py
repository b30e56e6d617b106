"""Training data: record adapters, the sharded training stream and processed samples (bad ones skipped and counted).

Every source record becomes one conversation in the transformers message format:

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "/abs/a.jpg"}, {"type": "text", ...}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "..."}]}]}

Adapters (`format` of a source, or "auto": decided per record by its keys):
- `llava`: `{"image" | "images" | "video" | "videos": ..., "conversations": [...]}` with turns in either released
  style, `{"from": "human" | "gpt" | "system", "value": "..."}` or `{"role": "user" | "assistant" | "system",
  "content": ...}` (a string, or a list of `{"type": "text" | "image" | "video", ...}` items). Each `<image>` /
  `<video>` placeholder (or media item without data) takes the next listed medium in place; when their count does not
  match the media, the placeholders are dropped and all media go first in the first user turn (as the upstream
  training data path does).
- `messages`: `{"messages": [...], "images": [...], "videos": [...]}` (TRL's convention: media items without data
  take the listed files in order), or items that carry their own data.
- `texts`: FineVision's `{"images": [...], "texts": [{"user": ..., "assistant": ...}, ...]}`.
- `caption`: the mid-training corpus's `{"image": ..., "caption": "..."}`: the image (and the source's
  `caption_prompt`, if any) from the user, the caption from the assistant.
Media may be paths (relative ones resolve against the source's `media_root`), embedded images (`datasets.Image`
values as `{"bytes", "path"}`, raw bytes, PIL images) and embedded videos (bytes, `{"bytes", "path"}`), single or
listed. Other column names are mapped per source with `columns:` (see `sources.py`).

`TrainingStream` is what a stage trains on: every (rank, DataLoader worker) pair reads its own share of each source
and mixes them by weight (`mixed_records`), endlessly and deterministically, so each record is read and decoded once
per pass across all ranks and workers, and every rank can always fill its next batch (equal optimizer steps on every
rank, however unevenly bad samples fall; the stage ends at `max_steps`).

`processed_samples` turns records into model inputs with the processor and its chat template; labels cover only
assistant turns (their text and the closing `<|im_end|>`). A sample longer than `max_length` is retried with smaller
frame and pixel budgets and dropped when it still does not fit; unreadable samples are dropped. Every drop is counted
by reason in a `SampleStats` and logged; none stops the run.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from ..processing.processing_llava_onevision2 import marks_assistant_turns
from .sources import DataSource, Keyed, SourceRecords, rename_columns, unpack_webdataset_sample

logger = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"(<image>|<video>)")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
MEDIA_KINDS = ("image", "video")


@dataclass
class SampleStats:
    """Counts of used and dropped samples, by reason (printed at the end of a run). With `path` set, every change is
    written there, so counts made in DataLoader worker processes reach the end-of-run report. Recorded sample ids
    go to a file of their own beside it (`ids_path`), one JSON string per line, appended as samples are used: the
    counts file stays a few hundred bytes, where rewriting every id with every sample would cost a long audited run
    time and disk writes that grow with the square of its length."""

    used: int = 0
    retried_smaller: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    sample_ids: list | None = None  # the used samples' ids, in order, when asked for (`data.record_sample_ids`)
    path: str | None = field(default=None, repr=False)
    ids_written: int = field(default=0, repr=False)  # how many of `sample_ids` the ids file holds

    @staticmethod
    def ids_path(path: str) -> str:
        return f"{path}.ids"

    def use(self, sample_id: str, retried: bool) -> None:
        self.used += 1
        self.retried_smaller += retried
        if self.sample_ids is not None:
            self.sample_ids.append(sample_id)
        self.save()

    def drop(self, reason: str, where: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, f"{where}: {detail}" if detail else where)
        logger.warning("Skipping sample %s: %s%s", where, reason, f" ({detail})" if detail else "")
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        if self.sample_ids is not None:
            self.append_new_ids()
        values = {
            "used": self.used,
            "retried_smaller": self.retried_smaller,
            "dropped": dict(self.dropped),  # asdict would rebuild the Counter from (key, value) pairs
            "examples": self.examples,
            "records_ids": self.sample_ids is not None,
        }
        temporary = f"{self.path}.tmp"
        with open(temporary, "w") as handle:
            json.dump(values, handle)
        os.replace(temporary, self.path)  # a reader never sees half a file

    def append_new_ids(self) -> None:
        """Append the ids used since the last save; the first save of these stats (or of them cleared) starts the
        file afresh. Written before the counts, so a process killed in between leaves one id more than `used`."""
        with open(self.ids_path(self.path), "a" if self.ids_written else "w") as handle:
            handle.writelines(json.dumps(sample_id) + "\n" for sample_id in self.sample_ids[self.ids_written :])
        self.ids_written = len(self.sample_ids)

    def clear(self) -> None:
        """Back to no samples (in place: holders of this object see the reset)."""
        self.used = self.retried_smaller = 0
        self.dropped, self.examples = Counter(), {}
        if self.sample_ids is not None:
            self.sample_ids = []
        self.ids_written = 0

    def merge(self, other: SampleStats) -> None:
        self.used += other.used
        self.retried_smaller += other.retried_smaller
        self.dropped.update(other.dropped)
        for reason, example in other.examples.items():
            self.examples.setdefault(reason, example)
        if other.sample_ids is not None:
            self.sample_ids = (self.sample_ids or []) + list(other.sample_ids)

    @classmethod
    def load(cls, path: str) -> SampleStats:
        with open(path) as handle:
            values = json.load(handle)
        values["dropped"] = Counter(values["dropped"])
        sample_ids = None
        if values.pop("records_ids", False):
            with open(cls.ids_path(path)) as handle:
                sample_ids = [json.loads(line) for line in handle if line.strip()]
        return cls(**values, sample_ids=sample_ids)

    def summary(self) -> str:
        if not self.dropped:
            return f"{self.used} samples used, none dropped ({self.retried_smaller} fitted after lowering budgets)."
        reasons = ", ".join(
            f"{count} {reason} (e.g. {self.examples[reason]})" for reason, count in self.dropped.items()
        )
        return (
            f"{self.used} samples used, {sum(self.dropped.values())} dropped: {reasons}; "
            f"{self.retried_smaller} fitted after lowering budgets."
        )


# -- adapters -------------------------------------------------------------------------------------------------------


def resolve_media(path: str, media_root: str | None) -> str:
    if media_root and not os.path.isabs(path) and "://" not in path:
        return os.path.join(media_root, path)
    return path


def as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def image_input(value, media_root: str | None):
    """An image as the processor takes it: a path (resolved), or a PIL image opened from embedded bytes."""
    if isinstance(value, dict):  # a `datasets.Image` value read without decoding
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        from PIL import Image

        return Image.open(io.BytesIO(bytes(value)))  # lazy: pixels are decoded when the processor converts it
    if isinstance(value, str):
        return resolve_media(value, media_root)
    if value is None:
        raise ValueError("an image entry holds neither bytes nor a path")
    return value


def video_input(value, media_root: str | None):
    """A video as the processor takes it: a path (resolved) or the encoded bytes."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str):
        return resolve_media(value, media_root)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ValueError(f"a video entry must be a path or bytes, got {type(value).__name__}")


MEDIA_INPUT = {"image": image_input, "video": video_input}


def record_media(record: dict, kind: str, media_root: str | None) -> list:
    """The record's listed images or videos (`images` or `image`, one or a list), ready for the processor."""
    listed = record.get(f"{kind}s", record.get(kind))
    return [MEDIA_INPUT[kind](value, media_root) for value in as_list(listed)]


def turn_role(turn: dict) -> str:
    speaker = turn.get("from", turn.get("role"))
    role = ROLES.get(speaker)
    if role is None:
        raise ValueError(f"unknown speaker {speaker!r}")
    return role


def turn_pieces(turn: dict) -> list:
    """A turn's content as text strings and media kinds ("image" / "video" for a placeholder or an item without
    data) or media items that carry their own data, in order."""
    content = turn.get("value", turn.get("content"))
    if content is None:
        raise ValueError("a turn has neither 'value' nor 'content'")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    pieces = []
    for item in content:
        kind = item.get("type")
        if kind == "text":
            pieces += [
                piece[1:-1] if PLACEHOLDER.fullmatch(piece) else piece for piece in PLACEHOLDER.split(item["text"])
            ]
        elif kind in MEDIA_KINDS:
            data = next((item[k] for k in (kind, "path", "url") if item.get(k) is not None), None)
            pieces.append(kind if data is None else {"type": kind, kind: data})
        else:
            raise ValueError(f"unknown content item type {kind!r}")
    return pieces


def llava_to_messages(record: dict, media_root: str | None = None) -> dict:
    """A LLaVA-style record -> `{"messages": [...]}` with media items in place of the placeholders."""
    media = {kind: record_media(record, kind, media_root) for kind in MEDIA_KINDS}
    turns = record.get("conversations")
    if not turns:
        raise ValueError("record has no 'conversations'")
    roles_and_pieces = [(turn_role(turn), turn_pieces(turn)) for turn in turns]
    slots = Counter(piece for _, pieces in roles_and_pieces for piece in pieces if piece in MEDIA_KINDS)
    placed = all(slots[kind] == len(media[kind]) for kind in MEDIA_KINDS)
    pools = {kind: iter(media[kind]) for kind in MEDIA_KINDS}
    messages = []
    for role, pieces in roles_and_pieces:
        content = []
        for piece in pieces:
            if isinstance(piece, dict):
                kind = piece["type"]
                content.append({"type": kind, kind: MEDIA_INPUT[kind](piece[kind], media_root)})
            elif piece in MEDIA_KINDS:
                if placed:
                    content.append({"type": piece, piece: next(pools[piece])})
            else:
                if not placed:  # the placeholders are dropped; so is the line break that followed them
                    piece = piece.strip("\n")
                if piece:
                    content.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": content})
    if not placed:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise ValueError("media given but no user turn to attach them to")
        leading = [{"type": kind, kind: value} for kind in MEDIA_KINDS for value in media[kind]]
        first_user["content"] = leading + first_user["content"]
    return {"messages": messages}


def messages_record(record: dict, media_root: str | None = None) -> dict:
    """A `messages` record: media items that carry no data take the record's `images` / `videos` in order. When no
    message places any medium, all listed media go first in the first user turn (how the released video-caption
    records, plain-text messages plus a list of clips, are meant); a count that does not match is an error."""
    media = {kind: record_media(record, kind, media_root) for kind in MEDIA_KINDS}
    pools = {kind: iter(media[kind]) for kind in MEDIA_KINDS}
    messages, slots = [], Counter()
    for message in record["messages"]:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        items = []
        for item in content:
            item = dict(item)
            kind = item.get("type")
            if kind in pools:
                source = next((item[k] for k in (kind, "path", "url") if item.get(k) is not None), None)
                if source is None:
                    slots[kind] += 1
                    source = next(pools[kind], None)
                    if source is None:
                        raise ValueError(f"more {kind} items than {kind}s listed in the record")
                else:
                    source = MEDIA_INPUT[kind](source, media_root)
                item = {"type": kind, kind: source}
            items.append(item)
        messages.append({"role": ROLES.get(message["role"], message["role"]), "content": items})
    if not slots:
        leading = [{"type": kind, kind: value} for kind in MEDIA_KINDS for value in media[kind]]
        if leading:
            first_user = next((m for m in messages if m["role"] == "user"), None)
            if first_user is None:
                raise ValueError("media given but no user turn to attach them to")
            first_user["content"] = leading + first_user["content"]
    else:
        for kind in MEDIA_KINDS:
            if slots[kind] != len(media[kind]):
                raise ValueError(f"the messages place {slots[kind]} {kind}s but the record lists {len(media[kind])}")
    return {"messages": messages}


def texts_to_conversations(record: dict) -> dict:
    """FineVision's `texts` (`[{"user": ..., "assistant": ...}, ...]`) -> LLaVA `conversations`."""
    turns = []
    for exchange in record["texts"]:
        turns.append({"from": "human", "value": exchange["user"]})
        turns.append({"from": "gpt", "value": exchange["assistant"]})
    return {**record, "conversations": turns}


def caption_to_conversations(record: dict, prompt: str) -> dict:
    """A caption record (`{"image": ..., "caption": ...}`, the mid-training corpus) -> one exchange: the media and
    the source's `caption_prompt` (empty: the media alone) from the user, the caption from the assistant."""
    return {
        **record,
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": record["caption"]}],
    }


def record_format(record: dict, source_format: str) -> str:
    """The adapter for one record: the source's `format`, or for "auto" the first of conversations, messages, texts
    and caption that the record has."""
    if source_format != "auto":
        return source_format
    for key, name in (
        ("conversations", "llava"),
        ("messages", "messages"),
        ("texts", "texts"),
        ("caption", "caption"),
    ):
        if key in record:
            return name
    raise ValueError(
        f"record has none of conversations, messages, texts or caption (keys: {sorted(record)}); map its columns "
        "with the source's `columns:` setting"
    )


def to_messages(record: dict, source_format: str, media_root: str | None, caption_prompt: str | None = None) -> dict:
    adapter = record_format(record, source_format)
    if caption_prompt is not None and adapter != "caption":
        raise ValueError(f"the source sets caption_prompt, but this is a {adapter} record, not a caption record")
    if adapter == "llava":
        return llava_to_messages(record, media_root)
    if adapter == "messages":
        return messages_record(record, media_root)
    if adapter == "texts":
        return llava_to_messages(texts_to_conversations(record), media_root)
    return llava_to_messages(caption_to_conversations(record, caption_prompt or ""), media_root)


# -- the training stream --------------------------------------------------------------------------------------------


class SourceRecord(NamedTuple):
    """One raw record of a stream: its source, its key there ("<index>" or "<unit>:<position>", see `ReaderShare`),
    which pass over the source, the record, and where it was read (file, row group) for messages."""

    source: str
    key: str
    epoch: int
    record: dict | str
    where: str = ""

    @property
    def sample_id(self) -> str:
        return f"{self.source}#{self.key}" + (f"@{self.epoch}" if self.epoch else "")


def mixed_records(sources: list[tuple[DataSource, Iterable[Keyed]]], seed: int | str = 0, endless: bool = False):
    """One stream drawing from each source (its `Keyed` records, e.g. a reader's share) in proportion to its weight;
    a source that runs out starts its next pass. Ends once every source has been read in full (or never, when
    `endless`). The same seed gives the same stream."""
    rng = random.Random(seed)
    weights = [source.weight for source, _ in sources]
    iterators = [iter(records) for _, records in sources]
    counts, epochs, finished = [0] * len(sources), [0] * len(sources), set()
    while True:
        pick = rng.choices(range(len(sources)), weights)[0] if len(sources) > 1 else 0
        source, records = sources[pick]
        try:
            keyed = next(iterators[pick])
        except StopIteration:
            if counts[pick] == 0:
                raise ValueError(f"Data source {source.label!r} ({source.path}) holds no records.") from None
            finished.add(pick)
            if not endless and len(finished) == len(sources):
                return
            epochs[pick], counts[pick], iterators[pick] = epochs[pick] + 1, 0, iter(records)
            keyed = next(iterators[pick])
        counts[pick] += 1
        yield SourceRecord(source.label, keyed.key, epochs[pick], keyed.record, keyed.where)


def distributed_position() -> tuple[int, int]:
    """(rank, world size) of this process: from torch.distributed when it is up, else from the launcher's
    environment (torchrun and accelerate set RANK and WORLD_SIZE)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# -- processing -----------------------------------------------------------------------------------------------------


@dataclass
class Budget:
    """Frame and pixel limits tried in order for one sample (first the stage's, then smaller ones)."""

    max_pixels: int
    max_frames: int
    video_max_pixels: int


def budget_ladder(max_pixels: int, max_frames: int, video_max_pixels: int, steps: int = 3) -> list[Budget]:
    """The stage's budget, then up to `steps` halvings of frames and pixels (distinct budgets only)."""
    floor = 28 * 28 * 4
    ladder = [Budget(max_pixels, max_frames, video_max_pixels)]
    for _ in range(steps):
        last = ladder[-1]
        smaller = Budget(
            max(last.max_pixels // 2, floor), max(2, last.max_frames // 2), max(last.video_max_pixels // 2, floor)
        )
        if smaller == last:
            break
        ladder.append(smaller)
    return ladder


def assistant_mask_template(processor) -> str | None:
    """The template that marks assistant turns: a converted release keeps the released template as "default" and
    this project's, which has `{% generation %}` markers, as "training"."""
    templates = processor.chat_template
    if isinstance(templates, dict) and "training" in templates:
        return "training"
    template = templates.get("default") if isinstance(templates, dict) else templates
    if not marks_assistant_turns(template):
        raise ValueError(
            "The processor's chat template has no {% generation %} markers, so assistant tokens cannot be labelled; "
            "add a template named 'training' (hub_upload convert does) or use this project's CHAT_TEMPLATE."
        )
    return None


def video_budget(processor, budget: Budget, video_backend: str) -> dict:
    """Video settings of one budget rung, limited to what the sampler reads: per-frame pixel bounds and a frame cap
    for the frames sampler; the codec sampler reads neither (a call-level max_pixels would set its canvas size, the
    released convention, which comes from the processor's codec block instead), so its rungs differ in images only."""
    sampler = processor.video_processor.sampler_class(video_backend)
    settings = {"video_backend": video_backend}
    if "max_frames" not in sampler.unread_settings:
        settings["max_frames"] = budget.max_frames
    if sampler.per_frame_pixel_bounds:
        settings["max_pixels"] = budget.video_max_pixels
        settings["min_pixels"] = min(processor.video_processor.min_pixels, budget.video_max_pixels)
    return settings


def videos_kwargs_for(processor, videos_kwargs: dict, video_backend: str | None) -> dict:
    """The stage's video settings with a source's own back-end, if it names one. Settings that back-end does not read
    (a frame rate or layout with the codec sampler) apply to the stage's other sources and are left out here."""
    if video_backend is None:
        return dict(videos_kwargs)
    unread = processor.video_processor.sampler_class(video_backend).unread_settings
    return {key: value for key, value in videos_kwargs.items() if key not in unread} | {"video_backend": video_backend}


def encode_conversation(processor, messages: list[dict], budget: Budget, processor_kwargs: dict | None = None) -> dict:
    """Tokenise one conversation with its media; labels only on assistant tokens (incl. the closing <|im_end|>).
    `processor_kwargs` ({"images_kwargs": ..., "videos_kwargs": ...}) go to every call, under the budget's limits."""
    processor_kwargs = processor_kwargs or {}
    videos_kwargs = dict(processor_kwargs.get("videos_kwargs") or {})
    video_backend = videos_kwargs.get("video_backend", processor.video_processor.video_backend)
    outputs = processor.apply_chat_template(
        messages,
        chat_template=assistant_mask_template(processor),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors="np",
        processor_kwargs={
            # A smaller rung of the budget ladder lowers the minimum with the maximum.
            "images_kwargs": {
                **(processor_kwargs.get("images_kwargs") or {}),
                "max_pixels": budget.max_pixels,
                "min_pixels": min(processor.image_processor.min_pixels, budget.max_pixels),
            },
            "videos_kwargs": {**videos_kwargs, **video_budget(processor, budget, video_backend)},
        },
    )
    sample = {key: np.asarray(value) for key, value in outputs.items() if key != "assistant_masks"}
    sample["input_ids"] = sample["input_ids"][0]
    sample.pop("attention_mask", None)
    mask = np.asarray(outputs["assistant_masks"])[0].astype(bool)
    sample["labels"] = np.where(mask, sample["input_ids"], -100)
    return sample


SYSTEMATIC_FAILURES = 50


def check_not_systematic(stats: SampleStats) -> None:
    """Bad samples are skipped, but when not one of the first samples works the setup is wrong, not the data."""
    dropped = sum(stats.dropped.values())
    if stats.used == 0 and dropped >= SYSTEMATIC_FAILURES:
        raise RuntimeError(
            f"The first {dropped} samples all failed, which points at the setup (paths, media_root, processor, "
            f"max_length) rather than at bad samples: {stats.summary()}"
        )


def record_messages(item: SourceRecord, source: DataSource) -> list[dict]:
    """The conversation of one raw record (JSON text or a row), after the source's column mapping."""
    record = json.loads(item.record) if isinstance(item.record, str) else item.record
    record = rename_columns(unpack_webdataset_sample(record), source.columns, item.sample_id)
    return to_messages(record, source.format, source.media_root, source.caption_prompt)["messages"]


def processed_samples(
    records: Iterable[SourceRecord],
    processor,
    max_length: int,
    budgets: list[Budget],
    processor_kwargs: dict | None = None,
    stats: SampleStats | None = None,
    sources: dict[str, DataSource] | None = None,
) -> Iterator[dict]:
    """Model inputs for each usable record, in order; unusable ones are counted in `stats` and skipped.
    `processor_kwargs` are the stage's processor settings; `sources` (by label) gives each record's format, columns,
    media root and, where the source sets one, its own video back-end. Each sample carries its `sample_id`
    ("<source>#<index in source>")."""
    stats = stats if stats is not None else SampleStats()
    sources = sources or {}
    processor_kwargs = processor_kwargs or {}
    for item in records:
        where = f"record {item.key} of {item.source}" + (f" ({item.where})" if item.where else "")
        source = sources.get(item.source) or DataSource(path=item.source)
        try:
            messages = record_messages(item, source)
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # JSONDecodeError is a ValueError
            stats.drop("malformed record", where, f"{type(error).__name__}: {error}")
            check_not_systematic(stats)
            continue
        except OSError as error:  # embedded bytes that are no image
            stats.drop(f"unreadable sample ({type(error).__name__})", where, str(error)[:200])
            check_not_systematic(stats)
            continue
        sample, retried = None, False
        videos_kwargs = videos_kwargs_for(processor, processor_kwargs.get("videos_kwargs") or {}, source.video_backend)
        call_kwargs = {**processor_kwargs, "videos_kwargs": videos_kwargs}
        for attempt, budget in enumerate(budgets):
            try:
                encoded = encode_conversation(processor, messages, budget, call_kwargs)
            except (OSError, ValueError) as error:  # unreadable media, bad files, placeholder mismatches
                stats.drop(f"unreadable sample ({type(error).__name__})", where, str(error)[:200])
                break
            if len(encoded["input_ids"]) <= max_length:
                sample, retried = encoded, attempt > 0
                break
        else:
            stats.drop(f"longer than max_length={max_length} even at the smallest frame/pixel budget", where)
        if sample is None:
            check_not_systematic(stats)
            continue
        if not (sample["labels"] != -100).any():
            stats.drop("no assistant tokens to learn from", where)
            check_not_systematic(stats)
            continue
        sample["sample_id"] = item.sample_id
        stats.use(item.sample_id, retried)
        yield sample


STREAM_SHARDS = 2**13  # shard ids the stream is exposed with: more than any rank or worker count


def reader_position() -> tuple[int, int]:
    """(index, count) of this reader among all (rank, DataLoader worker) pairs."""
    rank, world = distributed_position()
    worker = torch.utils.data.get_worker_info()
    worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
    return rank * workers + worker_id, world * workers


class TrainingStream:
    """The samples a stage trains on: endless, deterministic, and dealt out to ranks and workers without overlap.

    The readers are the (rank, DataLoader worker) pairs. Each reader takes its share of every source
    (`SourceRecords.share`: whole units - parquet row groups, tar shards, Hub shards - dealt round-robin, or single
    records for a source with few units) and mixes its shares by weight with its own seeded draw, so each record is
    read and decoded by one reader per pass. `as_dataset()` exposes the stream as a `datasets.IterableDataset` with
    `STREAM_SHARDS` shard ids, which is what lets accelerate give each rank its own copy (`IterableDataset.shard`, as
    `split_dataset_by_node` does) and `datasets` start every DataLoader worker; the ids carry no records themselves.
    The stream never ends, so every rank fills every batch and all ranks take the same number of optimizer steps
    however unevenly bad samples fall; the Trainer's `max_steps` ends the stage. A resumed run (same ranks and
    workers) replays the same streams, which makes its data position exact.

    With `stats_dir`, each reader writes its `SampleStats` to `<stats_dir>/<reader>.json` (worker processes cannot
    update the main process's counts); `collect_stats` adds them up."""

    def __init__(
        self,
        sources: list[DataSource],
        processor,
        max_length: int,
        budgets: list[Budget],
        processor_kwargs: dict | None = None,
        seed: int = 0,
        stats_dir: str | None = None,
        record_sample_ids: bool = False,
    ):
        self.sources = sources
        self.records = [(source, SourceRecords(source)) for source in sources]
        self.processor = processor
        self.max_length = max_length
        self.budgets = budgets
        self.processor_kwargs = dict(processor_kwargs or {})
        self.seed = seed
        self.stats_dir = stats_dir
        self.record_sample_ids = record_sample_ids
        self.stats = self.new_stats()  # the counts of in-process reading (dataloader_num_workers=0)

    def new_stats(self) -> SampleStats:
        return SampleStats(sample_ids=[] if self.record_sample_ids else None)

    def reset_stats(self) -> None:
        """Forget what was read so far in this process (e.g. the sample a trainer looks at before training)."""
        self.stats.clear()
        if self.stats_dir is None:
            return
        rank, _ = distributed_position()
        for path in glob.glob(os.path.join(self.stats_dir, f"rank{rank:03d}-*.json*")):  # counts, ids, temporaries
            os.remove(path)

    def as_dataset(self):
        import datasets

        return datasets.IterableDataset.from_generator(self.samples, gen_kwargs={"shards": list(range(STREAM_SHARDS))})

    def samples(self, shards: list[int]) -> Iterator[dict]:
        """The processed samples of this reader's records, endlessly (`shards`: the ids the libraries handed this
        reader; see the class doc)."""
        reader, readers = reader_position()
        in_worker = torch.utils.data.get_worker_info() is not None
        stats = self.new_stats() if in_worker else self.stats
        if self.stats_dir is not None:
            os.makedirs(self.stats_dir, exist_ok=True)
            rank, world = distributed_position()
            stats.path = os.path.join(
                self.stats_dir, f"rank{rank:03d}-of-{world}-reader{reader:04d}-of-{readers}.json"
            )
        shares = [(source, records.share(reader, readers)) for source, records in self.records]
        yield from processed_samples(
            mixed_records(shares, f"{self.seed}/{reader}", endless=True),
            self.processor,
            self.max_length,
            self.budgets,
            self.processor_kwargs,
            stats,
            {source.label: source for source in self.sources},
        )


def collect_stats(stats_dir: str, rank: int = 0, world_size: int = 1) -> SampleStats:
    """The `SampleStats` written by one rank's readers, added up (only files of this run's number of ranks)."""
    total = SampleStats(sample_ids=None)
    for path in sorted(glob.glob(os.path.join(stats_dir, f"rank{rank:03d}-of-{world_size}-*.json"))):
        total.merge(SampleStats.load(path))
    return total


__all__ = [
    "Budget",
    "DataSource",
    "SampleStats",
    "SourceRecord",
    "TrainingStream",
    "budget_ladder",
    "collect_stats",
    "encode_conversation",
    "llava_to_messages",
    "messages_record",
    "mixed_records",
    "processed_samples",
    "texts_to_conversations",
    "to_messages",
]
