"""Where training records come from: local files in every format the released datasets use, and Hub datasets.

A data source is one entry of a stage's `sources` list. Its `path` is one of:

- a `.json` / `.jsonl` file, or a folder of them (read here, record by record, so a malformed line is counted as a bad
  sample instead of failing the load);
- a `.parquet` / `.arrow` file or a `.tar` WebDataset shard, or a folder holding them at any depth (the released
  instruct data keeps one folder of `train-0000k-of-0000n.parquet` shards per subset), read file by file with
  pyarrow / tarfile, so subsets whose schemas differ can share a folder;
- a Hub dataset id (`owner/name`) with optional `subset` (config name), `split` and `revision`, loaded with
  `datasets.load_dataset` (streamed when `streaming` is set, downloaded otherwise).

Every source yields plain dicts, read in units (parquet row groups, Arrow files, tar shards, Hub shards, chunks of
in-memory JSON) that are dealt whole to the training stream's readers (`ReaderShare`). Media stay encoded while
records are read (images as `{"bytes", "path"}`, videos as bytes); they are decoded when the sample is processed. A
per-source `columns` mapping renames a source's columns to the names the adapters read (`conversations`,
`messages`, `texts`, `caption`, `image`, `images`, `video`, `videos`, `id`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

JSON_SUFFIXES = (".json", ".jsonl")
TABLE_READERS = {".parquet": "parquet", ".arrow": "arrow", ".tar": "webdataset"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CANONICAL_COLUMNS = ("conversations", "messages", "texts", "caption", "image", "images", "video", "videos", "id")
FORMATS = ("auto", "llava", "messages", "texts", "caption")
DATASETS_METADATA = ("dataset_info.json", "state.json", "dataset_dict.json")  # `save_to_disk` bookkeeping, not records
READ_BATCH = 64  # rows per Arrow batch read


@dataclass
class DataSource:
    """One entry of a stage's data mixture."""

    path: str
    format: str = "auto"  # "llava", "messages", "texts", "caption" or "auto" (decided per record)
    media_root: str | None = None
    weight: float = 1.0
    streaming: bool | None = None  # None: JSON in memory, table files and tar shards from disk, Hub downloaded
    name: str | None = None  # needed when one path is listed twice (e.g. once per video_backend)
    video_backend: str | None = None  # None: the stage's processor_kwargs.videos_kwargs.video_backend
    subset: str | None = None  # Hub dataset config name
    split: str = "train"
    revision: str | None = None
    columns: dict = field(default_factory=dict)  # adapter name -> this source's column name
    caption_prompt: str | None = None  # user text of caption records (None: the media alone)

    @classmethod
    def from_dict(cls, values: dict) -> DataSource:
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"Unknown keys in data source {values.get('path')!r}: {sorted(unknown)} (known: {sorted(known)})."
            )
        source = cls(**values)
        source.check()
        return source

    def check(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"Data source {self.path!r}: format {self.format!r} is not one of {list(FORMATS)}.")
        if self.weight <= 0:
            raise ValueError(f"Data source {self.path!r}: weight must be positive, got {self.weight}.")
        bad = {key: value for key, value in self.columns.items() if key not in CANONICAL_COLUMNS}
        if bad:
            raise ValueError(
                f"Data source {self.path!r}: columns maps {sorted(bad)}, which the adapters do not read; map any of "
                f"{list(CANONICAL_COLUMNS)} to this source's column names."
            )

    @property
    def label(self) -> str:
        """The source's name in logs, drop reports and sample ids."""
        return self.name or os.path.basename(self.path.rstrip("/"))


# -- files ----------------------------------------------------------------------------------------------------------


def source_files(path: str) -> list[str]:
    """The readable files of a path: the file itself, or every supported file below a folder, in sorted order."""
    if os.path.isfile(path):
        return [path]
    files = []
    for folder, subfolders, names in os.walk(path):
        subfolders.sort()
        files += [
            os.path.join(folder, name)
            for name in sorted(names)
            if name.endswith(supported_suffixes()) and name not in DATASETS_METADATA
        ]
    return files


