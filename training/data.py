"""Training data: source adapters, weighted mixtures and processed samples with bad samples skipped and counted.

Every source record becomes one conversation in the transformers message format:

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "/abs/a.jpg"}, {"type": "text", ...}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "..."}]}]}

Adapters:
- `llava`: `{"image" | "images" | "video" | "videos": ..., "conversations": [{"from": "human" | "gpt" | "system",
  "value": "... <image> ..."}]}`. Each `<image>` / `<video>` placeholder becomes a media item in place; when the
  placeholder count does not match the media, the placeholders are dropped and all media go first in the first
  user turn (as the upstream training data path does).
- `messages`: `{"messages": [...], "images": [...], "videos": [...]}` (TRL's convention: media items without data
  take the listed files in order), or items that carry their own path.
Relative media paths resolve against the source's `media_root`.

`processed_samples` turns records into model inputs with the processor and its chat template; labels cover only
assistant turns (their text and the closing `<|im_end|>`). A sample longer than `max_length` is retried with smaller
frame and pixel budgets and dropped when it still does not fit; unreadable samples are dropped. Every drop is counted
by reason in a `SampleStats` and logged; none stops the run.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import datasets
import numpy as np

from ..processing.processing_llava_onevision2 import marks_assistant_turns

logger = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"(<image>|<video>)")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class DataSource:
    """One entry of a stage's data mixture."""

    path: str
    format: str = "auto"  # "llava", "messages" or "auto" (decided per record)
    media_root: str | None = None
    weight: float = 1.0
    streaming: bool = False
    name: str | None = None  # needed when one file is listed twice (e.g. once per video_backend)
    video_backend: str | None = None  # None: the stage's data.video_backend

    @classmethod
    def from_dict(cls, values: dict) -> DataSource:
        unknown = set(values) - {"path", "format", "media_root", "weight", "streaming", "name", "video_backend"}
        if unknown:
            raise ValueError(f"Unknown keys in data source {values.get('path')!r}: {sorted(unknown)}.")
        return cls(**values)


@dataclass
class SampleStats:
    """Counts of used and dropped samples, by reason (printed at the end of a run)."""

    used: int = 0
    retried_smaller: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def drop(self, reason: str, where: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, f"{where}: {detail}" if detail else where)
        logger.warning("Skipping sample %s: %s%s", where, reason, f" ({detail})" if detail else "")

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


def llava_to_messages(record: dict, media_root: str | None = None) -> dict:
    """A LLaVA-style record -> `{"messages": [...]}` with media items in place of the placeholders."""
    images = [resolve_media(p, media_root) for p in as_list(record.get("images", record.get("image")))]
    videos = [resolve_media(p, media_root) for p in as_list(record.get("videos", record.get("video")))]
    turns = record.get("conversations")
    if not turns:
        raise ValueError("record has no 'conversations'")
    texts = [turn["value"] for turn in turns]
    counts = Counter(token for text in texts for token in PLACEHOLDER.findall(text))
    placed = counts["<image>"] == len(images) and counts["<video>"] == len(videos)
    media = {"<image>": iter(images), "<video>": iter(videos)}
    messages = []
    for turn, text in zip(turns, texts):
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise ValueError(f"unknown speaker {turn.get('from')!r}")
        content = []
        for piece in PLACEHOLDER.split(text):
            if piece in media:
                if placed:
                    kind = piece[1:-1]
                    content.append({"type": kind, kind: next(media[piece])})
                continue
            if not placed:  # the placeholders are dropped; so is the line break that followed them
                piece = piece.strip("\n")
            if piece:
                content.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": content})
    if not placed:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise ValueError("media given but no user turn to attach them to")
        leading = [{"type": "image", "image": p} for p in images] + [{"type": "video", "video": p} for p in videos]
        first_user["content"] = leading + first_user["content"]
    return {"messages": messages}


def messages_record(record: dict, media_root: str | None = None) -> dict:
    """A `messages` record: fill media items that carry no data from the record's `images` / `videos` lists."""
    pools = {
        "image": iter([resolve_media(p, media_root) for p in as_list(record.get("images"))]),
        "video": iter([resolve_media(p, media_root) for p in as_list(record.get("videos"))]),
    }
    messages = []
    for message in record["messages"]:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        items = []
        for item in content:
            item = dict(item)
            kind = item.get("type")
            if kind in pools:
                source = next((item[k] for k in (kind, "path", "url") if item.get(k)), None)
                if source is None:
                    source = next(pools[kind], None)
                    if source is None:
                        raise ValueError(f"more {kind} items than {kind}s listed in the record")
                elif isinstance(source, str):
                    source = resolve_media(source, media_root)
                item = {"type": kind, kind: source}
            items.append(item)
        messages.append({"role": message["role"], "content": items})
    return {"messages": messages}


