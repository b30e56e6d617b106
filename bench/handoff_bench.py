"""How long the training loop waits to receive a batch that a DataLoader worker has already made, and whether
`pin_memory` (the Trainer's default, `dataloader_pin_memory=True`, where a GPU trains) takes that hand-off off the
training thread.

The batches are toy-curriculum batches: the shipped toy model's processor (64x64 images, 6-frame videos, in the
training video format) and `MultimodalCollator`, the same tensors a toy batch has. Each worker makes them from
processed samples held in memory, so workers never fall behind and all the loop waits for is the hand-off: the
batch's tensors moved into shared memory by the worker and mapped by the loop (and, with `pin_memory`, copied into
pinned memory by the DataLoader's own thread). The loop runs the toy model's training step (AdamW) on `--device`.

Reported per setting (0 workers, `--workers` workers, and with `pin_memory` where the device is a GPU): ms per step,
ms per step spent in `next(batches)`, their ratio, and the step on batches already in memory for reference. The
`_separate_tensors` settings hand each tensor over on its own, as before `MultimodalCollator` laid a worker's batch
out in one shared buffer. Needs neither PyAV nor `datasets` (videos are frame arrays), so it runs on the device
image as it is.

    python bench/handoff_bench.py                  # CPU (pin_memory needs a GPU)
    python bench/handoff_bench.py --device cuda    # issue 11's GPU question
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_report, timed_training_steps  # noqa: E402

from llava_onevision2.modeling import LlavaOnevision2ForConditionalGeneration  # noqa: E402
from llava_onevision2.processing import LlavaOnevision2Processor  # noqa: E402
from llava_onevision2.processing.image_processing_llava_onevision2 import LlavaOnevision2ImageProcessor  # noqa: E402
from llava_onevision2.processing.video_processing_llava_onevision2 import LlavaOnevision2VideoProcessor  # noqa: E402
from llava_onevision2.training.collator import MultimodalCollator  # noqa: E402

# The demo's shipped toy model; read from its folder here because `llava_onevision2.demo` imports PyAV.
TOY_MODEL = Path(__file__).resolve().parents[1] / "demo" / "toy_model"


def toy_processor() -> LlavaOnevision2Processor:
    """The toy processor from its parts (the folder carries no remote code for `from_pretrained` to resolve them)."""
    from transformers import AutoTokenizer

    return LlavaOnevision2Processor(
        image_processor=LlavaOnevision2ImageProcessor.from_pretrained(TOY_MODEL),
        video_processor=LlavaOnevision2VideoProcessor.from_pretrained(TOY_MODEL),
        tokenizer=AutoTokenizer.from_pretrained(TOY_MODEL),
        chat_template=(TOY_MODEL / "chat_template.jinja").read_text(),
    )


def toy_samples(processor, count: int) -> list[dict]:
    """`count` processed samples, alternating an image question and a 6-frame video question, as the toy data has."""
    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        kind = "image" if index % 2 == 0 else "video"
        media = rng.integers(0, 256, (64, 64, 3) if kind == "image" else (6, 64, 64, 3), dtype=np.uint8)
        messages = [
            {"role": "user", "content": [{"type": kind}, {"type": "text", "text": "Which way does the square move?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "left"}]},
        ]
        text = processor.apply_chat_template(messages, tokenize=False)
        inputs = processor(text=text, **({"images": [media]} if kind == "image" else {"videos": [media]}))
        sample = {key: np.asarray(value) for key, value in inputs.items()}
        sample["input_ids"] = sample["input_ids"][0]
        sample.pop("attention_mask", None)
        sample["labels"] = sample["input_ids"].copy()
        samples.append(sample)
    return samples


class SeparateTensorsCollator(MultimodalCollator):
    """The collator as it was before batches left workers in one shared buffer: each tensor on its own."""

    @staticmethod
    def hand_over(batch: dict) -> dict:
        return batch


class ReadySamples(torch.utils.data.IterableDataset):
    """Serves processed samples from memory, endlessly: the worker's only work is collating."""

    def __init__(self, samples: list[dict]):
        self.samples = samples

    def __iter__(self):
        return itertools.cycle(self.samples)


def train_steps(model, batches, steps: int, device: str) -> dict:
    """`steps` training steps after one warm-up step; time per step and time waiting for `next(batches)`."""
    seconds, waiting = timed_training_steps(model, batches, steps, device)
    return {
        "ms_per_step": round(1000 * seconds / steps, 2),
        "ms_waiting_per_step": round(1000 * waiting / steps, 3),
        "share_waiting": round(waiting / seconds, 3),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16, help="the toy curriculum's per-device batch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--output")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict:
    """Build the toy model and batches, then time the training steps fed each way; returns the report."""
    torch.manual_seed(0)
    processor = toy_processor()
    model = LlavaOnevision2ForConditionalGeneration.from_pretrained(TOY_MODEL).to(args.device)
    collator = MultimodalCollator(processor.tokenizer.pad_token_id)
    samples = toy_samples(processor, 4 * args.batch_size)
    dataset = ReadySamples(samples)
    ready = [collator(samples[i : i + args.batch_size]) for i in range(0, len(samples), args.batch_size)]
    example = ready[0]

    separate = SeparateTensorsCollator(processor.tokenizer.pad_token_id)
    workers = args.workers
    settings = {
        "ready_in_memory": None,
        "workers_0": (0, False, collator),
        f"workers_{workers}": (workers, False, collator),
        f"workers_{workers}_separate_tensors": (workers, False, separate),
    }
    if args.device.startswith("cuda"):
        settings[f"workers_{workers}_pin_memory"] = (workers, True, collator)
        settings[f"workers_{workers}_pin_memory_separate_tensors"] = (workers, True, separate)
    results = {}
    for name, setting in settings.items():
        if setting is None:
            batches = itertools.cycle(ready)
        else:
            count, pin, collate = setting
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=args.batch_size, collate_fn=collate, num_workers=count, pin_memory=pin
            )
            batches = iter(loader)
        results[name] = train_steps(model, batches, args.steps, args.device)
        del batches
    return {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "batch_size": args.batch_size,
        "batch_tensors": {key: list(value.shape) for key, value in example.items() if torch.is_tensor(value)},
        "batch_mib": round(
            sum(v.numel() * v.element_size() for v in example.values() if torch.is_tensor(v)) / 2**20, 2
        ),
        "settings": results,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    emit_report(measure(args), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