def supported_suffixes() -> tuple[str, ...]:
    return JSON_SUFFIXES + tuple(TABLE_READERS)


def file_reader(files: list[str], path: str) -> str:
    """The reader of a source's files ("json", "parquet", "arrow" or "webdataset"); one kind per source."""
    kinds = {"json" if f.endswith(JSON_SUFFIXES) else TABLE_READERS.get(os.path.splitext(f)[1]) for f in files}
    if None in kinds:
        unsupported = sorted({os.path.splitext(f)[1] or f for f in files if not f.endswith(supported_suffixes())})
        raise ValueError(f"Data source {path}: cannot read {unsupported}; supported: {list(supported_suffixes())}.")
    if len(kinds) > 1:
        raise ValueError(
            f"Data source {path} mixes {sorted(kinds)} files; list each kind as its own source (one `path` each)."
        )
    return kinds.pop()


def is_hub_id(path: str) -> bool:
    return not os.path.exists(path) and bool(HUB_ID.match(path))


# -- records --------------------------------------------------------------------------------------------------------


@dataclass
class Unit:
    """A run of records read together: a parquet row group, an Arrow file, a tar shard, a Hub dataset shard, or a
    chunk of JSON records. Readers are dealt whole units, so a reader never reads another reader's units."""

    number: int
    where: str  # file (and row group) for messages
    read: Callable[[], Iterator[dict | str]]


class Keyed(NamedTuple):
    """A record with its key in the source ("<index>" or "<unit>:<position>") and its place for messages."""

    key: str
    where: str
    record: dict | str


class SourceRecords:
    """The records of one source as units, re-readable from the start (each pass of a training stream reads them
    again). Iterating gives every record in order; `share(reader, readers)` gives one reader's share.

    `streaming` chooses between keeping the records in memory (read once) and reading them again on every pass:
    by default JSON files are kept in memory, table files and tar shards are read from disk, and Hub datasets are
    downloaded (`streaming: true` streams them instead)."""

    def __init__(self, source: DataSource):
        self.source = source
        path = source.path
        if is_hub_id(path):
            self.reader, self.files = "hub", []
        elif not os.path.exists(path):
            raise FileNotFoundError(
                f"Data source not found: {path} (neither a file, a folder nor a Hub dataset id like owner/name)."
            )
        else:
            hub_only = {"subset": source.subset, "revision": source.revision}
            if source.split != "train":
                hub_only["split"] = source.split
            given = sorted(key for key, value in hub_only.items() if value is not None)
            if given:
                raise ValueError(
                    f"Data source {path}: {', '.join(given)} select within a Hub dataset, but this path is local; "
                    "point `path` at the subset's folder or file instead."
                )
            self.files = source_files(path)
            if not self.files:
                raise ValueError(f"Data source {path} holds no {' / '.join(supported_suffixes())} files.")
            self.reader = file_reader(self.files, path)
        self.units = source_units(self)
        keep = source.streaming is False or (source.streaming is None and self.reader == "json")
        if keep and self.reader != "hub":
            records = [record for unit in self.units for record in unit.read()]
            self.units = [
                Unit(n, f"{path} (records {start}-{start + len(chunk) - 1})", lambda chunk=chunk: iter(chunk))
                for n, (start, chunk) in enumerate(chunks(records, MEMORY_UNIT))
            ]

    def __iter__(self) -> Iterator[dict | str]:
        return (record for unit in self.units for record in unit.read())

    def share(self, reader: int = 0, readers: int = 1) -> ReaderShare:
        return ReaderShare(self, reader, readers)


MEMORY_UNIT = 256  # records per unit of an in-memory source
UNITS_PER_READER = 8  # fewer units than this per reader: records are dealt one by one instead


