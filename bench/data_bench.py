"""Data-path throughput: processed samples per second with 0, 1 and 2 DataLoader workers, against the toy model's step.

    python bench/data_bench.py                      # 2 cores: workers 0, 1, 2
    python bench/data_bench.py --workers 0 1 2 4 8  # a bigger machine

Two sources go through the real training stream (`TrainingStream` -> `datasets.IterableDataset` -> DataLoader ->
`MultimodalCollator`), each timed alone:
- `image_parquet`: a parquet file of embedded photographs (matplotlib's and, when installed, scikit-image's sample
  photos, re-encoded as JPEG at their own sizes), one colour question each, in the released instruct schema;
- `video`: generated 8-second H.264 clips (320x240, 24 fps, 1 keyframe per second), one caption each, decoded with
  the frames back-end at the toy recipes' budgets;
- `toy_curriculum`: the toy curriculum's own image and video questions (`training/toy.py`, 64x64 media).
For each worker count: samples/s over `--batches` batches after the first (worker start-up excluded), and the ratio
to samples/s with 0 workers. The toy model's training step (toy curriculum shapes, all parts learning, AdamW) is timed
on batches held in memory; `data_over_step` = data samples/s / those training samples/s (above 1, the data path alone
outruns the step), and `training_fed_live_over_ready_batches` times the same steps fed by a live DataLoader with that
many workers (1.0: as fast as on batches held in memory; on a CPU-only machine workers and training
share them), and `share_of_time_waiting_for_data` is the part of those live runs spent in `next(batches)`: how long the
data path itself holds the step back (a batch already waiting in a worker's queue still takes a few milliseconds
to hand over), as against how much sharing the machine slows the step down.
`split_cores` gives the cores out as a GPU machine does: training on `--training-threads` threads (default half the
cores), fed by a DataLoader with the other cores as workers, against the same steps on ready batches at that thread
count.
"""

import argparse
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_report, timed_training_steps  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def photo_bytes() -> list[bytes]:
    import matplotlib
    from PIL import Image

    paths = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    if (skimage := importlib.util.find_spec("skimage")) is not None:
        data = Path(skimage.submodule_search_locations[0]) / "data"
        paths += [
            data / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
        ]
    encoded = []
    for path in paths:
        if path.exists():
            buffer = io.BytesIO()
            Image.open(path).convert("RGB").save(buffer, "JPEG", quality=90)
            encoded.append(buffer.getvalue())
    return encoded


def write_image_parquet(folder: Path, count: int) -> Path:
    import datasets

    photos = photo_bytes()
    turns = [{"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "A photo."}]
    path = folder / "instruct" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
            "data_source": datasets.Value("string"),
        }
    )
    columns = {
        "id": [str(i) for i in range(count)],
        "image": [{"bytes": photos[i % len(photos)], "path": None} for i in range(count)],
        "conversations": [turns] * count,
        "data_source": ["bench"] * count,
    }
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return path


def write_videos(folder: Path, count: int) -> Path:
    import numpy as np

    from llava_onevision2.training.synthetic_video import encode_frames

    (folder / "videos").mkdir(parents=True)
    records = []
    for index in range(count):
        name = f"clip_{index:03d}.mp4"

        def frames(index=index):
            for t in range(8 * 24):
                frame = np.full((240, 320, 3), (index * 17 + t) % 255, dtype=np.uint8)
                frame[100:140, (t * 2) % 280 : (t * 2) % 280 + 40] = 255
                yield frame

        encode_frames(frames(), folder / "videos" / name, rate=24, keyframe_interval=24)
        turns = [{"from": "human", "value": "<video>\nDescribe the clip."}, {"from": "gpt", "value": "A bar moves."}]
        records.append(json.dumps({"video": name, "conversations": turns}))
    path = folder / "videos.jsonl"
    path.write_text("\n".join(records) + "\n")
    return path


def toy_recipe(sources: list[dict], processor: Path, output: Path):
    """The toy curriculum's model and budgets (stage 0 builds the toy model), everything learning."""
    from llava_onevision2.training.recipe import load_recipe

    return load_recipe(
        str(REPO / "training" / "configs" / "toy" / "stage0_alignment.yaml"),
        [
            f"--processor={processor}",
            "--trainable",
            "vision",
            "merger",
            "llm",
            f"--sources={json.dumps(sources)}",
            f"--output_dir={output}",
        ],
    )


def samples_per_second(stream, collator, workers: int, batch_size: int, batches: int) -> float:
    iterator = iter(loader(stream, collator, workers, batch_size))
    next(iterator)  # worker start-up and the first batch are not the steady state
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    del iterator
    return batches * batch_size / seconds


