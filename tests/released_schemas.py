"""Tiny datasets in the schemas of the released training data, generated at test time.

The schemas are written down in training/README.md ("Released datasets"); each writer below follows one of them:
column names and types, nesting, file layout and how media are embedded or referenced. Parquet files are written
by `datasets` with `datasets.Image` features, as `push_to_hub` writes the released shards.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import datasets
from PIL import Image
from synthetic_media import encode_video

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
TURNS_FROM_VALUE = [{"from": datasets.Value("string"), "value": datasets.Value("string")}]
TURNS_ROLE_CONTENT = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]


def png(colour: str, size: int = 48, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(buffer, image_format)
    return buffer.getvalue()


def colour_of(index: int) -> str:
    return list(COLOURS)[index % len(COLOURS)]


def write_parquet(path: str, columns: dict, features: dict) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).to_parquet(path)
    return path


def instruct_data(root: str, per_subset: int = 4) -> str:
    """LLaVA-OneVision-1.5-Instruct-Data: a folder per subset of `train-0000k-of-0000n.parquet` shards with `id`,
    `image` (embedded), `conversations` and `data_source`; one subset in each released turn style."""
    folder = os.path.join(root, "LLaVA-OneVision-1.5-Instruct-Data")
    for subset, turns, style in (
        ("ai2d_gpt4v", TURNS_FROM_VALUE, "from_value"),
        ("chart_instruct", TURNS_ROLE_CONTENT, "role_content"),
    ):
        colours = [colour_of(i) for i in range(per_subset)]
        if style == "from_value":
            conversations = [
                [{"from": "human", "value": "<image>\nWhat colour is the image?"}, {"from": "gpt", "value": c}]
                for c in colours
            ]
        else:
            conversations = [
                [{"role": "user", "content": "<image>\nName the colour."}, {"role": "assistant", "content": c}]
                for c in colours
            ]
        for shard in range(2):
            rows = range(shard, per_subset, 2)
            write_parquet(
                os.path.join(folder, subset, f"train-{shard:05d}-of-00002.parquet"),
                {
                    "id": [f"{subset}-{i}" for i in rows],
                    "image": [{"bytes": png(colours[i]), "path": None} for i in rows],
                    "conversations": [conversations[i] for i in rows],
                    "data_source": [subset] * len(rows),
                },
                {
                    "id": datasets.Value("string"),
                    "image": datasets.Image(),
                    "conversations": turns,
                    "data_source": datasets.Value("string"),
                },
            )
    return folder


def mid_training_data(root: str, rows: int = 4) -> str:
    """LLaVA-OneVision-1.5-Mid-Training-85M: `<source>/<language>/*.parquet` with `id`, `image` (embedded) and
    `caption`."""
    folder = os.path.join(root, "LLaVA-OneVision-1.5-Mid-Training-85M")
    write_parquet(
        os.path.join(folder, "imagenet", "EN", "part-00000.parquet"),
        {
            "id": [f"imagenet-{i}" for i in range(rows)],
            "image": [{"bytes": png(colour_of(i)), "path": None} for i in range(rows)],
            "caption": [f"A plain {colour_of(i)} square." for i in range(rows)],
        },
        {"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")},
    )
    return folder


def finevision_data(root: str, rows: int = 4) -> str:
    """FineVision: one folder per subset with `images` (a list of embedded images), `texts` (a list of
    `{user, assistant, source}` exchanges), `source` and per-turn quality ratings."""
    folder = os.path.join(root, "FineVision")
    texts = [
        [
            {"user": "What colour is shown?", "assistant": colour_of(i), "source": "synthetic"},
            {"user": "Is it a square?", "assistant": "Yes.", "source": "synthetic"},
        ]
        for i in range(rows)
    ]
    ratings = datasets.List(datasets.Value("int64"))
    write_parquet(
        os.path.join(folder, "CoSyn_400k_chart", "train-00000-of-00001.parquet"),
        {
            "images": [[{"bytes": png(colour_of(i)), "path": None}] for i in range(rows)],
            "texts": texts,
            "source": ["CoSyn_400k_chart"] * rows,
            "relevance_ratings": [[5, 4]] * rows,
            "relevance_min": [4] * rows,
            "visual_dependency_ratings": [[5, 3]] * rows,
            "visual_dependency_min": [3] * rows,
            "image_correspondence_ratings": [[5, 5]] * rows,
            "image_correspondence_min": [5] * rows,
            "formatting_ratings": [[5, 5]] * rows,
            "formatting_min": [5] * rows,
        },
        {
            "images": datasets.List(datasets.Image()),
            "texts": [
                {
                    "user": datasets.Value("string"),
                    "assistant": datasets.Value("string"),
                    "source": datasets.Value("string"),
                }
            ],
            "source": datasets.Value("string"),
            "relevance_ratings": ratings,
            "relevance_min": datasets.Value("int64"),
            "visual_dependency_ratings": ratings,
            "visual_dependency_min": datasets.Value("int64"),
            "image_correspondence_ratings": ratings,
            "image_correspondence_min": datasets.Value("int64"),
            "formatting_ratings": ratings,
            "formatting_min": datasets.Value("int64"),
        },
    )
    return folder


def video_caption_data(root: str, clips: int = 3) -> tuple[str, str]:
    """LLaVA-OneVision-2-Data video captions: `mid_training_video/caption_v0/split_30s.jsonl` with `id`, `messages`
    (`{role, content}` turns, plain text) and `images_source` (the clip's path relative to the folder the clip
    archives are extracted into). Returns (caption file, extracted clip folder)."""
    folder = os.path.join(root, "LLaVA-OneVision-2-Data", "mid_training_video")
    videos = os.path.join(folder, "extracted")
    os.makedirs(os.path.join(videos, "30s"), exist_ok=True)
    captions = os.path.join(folder, "caption_v0", "split_30s.jsonl")
    os.makedirs(os.path.dirname(captions), exist_ok=True)
    with open(captions, "w") as handle:
        for i in range(clips):
            relative = f"30s/clip_{i:04d}.mp4"
            with open(os.path.join(videos, relative), "wb") as clip:
                clip.write(encode_video(num_frames=8, rate=4, gop=4))
            record = {
                "id": f"clip_{i:04d}",
                "messages": [
                    {"role": "user", "content": "Describe what is shown in the video."},
                    {"role": "assistant", "content": f"### 0. Context and Environment\nA grey scene, clip {i}."},
                ],
                "images_source": [relative],
            }
            handle.write(json.dumps(record) + "\n")
    return captions, videos


def spatial_data(root: str, samples: int = 4) -> str:
    """LLaVA-OneVision-2-Data spatial: WebDataset `.tar` shards whose samples pair an image member with a `.json`
    annotation holding the conversation."""
    folder = os.path.join(root, "LLaVA-OneVision-2-Data", "spatial")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "spatial-00000.tar")
    with tarfile.open(path, "w") as tar:
        for i in range(samples):
            annotation = {
                "conversations": [
                    {"from": "human", "value": "<image>\nWhich side of the image is brighter?"},
                    {"from": "gpt", "value": "Neither; it is one flat colour."},
                ]
            }
            for extension, data in (
                ("jpg", png(colour_of(i), image_format="JPEG")),
                ("json", json.dumps(annotation).encode()),
            ):
                info = tarfile.TarInfo(f"refcoco_{i:06d}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return folder