def to_messages(record: dict, source_format: str, media_root: str | None) -> dict:
    if source_format == "llava" or (source_format == "auto" and "conversations" in record):
        return llava_to_messages(record, media_root)
    if source_format in ("messages", "auto") and "messages" in record:
        return messages_record(record, media_root)
    raise ValueError(f"record matches neither the llava nor the messages format (keys: {sorted(record)})")


# -- sources and mixtures -------------------------------------------------------------------------------------------


def read_records(files: list[str], name: str) -> Iterator[dict]:
    """`{"record": <raw JSON text>, "source": name}` per record of .json (a list or one object) and .jsonl files.
    Records stay raw text until processing, so a malformed one is counted there instead of failing the load."""
    for file in files:
        with open(file) as handle:
            if file.endswith(".jsonl"):
                for line in handle:
                    if line.strip():
                        yield {"record": line.strip(), "source": name}
            else:
                loaded = json.load(handle)
                for record in loaded if isinstance(loaded, list) else [loaded]:
                    yield {"record": json.dumps(record), "source": name}


def load_source(source: DataSource) -> datasets.Dataset | datasets.IterableDataset:
    """Raw records of one source: in memory, or streamed through `datasets` when `streaming` is set."""
    path = source.path
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".json", ".jsonl")))
    elif os.path.exists(path):
        files = [path]
    else:
        raise FileNotFoundError(f"Data source not found: {path}")
    if not files:
        raise ValueError(f"Data source {path} holds no .json / .jsonl files.")
    name = source_name(source)
    if source.streaming:
        return datasets.IterableDataset.from_generator(read_records, gen_kwargs={"files": files, "name": name})
    rows = list(read_records(files, name))
    return datasets.Dataset.from_dict({"record": [r["record"] for r in rows], "source": [name] * len(rows)})


def source_name(source: DataSource) -> str:
    return source.name or os.path.basename(source.path.rstrip("/"))


def mix_sources(sources: list[DataSource], seed: int = 0):
    """One stream drawing from each source in proportion to its weight (until every source is used up)."""
    loaded = [load_source(source) for source in sources]
    if len(loaded) == 1:
        return loaded[0]
    if any(isinstance(d, datasets.IterableDataset) for d in loaded):
        loaded = [d.to_iterable_dataset() if isinstance(d, datasets.Dataset) else d for d in loaded]
    total = sum(source.weight for source in sources)
    return datasets.interleave_datasets(
        loaded, probabilities=[s.weight / total for s in sources], seed=seed, stopping_strategy="all_exhausted"
    )


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
    """Video settings of one budget rung. The per-frame pixel bounds apply to sampled frames only: with the codec
    backend a call-level max_pixels would set the canvas size (the released convention), which comes from the
    processor's codec block instead."""
    settings = {"max_frames": budget.max_frames, "video_backend": video_backend}
    if video_backend != "codec":
        settings["max_pixels"] = budget.video_max_pixels
        settings["min_pixels"] = min(processor.video_processor.min_pixels, budget.video_max_pixels)
    return settings


def encode_conversation(processor, messages: list[dict], budget: Budget, video_backend: str) -> dict:
    """Tokenise one conversation with its media; labels only on assistant tokens (incl. the closing <|im_end|>)."""
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
                "max_pixels": budget.max_pixels,
                "min_pixels": min(processor.image_processor.min_pixels, budget.max_pixels),
            },
            "videos_kwargs": video_budget(processor, budget, video_backend),
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


def processed_samples(
    records,
    processor,
    max_length: int,
    budgets: list[Budget],
    video_backend: str = "frames",
    stats: SampleStats | None = None,
    sources: dict[str, DataSource] | None = None,
) -> Iterator[dict]:
    """Model inputs for each usable record, in order; unusable ones are counted in `stats` and skipped. `sources`
    (by name) gives each record's format, media root and, where the source sets one, its own video back-end."""
    stats = stats if stats is not None else SampleStats()
    sources = sources or {}
    for index, row in enumerate(records):
        where = f"#{index} of {row.get('source', 'data')}"
        try:
            record = json.loads(row["record"]) if "record" in row else row
            source = sources.get(row.get("source")) or DataSource(path="")
            messages = to_messages(record, source.format, source.media_root)["messages"]
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
            stats.drop("malformed record", where, f"{type(error).__name__}: {error}")
            check_not_systematic(stats)
            continue
        sample = None
        for attempt, budget in enumerate(budgets):
            try:
                encoded = encode_conversation(processor, messages, budget, source.video_backend or video_backend)
            except (OSError, ValueError) as error:  # unreadable media, bad files, placeholder mismatches
                stats.drop(f"unreadable sample ({type(error).__name__})", where, str(error)[:200])
                break
            if len(encoded["input_ids"]) <= max_length:
                sample = encoded
                stats.retried_smaller += attempt > 0
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
        stats.used += 1
        yield sample


__all__ = [
    "Budget",
    "DataSource",
    "SampleStats",
    "budget_ladder",
    "encode_conversation",
    "llava_to_messages",
    "messages_record",
    "mix_sources",
    "processed_samples",
    "to_messages",
]