def training_samples_per_second(model, batches, batch_size: int, steps: int) -> tuple[float, float]:
    """Training steps over `batches` (ready in memory, or a live DataLoader iterator); the first step is warm-up.
    Returns samples/s and the share of the time spent waiting for the next batch."""
    seconds, waiting = timed_training_steps(model, iter(batches), steps)
    return steps * batch_size / seconds, waiting / seconds


def split_cores(model, stream, collator, ready: list, args, training_threads: int, workers: int) -> dict:
    """Training on `training_threads` threads, on ready batches and fed live by `workers` DataLoader workers (each
    worker runs one thread, so the two never compete for a core when they add up to the machine's)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(training_threads)
    try:
        ready_rate, _ = training_samples_per_second(model, ready, args.batch_size, args.train_steps)
        live = loader(stream, collator, workers, args.batch_size)
        live_rate, waiting = training_samples_per_second(model, iter(live), args.batch_size, args.train_steps)
    finally:
        torch.set_num_threads(threads)
    return {
        "training_threads": training_threads,
        "workers": workers,
        "toy_training_samples_per_second": round(ready_rate, 1),
        "training_fed_live_over_ready_batches": round(live_rate / ready_rate, 2),
        "share_of_time_waiting_for_data": round(waiting, 3),
    }


def loader(stream, collator, workers: int, batch_size: int):
    return torch.utils.data.DataLoader(
        stream.as_dataset(), batch_size=batch_size, num_workers=workers, collate_fn=collator
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument(
        "--training-threads", type=int, default=None, help="split_cores: threads of the training step (half the cores)"
    )
    parser.add_argument("--output", help="also write the JSON report here")
    args = parser.parse_args()

    from llava_onevision2.training.collator import MultimodalCollator
    from llava_onevision2.training.data import TrainingStream, budget_ladder
    from llava_onevision2.training.sft import build_model, load_processor, resolve_sources
    from llava_onevision2.training.toy import build_toy_processor, write_toy_dataset

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        build_toy_processor(str(root / "processor"))
        write_toy_dataset(str(root / "toy"), images=args.images, videos=args.videos, frames=6)
        sources = {
            "image_parquet": [{"path": str(write_image_parquet(root, args.images)), "name": "image_parquet"}],
            "video": [{"path": str(write_videos(root, args.videos)), "media_root": str(root / "videos")}],
            "toy_curriculum": [
                {
                    "path": str(root / "toy" / f"train_questions_{kind}.jsonl"),
                    "media_root": str(root / "toy" / "media"),
                }
                for kind in ("image", "video")
            ],
        }
        report = {"cpu_count": os.cpu_count(), "batch_size": args.batch_size, "sources": {}}
        training_threads = args.training_threads or max(1, (os.cpu_count() or 2) // 2)
        split_workers = max(1, (os.cpu_count() or 2) - training_threads)
        for name, entries in sources.items():
            recipe = toy_recipe(entries, root / "processor", root / "out")
            processor = load_processor(recipe)
            vision = recipe.vision
            stream = TrainingStream(
                resolve_sources(recipe),
                processor,
                recipe.sft.max_length,
                budget_ladder(vision.max_pixels, vision.max_frames, vision.video_max_pixels),
                vision.processor_kwargs,
            )
            collator = MultimodalCollator(processor.tokenizer.pad_token_id)
            rates = {w: samples_per_second(stream, collator, w, args.batch_size, args.batches) for w in args.workers}
            model = build_model(recipe, processor)
            ready = list(zip(range(args.train_steps + 1), iter(loader(stream, collator, 0, args.batch_size))))
            train_rate, _ = training_samples_per_second(
                model, [b for _, b in ready], args.batch_size, args.train_steps
            )
            live = {
                w: training_samples_per_second(
                    model, iter(loader(stream, collator, w, args.batch_size)), args.batch_size, args.train_steps
                )
                for w in args.workers
            }
            report["sources"][name] = {
                "samples_per_second": {str(w): round(r, 1) for w, r in rates.items()},
                "speedup_over_0_workers": {str(w): round(r / rates[args.workers[0]], 2) for w, r in rates.items()},
                "toy_training_samples_per_second": round(train_rate, 1),
                "data_over_step": {str(w): round(r / train_rate, 2) for w, r in rates.items()},
                "training_fed_live_over_ready_batches": {
                    str(w): round(r / train_rate, 2) for w, (r, _) in live.items()
                },
                "share_of_time_waiting_for_data": {str(w): round(waiting, 3) for w, (_, waiting) in live.items()},
                "split_cores": split_cores(
                    model, stream, collator, [b for _, b in ready], args, training_threads, split_workers
                ),
            }
    emit_report(report, args.output)


if __name__ == "__main__":
    main()
