"""A toy curriculum that proves the training path learns, on CPU in minutes, with nothing downloaded.

Data: images of one coloured shape ("What colour is the shape?" -> "red") and short videos of a shape moving in one
of four directions ("Which way does the shape move?" -> "left"), written as LLaVA-style JSONL with PNG / MP4 media.
Model: a tiny LLaVA-OneVision-2 trained from scratch with a byte-level BPE tokenizer trained on the toy corpus.

    python -m llava_onevision2.training.toy run --output runs/toy     # data, processor, all stages, evaluation
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import av
import torch
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SIZE = 64
COLOUR_QUESTION = "What colour is the shape?"
MOTION_QUESTION = "Which way does the shape move?"
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CONFIGS = Path(__file__).resolve().parent / "configs" / "toy"
TOY_STAGES = ("stage0_alignment", "stage1_video_bootstrap", "stage2_instruct", "stage3_long_video", "stage4_codec")


# -- media ----------------------------------------------------------------------------------------------------------


def draw_shape(colour: str, shape: str, center: tuple[float, float], radius: int, background: int) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (background,) * 3)
    draw = ImageDraw.Draw(image)
    x, y = center
    box = [x - radius, y - radius, x + radius, y + radius]
    if shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    elif shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=COLOURS[colour])
    return image


def write_moving_video(path: str, colour: str, shape: str, direction: str, frames: int, rng: random.Random) -> None:
    dx, dy = DIRECTIONS[direction]
    radius, step = rng.randint(7, 10), rng.randint(6, 8)
    travel = step * (frames - 1)
    start_x = SIZE / 2 - dx * travel / 2 + rng.randint(-4, 4)
    start_y = SIZE / 2 - dy * travel / 2 + rng.randint(-4, 4)
    background = rng.randint(200, 250)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "g": "4"}
        for index in range(frames):
            center = (start_x + dx * step * index, start_y + dy * step * index)
            image = draw_shape(colour, shape, center, radius, background)
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def llava_record(media_key: str, media: str, question: str, answer: str) -> dict:
    placeholder = "<image>" if media_key == "image" else "<video>"
    return {
        media_key: media,
        "conversations": [
            {"from": "human", "value": f"{placeholder}\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }


def write_toy_dataset(root: str, images: int = 600, videos: int = 600, frames: int = 6, seed: int = 0) -> dict:
    """Write media and JSONL files (captions and questions, train and held-out) under `root`; returns the paths."""
    rng = random.Random(seed)
    media = Path(root) / "media"
    media.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, count_images, count_videos in (("train", images, videos), ("heldout", images // 5, videos // 5)):
        captions_image, captions_video, questions_image, questions_video = [], [], [], []
        for index in range(count_images):
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            name = f"{split}_image_{index:05d}.png"
            center = (rng.randint(16, 48), rng.randint(16, 48))
            draw_shape(colour, shape, center, rng.randint(7, 14), rng.randint(200, 250)).save(media / name)
            captions_image.append(llava_record("image", name, "Describe the image.", f"A {colour} {shape}."))
            questions_image.append(llava_record("image", name, COLOUR_QUESTION, colour))
        for index in range(count_videos):
            colour, shape, direction = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(DIRECTIONS))
            name = f"{split}_video_{index:05d}.mp4"
            write_moving_video(str(media / name), colour, shape, direction, frames, rng)
            captions_video.append(
                llava_record("video", name, "Describe the video.", f"A {colour} {shape} moves {direction}.")
            )
            questions_video.append(llava_record("video", name, MOTION_QUESTION, direction))
        for kind, records in (
            ("captions_image", captions_image),
            ("captions_video", captions_video),
            ("questions_image", questions_image),
            ("questions_video", questions_video),
        ):
            path = Path(root) / f"{split}_{kind}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
            files[f"{split}_{kind}"] = str(path)
    return files


# -- tokenizer and processor ----------------------------------------------------------------------------------------


def toy_corpus() -> list[str]:
    words = list(COLOURS) + list(SHAPES) + list(DIRECTIONS)
    lines = [
        COLOUR_QUESTION,
        MOTION_QUESTION,
        "Describe the image.",
        "Describe the video.",
        "You are a helpful assistant.",
    ]
    lines += [f"A {c} {s} moves {d}." for c in COLOURS for s in SHAPES for d in DIRECTIONS]
    lines += [" ".join(words), "system user assistant seconds 0123456789 . , ? < > \n"]
    return lines


def build_tokenizer(corpus: list[str], vocab_size: int = 400):
    """A byte-level BPE Qwen2 tokenizer trained in memory on `corpus`, with the Qwen special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(corpus * 4, trainer=trainer)
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
        for m in json.loads(backend.to_str())["model"]["merges"]
    ]
    return Qwen2Tokenizer(
        vocab=backend.get_vocab(),
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )


