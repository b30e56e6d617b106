"""A toy curriculum that proves the training path learns, on CPU in minutes, with nothing downloaded.

Data: images of one coloured shape ("What colour is the shape?" -> "red") and short videos of a shape moving in one
of four directions ("Which way does the shape move?" -> "left"), written as LLaVA-style JSONL with PNG / MP4 media.
Model: a tiny LLaVA-OneVision-2 trained from scratch with a byte-level BPE tokenizer trained on the toy corpus.

    python -m llava_onevision2.training.toy run --output runs/toy     # data, processor, all stages, evaluation
    python -m llava_onevision2.training.toy ship --output runs/toy --into demo/toy_model   # the demo's model

Held-out evaluation: colour (images), motion with uniform frames and with codec sampling, and brief events (a shape
crossing a still 6 s scene in 0.6 s) answered with codec sampling and with uniform frames at the same token budget.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .synthetic_video import encode_frames

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
PATCH, MERGE = 8, 2
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".ts")
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


def scene_background(rng: random.Random) -> Image.Image:
    """A static grey scene: a flat base with a few grey rectangles. Frames with texture are not flat (codec sampling
    skips flat frames as unusable), and the scene stays still, so only the shape changes between frames."""
    base = rng.randint(185, 235)
    image = Image.new("RGB", (SIZE, SIZE), (base,) * 3)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 5)):
        left, top = rng.randint(0, SIZE - 8), rng.randint(0, SIZE - 8)
        width, height = rng.randint(6, 22), rng.randint(6, 22)
        level = max(0, min(255, base + rng.choice((-1, 1)) * rng.randint(20, 45)))
        draw.rectangle([left, top, left + width, top + height], fill=(level,) * 3)
    return image


def draw_shape(
    colour: str, shape: str, center: tuple[float, float], radius: int, background: int | Image.Image
) -> Image.Image:
    """The shape drawn over `background` (a grey level, or a scene image that is left untouched)."""
    if isinstance(background, Image.Image):
        image = background.copy()
    else:
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


def write_video(path: str, frames: list[Image.Image], rate: int, keyframe_interval: int | None = None) -> None:
    """H.264 MP4 of `frames` at `rate` frames per second (`keyframe_interval`: None keeps the encoder's default)."""
    encode_frames(frames, path, rate=rate, keyframe_interval=keyframe_interval, options={"crf": "18"})


def straight_path(direction: str, steps: int, step: int, rng: random.Random) -> list[tuple[float, float]]:
    """Centres of a shape crossing the middle of the frame in `direction`, `step` pixels per frame."""
    dx, dy = DIRECTIONS[direction]
    travel = step * (steps - 1)
    start_x = SIZE / 2 - dx * travel / 2 + rng.randint(-4, 4)
    start_y = SIZE / 2 - dy * travel / 2 + rng.randint(-4, 4)
    return [(start_x + dx * step * index, start_y + dy * step * index) for index in range(steps)]


def write_moving_video(path: str, colour: str, shape: str, direction: str, frames: int, rng: random.Random) -> None:
    """A shape moving steadily in `direction` over a still scene for the whole clip (4 frames per second)."""
    radius, step = rng.randint(7, 10), rng.randint(6, 8)
    scene = scene_background(rng)
    path_points = straight_path(direction, frames, step, rng)
    write_video(path, [draw_shape(colour, shape, c, radius, scene) for c in path_points], rate=4, keyframe_interval=4)


BRIEF_FRAMES, BRIEF_EVENT_FRAMES, BRIEF_RATE = 48, 5, 8


def write_brief_event_video(path: str, colour: str, shape: str, direction: str, rng: random.Random) -> tuple[int, int]:
    """A still scene for 6 s (48 frames at 8 fps) that a shape crosses in `direction` during 5 frames only (0.6 s);
    before and after, the scene is empty. Returns the first and last frame of the event.

    One frame of the event shows where the shape is, not where it goes: answering needs two frames of those five."""
    radius = rng.randint(7, 9)
    scene = scene_background(rng)
    first = rng.randint(4, BRIEF_FRAMES - BRIEF_EVENT_FRAMES - 4)
    path_points = straight_path(direction, BRIEF_EVENT_FRAMES, 8, rng)
    frames = [scene] * first
    frames += [draw_shape(colour, shape, c, radius, scene) for c in path_points]
    frames += [scene] * (BRIEF_FRAMES - len(frames))
    write_video(path, frames, rate=BRIEF_RATE)
    return first, first + BRIEF_EVENT_FRAMES - 1


def llava_record(media_key: str, media: str, question: str, answer: str) -> dict:
    placeholder = "<image>" if media_key == "image" else "<video>"
    return {
        media_key: media,
        "conversations": [
            {"from": "human", "value": f"{placeholder}\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }


def write_toy_dataset(
    root: str, images: int = 600, videos: int = 1800, frames: int = 6, brief: int | None = None, seed: int = 0
) -> dict:
    """Write media and JSONL files (captions and questions, train and held-out) under `root`; returns the paths.

    Counts are the training set's; each held-out set is a fifth as large, at most 120. `brief` brief-event clips
    (default: a quarter of `videos`) get motion questions of their own (`{split}_questions_brief.jsonl`): the held-out
    ones measure what codec sampling buys at an equal token budget. Motion clips are many because the tiny model
    memorises a few hundred instead of learning to compare frames."""
    brief = videos // 4 if brief is None else brief
    rng = random.Random(seed)
    media = Path(root) / "media"
    media.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, size in (("train", lambda count: count), ("heldout", lambda count: min(count // 5, 120))):
        records = {kind: [] for kind in ("captions_image", "captions_video", "questions_image", "questions_video")}
        records["questions_brief"] = []
        for index in range(size(images)):
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            name = f"{split}_image_{index:05d}.png"
            center = (rng.randint(16, 48), rng.randint(16, 48))
            draw_shape(colour, shape, center, rng.randint(7, 14), rng.randint(200, 250)).save(media / name)
            records["captions_image"].append(
                llava_record("image", name, "Describe the image.", f"A {colour} {shape}.")
            )
            records["questions_image"].append(llava_record("image", name, COLOUR_QUESTION, colour))
        for index in range(size(videos)):
            colour, shape, direction = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(DIRECTIONS))
            name = f"{split}_video_{index:05d}.mp4"
            write_moving_video(str(media / name), colour, shape, direction, frames, rng)
            caption = f"A {colour} {shape} moves {direction}."
            records["captions_video"].append(llava_record("video", name, "Describe the video.", caption))
            records["questions_video"].append(llava_record("video", name, MOTION_QUESTION, direction))
        for index in range(size(brief)):
            colour, shape, direction = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(DIRECTIONS))
            name = f"{split}_brief_{index:05d}.mp4"
            first, last = write_brief_event_video(str(media / name), colour, shape, direction, rng)
            record = llava_record("video", name, MOTION_QUESTION, direction)
            record["event_frames"] = [first, last]
            records["questions_brief"].append(record)
        for kind, kind_records in records.items():
            path = Path(root) / f"{split}_{kind}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in kind_records))
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

    pixels = dict(patch_size=PATCH, merge_size=MERGE, min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE)
    processor = LlavaOnevision2Processor(
        image_processor=LlavaOnevision2ImageProcessor(**pixels),
        tokenizer=build_tokenizer(toy_corpus()),
        video_processor=LlavaOnevision2VideoProcessor(
            **pixels,
            fps=None,
            num_frames=6,
            max_frames=6,
            pad_to_even_frames=False,
            video_format="training",
            # The toy model learned its collages from frame differences, so it reads them with the same signal: on
            # its held-out brief events the H.264 default (`residual`) selects nearly the same frames (4.8 against
            # 4.9 of the 5 event frames) but the model answers 42% instead of 86%. A model meets the signal it
            # was trained with.
            codec_config={"score_source": "framediff"},
        ),
    )
    if output_dir:
        processor.save_pretrained(output_dir)
    return processor


def toy_model_config(processor):
    """The toy model's configuration (the toy stage-0 recipe's preset and overrides), with the processor's token
    ids."""
    from .recipe import read_recipe_file
    from .sft import fresh_model_config

    recipe = read_recipe_file(str(CONFIGS / "stage0_alignment.yaml"))
    return fresh_model_config(recipe["preset"], recipe["config_overrides"], processor)


# -- evaluation -----------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """One greedy answer and what the model was shown to give it."""

    text: str
    visual_tokens: int
    frames_reached: int  # distinct source frames that contributed tokens

    @property
    def first_word(self) -> str:
        words = self.text.strip().strip(".").split()
        return words[0].lower().strip(".,") if words else ""


def ask(model, processor, media: str, question: str, max_new_tokens: int = 4, **processor_kwargs) -> Answer:
    """Greedy answer to `question` about one image or video file; `processor_kwargs` reach the video processor
    (e.g. `video_backend="codec"`, `num_frames=3`)."""
    kind = "video" if media.endswith(VIDEO_SUFFIXES) else "image"
    messages = [{"role": "user", "content": [{"type": kind, kind: media}, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs=processor_kwargs,
    ).to(model.device)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    text = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    placeholders = (processor.image_token_id, processor.video_token_id)
    tokens = int(sum((inputs["input_ids"] == token).sum() for token in placeholders))
    positions = inputs.get("video_patch_positions", inputs.get("patch_positions"))
    reached = len({int(t) for t in positions[:, 0] if t >= 0}) if positions is not None else 1
    return Answer(text=text, visual_tokens=tokens, frames_reached=reached)


def read_records(records_path: str, limit: int | None = None) -> list[dict]:
    return [json.loads(line) for line in Path(records_path).read_text().splitlines()][:limit]


def question_and_media(record: dict, media_root: str) -> tuple[str, str, str]:
    kind = "image" if "image" in record else "video"
    question = record["conversations"][0]["value"].split("\n", 1)[1]
    return question, os.path.join(media_root, record[kind]), record["conversations"][1]["value"]


def evaluate(
    model, processor, records_path: str, media_root: str, limit: int | None = None, **processor_kwargs
) -> float:
    """Greedy answers on held-out questions; the share whose first word is the expected answer."""
    model.eval()
    records = read_records(records_path, limit)
    correct = 0
    for record in records:
        question, media, expected = question_and_media(record, media_root)
        correct += ask(model, processor, media, question, **processor_kwargs).first_word == expected
    return correct / max(1, len(records))


def tokens_per_frame(processor, video: str) -> int:
    """Visual tokens one uniformly sampled frame of `video` costs with this processor."""
    from ..processing.vision_layout_llava_onevision2 import merged_token_count

    grid = processor.video_processor(videos=[video], video_backend="frames", num_frames=1, max_frames=1)
    return merged_token_count(grid["video_grid_thw"][0], processor.video_processor.merge_size)


def equal_budget_answers(model, processor, video: str, question: str, max_new_tokens: int = 4) -> dict[str, Answer]:
    """Codec sampling, then uniform frames given the same visual-token budget (as many whole frames as fit in the
    codec answer's tokens; with the toy processor a frame and a canvas cost the same, so the budgets are equal)."""
    codec = ask(model, processor, video, question, max_new_tokens, video_backend="codec")
    frames = max(1, codec.visual_tokens // tokens_per_frame(processor, video))
    uniform = ask(
        model, processor, video, question, max_new_tokens, video_backend="frames", num_frames=frames, max_frames=frames
    )
    return {"codec": codec, "uniform": uniform}


def evaluate_equal_budget(model, processor, records_path: str, media_root: str, limit: int | None = None) -> dict:
    """Held-out brief-event questions answered with codec sampling and with uniform frames at the same token count:
    accuracy of each, and the mean tokens and source frames each spent per video."""
    model.eval()
    records = read_records(records_path, limit)
    correct = dict.fromkeys(("codec", "uniform"), 0)
    tokens = dict.fromkeys(("codec", "uniform"), 0)
    reached = dict.fromkeys(("codec", "uniform"), 0)
    for record in records:
        question, media, expected = question_and_media(record, media_root)
        answers = equal_budget_answers(model, processor, media, question)
        if answers["uniform"].visual_tokens != answers["codec"].visual_tokens:
            raise RuntimeError(f"{media}: the two methods were given different token budgets: {answers}")
        for method, answer in answers.items():
            correct[method] += answer.first_word == expected
            tokens[method] += answer.visual_tokens
            reached[method] += answer.frames_reached
    count = max(1, len(records))
    return {
        "accuracy": {method: value / count for method, value in correct.items()},
        "visual_tokens_per_video": {method: value / count for method, value in tokens.items()},
        "frames_reached_per_video": {method: value / count for method, value in reached.items()},
        "videos": len(records),
    }


def evaluate_toy_model(model, processor, data_root: str, limit: int | None = None) -> dict:
    """Every held-out measure of the toy model: colour (images), motion with frames and with codec sampling, and the
    brief-event set with codec sampling against uniform frames at an equal token budget."""
    root = Path(data_root)
    media = str(root / "media")
    motion = str(root / "heldout_questions_video.jsonl")
    return {
        "colour": evaluate(model, processor, str(root / "heldout_questions_image.jsonl"), media, limit),
        "motion_frames": evaluate(model, processor, motion, media, limit, video_backend="frames"),
        "motion_codec": evaluate(model, processor, motion, media, limit, video_backend="codec"),
        "brief_event": evaluate_equal_budget(
            model, processor, str(root / "heldout_questions_brief.jsonl"), media, limit
        ),
    }


# -- the whole curriculum -------------------------------------------------------------------------------------------


def run_curriculum(output: str, images: int = 600, videos: int = 1800, seed: int = 0, extra_overrides=()) -> dict:
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
            f"--output_dir={output_path / stage}",
            f"--processor={output_path / 'processor'}",
            f"--data_root={data_root}",
        ]
        if previous is not None:
            overrides.append(f"--model_name_or_path={previous}")
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
    accuracy = evaluate_toy_model(model, processor, str(data_root))
    summary = {
        "accuracy": accuracy,
        "chance": {"colour": 1 / len(COLOURS), "motion": 1 / len(DIRECTIONS)},
        "stages": {stage: {"steps": r["global_step"], "final_loss": last_loss(r)} for stage, r in reports.items()},
    }
    (output_path / "toy_results.json").write_text(json.dumps(summary, indent=2))
    return summary


MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")


def ship_toy_model(run_output: str, into: str) -> dict:
    """Run the whole curriculum into `run_output`, then write its final model where the demo ships it (`into`)."""
    summary = run_curriculum(run_output)
    write_shipped_model(run_output, into)
    return summary


def write_shipped_model(run_output: str, into: str) -> None:
    """The final model of a finished curriculum run, the toy processor and the held-out results, into `into`
    (weights, config, tokenizer and processor settings; no code: it loads with this package's classes)."""
    target = Path(into)
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.iterdir():
        if stale.is_file():
            stale.unlink()
    final = Path(run_output) / TOY_STAGES[-1]
    for name in MODEL_FILES:
        shutil.copy2(final / name, target / name)
    build_toy_processor(str(target))
    drop_remote_code(target)
    shutil.copy2(Path(run_output) / "toy_results.json", target / "toy_results.json")


def drop_remote_code(folder: Path) -> None:
    """Remove the code files `save_pretrained` copies and the `auto_map` entries pointing at them: the shipped model
    is loaded with this package's classes, and a stale copy of the code must not ride along."""
    for code in folder.glob("*.py"):
        code.unlink()
    for settings in folder.glob("*.json"):
        values = json.loads(settings.read_text())
        if isinstance(values, dict):
            values.pop("auto_map", None)
            for nested in values.values():
                if isinstance(nested, dict):
                    nested.pop("auto_map", None)
            settings.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def last_loss(report: dict) -> float | None:
    losses = [entry["loss"] for entry in report["log_history"] if "loss" in entry]
    return losses[-1] if losses else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("make-data", help="write the toy dataset")
    data.add_argument("--root", required=True)
    data.add_argument("--images", type=int, default=600)
    data.add_argument("--videos", type=int, default=1800)
    runner = sub.add_parser("run", help="data, processor, every toy stage, evaluation")
    runner.add_argument("--output", required=True)
    runner.add_argument("--images", type=int, default=600)
    runner.add_argument("--videos", type=int, default=1800)
    ship = sub.add_parser("ship", help="run the curriculum and write its final model where the demo ships it")
    ship.add_argument("--output", required=True, help="folder for the run (data, every stage)")
    ship.add_argument("--into", required=True, help="folder of the shipped model (demo/toy_model)")
    args = parser.parse_args(argv)
    if args.command == "make-data":
        print(json.dumps(write_toy_dataset(args.root, args.images, args.videos), indent=2))
    elif args.command == "ship":
        print(json.dumps(ship_toy_model(args.output, args.into), indent=2))
    else:
        print(json.dumps(run_curriculum(args.output, args.images, args.videos), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