class ReaderShare:
    """One reader's records of a source, as `Keyed` records, re-readable. With at least `UNITS_PER_READER` units per
    reader, the reader gets every `readers`-th unit and reads nothing else; a smaller source is read in full by every
    reader, which keeps every `readers`-th record (so even a tiny source is shared evenly)."""

    def __init__(self, records: SourceRecords, reader: int, readers: int):
        self.records, self.reader, self.readers = records, reader, readers
        self.by_unit = len(records.units) >= UNITS_PER_READER * readers

    def __iter__(self) -> Iterator[Keyed]:
        if self.by_unit:
            for unit in self.records.units[self.reader :: self.readers]:
                for position, record in enumerate(unit.read()):
                    yield Keyed(f"{unit.number}:{position}", unit.where, record)
            return
        index = 0
        for unit in self.records.units:
            for record in unit.read():
                if index % self.readers == self.reader:
                    yield Keyed(str(index), unit.where, record)
                index += 1
        if 0 < index <= self.reader:  # fewer records than readers: this reader repeats one of them
            wanted = self.reader % index
            keyed = (Keyed(str(i), u.where, r) for i, (u, r) in enumerate(self.all_records()))
            yield next(k for k in keyed if k.key == str(wanted))

    def all_records(self) -> Iterator[tuple[Unit, dict | str]]:
        return ((unit, record) for unit in self.records.units for record in unit.read())