def build_toy_processor(output_dir: str | None = None):
    """Processor sized for the toy model: 64x64 media, patch 8, merge 2 (16 tokens per image or frame)."""
    from ..processing.image_processing_llava_onevision2 import LlavaOnevision2ImageProcessor
    from ..processing.processing_llava_onevision2 import LlavaOnevision2Processor
    from ..processing.video_processing_llava_onevision2 import LlavaOnevision2VideoProcessor

    pixels = dict(patch_size=8, merge_size=2, min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE)
    processor = LlavaOnevision2Processor(
        image_processor=LlavaOnevision2ImageProcessor(**pixels),
        tokenizer=build_tokenizer(toy_corpus()),
        video_processor=LlavaOnevision2VideoProcessor(
            **pixels, fps=None, num_frames=6, max_frames=6, pad_to_even_frames=False, video_format="training"
        ),
    )
    if output_dir:
        processor.save_pretrained(output_dir)
    return processor


def toy_model_config(processor):
    """The toy model's configuration (shapes from the toy stage-0 recipe), with the processor's token ids."""
    import yaml

    from ..modeling import LlavaOnevision2Config

    recipe = yaml.safe_load((CONFIGS / "stage0_alignment.yaml").read_text())
    values = json.loads(json.dumps(recipe["model"]["config_overrides"]))
    tokenizer = processor.tokenizer
    values["text_config"].update(
        vocab_size=max(values["text_config"]["vocab_size"], len(tokenizer)),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlavaOnevision2Config(
        **values,
        image_token_id=processor.image_token_id,
        video_token_id=processor.video_token_id,
        vision_start_token_id=processor.vision_start_token_id,
        vision_end_token_id=processor.vision_end_token_id,
    )


# -- evaluation -----------------------------------------------------------------------------------------------------


def evaluate(model, processor, records_path: str, media_root: str, limit: int | None = None) -> float:
    """Greedy answers on held-out questions; the share whose first word is the expected answer."""
    records = [json.loads(line) for line in Path(records_path).read_text().splitlines()][:limit]
    model.eval()
    correct = 0
    for record in records:
        kind = "image" if "image" in record else "video"
        question = record["conversations"][0]["value"].split("\n", 1)[1]
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": kind, kind: os.path.join(media_root, record[kind])},
                    {"type": "text", "text": question},
                ],
            }
        ]
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        words = answer.strip().strip(".").split()
        correct += bool(words) and words[0].lower() == record["conversations"][1]["value"]
    return correct / max(1, len(records))


# -- the whole curriculum -------------------------------------------------------------------------------------------


def run_curriculum(output: str, images: int = 600, videos: int = 600, seed: int = 0, extra_overrides=()) -> dict:
    """Data, processor, every toy stage in order (each resuming from the previous), then held-out accuracy."""
    from ..modeling import LlavaOnevision2ForConditionalGeneration

    output_path = Path(output)
    data_root = output_path / "data"
    write_toy_dataset(str(data_root), images=images, videos=videos, seed=seed)
    build_toy_processor(str(output_path / "processor"))
    previous = None
    reports = {}
    for stage in TOY_STAGES:
        overrides = [
            f"training.output_dir={output_path / stage}",
            f"model.processor={output_path / 'processor'}",
            f"data.root={data_root}",
        ]
        if previous is not None:
            overrides.append(f"model.name_or_path={previous}")
        command = [
            sys.executable,
            "-m",
            "llava_onevision2.training",
            "--config",
            str(CONFIGS / f"{stage}.yaml"),
            *overrides,
            *extra_overrides,
        ]
        subprocess.run(command, check=True)
        reports[stage] = json.loads((output_path / stage / "training_report.json").read_text())
        previous = output_path / stage
    processor = build_toy_processor()
    model = LlavaOnevision2ForConditionalGeneration.from_pretrained(previous)
    accuracy = {
        "colour": evaluate(
            model, processor, str(data_root / "heldout_questions_image.jsonl"), str(data_root / "media")
        ),
        "motion": evaluate(
            model, processor, str(data_root / "heldout_questions_video.jsonl"), str(data_root / "media")
        ),
    }
    summary = {
        "accuracy": accuracy,
        "chance": {"colour": 1 / len(COLOURS), "motion": 1 / len(DIRECTIONS)},
        "stages": {stage: {"steps": r["global_step"], "final_loss": last_loss(r)} for stage, r in reports.items()},
    }
    (output_path / "toy_results.json").write_text(json.dumps(summary, indent=2))
    return summary


def last_loss(report: dict) -> float | None:
    losses = [entry["loss"] for entry in report["log_history"] if "loss" in entry]
    return losses[-1] if losses else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("make-data", help="write the toy dataset")
    data.add_argument("--root", required=True)
    data.add_argument("--images", type=int, default=600)
    data.add_argument("--videos", type=int, default=600)
    runner = sub.add_parser("run", help="data, processor, every toy stage, evaluation")
    runner.add_argument("--output", required=True)
    runner.add_argument("--images", type=int, default=600)
    runner.add_argument("--videos", type=int, default=600)
    args = parser.parse_args(argv)
    if args.command == "make-data":
        print(json.dumps(write_toy_dataset(args.root, args.images, args.videos), indent=2))
    else:
        print(json.dumps(run_curriculum(args.output, args.images, args.videos), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