def chunks(items: list, size: int) -> Iterator[tuple[int, list]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def source_units(records: SourceRecords) -> list[Unit]:
    """The units of a source (see `Unit`)."""
    source = records.source
    if records.reader == "hub":
        dataset = load_hub_dataset(source)
        count = dataset.num_shards
        return [
            Unit(i, f"{source.path} shard {i} of {count}", lambda i=i: iterate_rows(dataset.shard(count, i)))
            for i in range(count)
        ]
    if records.reader == "parquet":
        import pyarrow.parquet as pq

        units = []
        for file in records.files:
            for group in range(pq.ParquetFile(file).num_row_groups):
                units.append(
                    Unit(len(units), f"{file} row group {group}", lambda f=file, g=group: read_row_group(f, g))
                )
        return units
    read = FILE_READERS[records.reader]  # JSON, Arrow and tar files are read whole
    return [Unit(n, file, lambda f=file: read([f])) for n, file in enumerate(records.files)]


def read_row_group(file: str, group: int) -> Iterator[dict]:
    """Rows of one parquet row group. Embedded images come as `{"bytes", "path"}`, as `datasets.Image` stores
    them; each file keeps its own schema (the released subsets differ in turn style)."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(file).iter_batches(batch_size=READ_BATCH, row_groups=[group]):
        yield from batch.to_pylist()


def read_json_records(files: list[str]) -> Iterator[str]:
    """Raw JSON text per record of .jsonl files (one per line) and .json files (a list, or one object); records are
    parsed at processing time, so a malformed one is counted there instead of failing the load."""
    for file in files:
        with open(file) as handle:
            if file.endswith(".jsonl"):
                for line in handle:
                    if line.strip():
                        yield line.strip()
            else:
                loaded = json.load(handle)
                for record in loaded if isinstance(loaded, list) else [loaded]:
                    yield json.dumps(record)


def read_arrow_rows(files: list[str]) -> Iterator[dict]:
    """Rows of Arrow IPC files (`datasets` writes the stream format; the file format is read too)."""
    import pyarrow as pa

    for file in files:
        with pa.memory_map(file) as source:
            try:
                batches = iter(pa.ipc.open_stream(source))
            except pa.ArrowInvalid:
                ipc_file = pa.ipc.open_file(source)
                batches = (ipc_file.get_batch(i) for i in range(ipc_file.num_record_batches))
            for batch in batches:
                yield from batch.to_pylist()


def read_webdataset_samples(files: list[str]) -> Iterator[dict]:
    """Samples of WebDataset tar shards: consecutive members sharing a key (the name up to its first dot) form one
    sample `{"__key__": key, "<extension>": bytes, ...}`."""
    import tarfile

    for file in files:
        with tarfile.open(file) as tar:
            sample: dict = {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, name = os.path.split(member.name)
                key, _, extension = name.partition(".")
                key = os.path.join(folder, key)
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                sample.setdefault("__key__", key)
                sample[extension.lower()] = tar.extractfile(member).read()
            if sample:
                yield sample


FILE_READERS = {
    "json": read_json_records,
    "arrow": read_arrow_rows,
    "webdataset": read_webdataset_samples,
}


def load_hub_dataset(source: DataSource):
    """A Hub dataset with media decoding off (see the module doc)."""
    import datasets

    try:
        dataset = datasets.load_dataset(
            source.path,
            name=source.subset,
            split=source.split,
            revision=source.revision,
            streaming=bool(source.streaming),
        )
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as error:
        subset = f" --include '{source.subset}/*'" if source.subset else ""
        raise FileNotFoundError(
            f"Could not load the Hub dataset {source.path!r} (subset={source.subset!r}, split={source.split!r}, "
            f"revision={source.revision!r}): {type(error).__name__}: {str(error)[:300]}. Offline machines need a local "
            f"copy: `hf download {source.path} --repo-type dataset{subset} --local-dir DIR` on a connected machine, "
            "then set the source's `path` to DIR (parquet, arrow and webdataset folders are read directly)."
        ) from error
    if isinstance(dataset, datasets.Dataset):
        dataset = dataset.to_iterable_dataset(num_shards=max(1, min(len(dataset) // MEMORY_UNIT, 1024)))
    return dataset.decode(False)


def iterate_rows(dataset) -> Iterator[dict]:
    """Rows of a `datasets.IterableDataset`, read in batches. `iter(batch_size=...)` reads the dataset in full even
    inside a DataLoader worker (plain iteration would split it between workers by file, which the training stream
    already does by record)."""
    for batch in dataset.iter(batch_size=READ_BATCH):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


# -- columns and webdataset members ---------------------------------------------------------------------------------

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
VIDEO_SUFFIXES = ("mp4", "mkv", "webm", "mov", "avi", "ts", "m4v", "mpg", "mpeg", "flv")


def rename_columns(record: dict, columns: dict, where: str) -> dict:
    """Apply a source's `columns` mapping (adapter name -> source column); a mapped column must exist."""
    if not columns:
        return record
    renamed = dict(record)
    for canonical, column in columns.items():
        if column not in record:
            raise KeyError(f"column {column!r} (mapped to {canonical!r}) is missing; the record has {sorted(record)}")
        renamed[canonical] = renamed.pop(column)
    return renamed


def unpack_webdataset_sample(record: dict) -> dict:
    """A WebDataset sample (`__key__`, one member per extension) -> one record: the `json` member gives the fields;
    image and video members fill `images` / `videos` unless the annotation names its own media."""
    if "__key__" not in record:
        return record
    merged: dict = {"id": record["__key__"]}
    for member in ("json", "jsonl"):
        annotation = record.get(member)
        if isinstance(annotation, (bytes, str)):
            annotation = json.loads(annotation)
        if isinstance(annotation, dict):
            merged.update(annotation)
    members = {key.rsplit(".", 1)[-1].lower(): value for key, value in record.items() if value is not None}
    images = [members[s] for s in IMAGE_SUFFIXES if s in members]
    videos = [members[s] for s in VIDEO_SUFFIXES if s in members]
    if images and not any(k in merged for k in ("image", "images")):
        merged["images"] = images
    if videos and not any(k in merged for k in ("video", "videos")):
        merged["videos"] = videos
    return merged


__all__ = [
    "DataSource",
    "Keyed",
    "ReaderShare",
    "SourceRecords",
    "Unit",
    "file_reader",
    "is_hub_id",
    "read_json_records",
    "rename_columns",
    "source_files",
    "unpack_webdataset_sample",
]
