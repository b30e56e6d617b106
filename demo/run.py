"""The main job in one command: a video through codec sampling and through uniform frames, at the same visual-token
budget, to the model, to two answers, a picture of the selection and a short report.

    make demo                                   # the shipped toy model on a generated brief-event clip (seconds)
    make demo MODEL=/path/to/checkpoint VIDEO=/path/to/video.mp4 [QUESTION="..."]

The default clip is a still scene that a shape crosses in 0.6 s of 6 s, the case codec sampling is for: uniform
frames spread the same tokens over the whole clip and mostly miss the event; the codec sampler spends them on the
frames where something changes.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from ..modeling import LlavaOnevision2ForConditionalGeneration
from ..processing.codec_sampling_llava_onevision2 import CodecSamplingConfig
from ..processing.codec_visualization_llava_onevision2 import summarize_selection, visualize_codec_selection
from ..processing.processing_llava_onevision2 import LlavaOnevision2Processor
from ..training.toy import BRIEF_RATE, MOTION_QUESTION, Answer, equal_budget_answers, write_brief_event_video

SHIPPED_MODEL = Path(__file__).resolve().parent / "toy_model"
# The generated clip (blue, so that it stands out from the red block marks of the picture): its seed is outside the
# toy dataset's, so the shipped model has not seen it.
DEMO_CLIP = {"colour": "blue", "shape": "circle", "direction": "left", "seed": 2026}
REAL_MODEL_QUESTION = "Describe what happens in this video."


@dataclass
class MethodResult:
    answer: str
    visual_tokens: int
    frames_reached: int
    correct: bool | None  # None when the truth is not known (your own video)


@dataclass
class DemoReport:
    model: str
    video: str
    question: str
    ground_truth: str | None
    total_frames: int
    duration: float
    event_frames: list[int] | None
    codec: MethodResult
    uniform: MethodResult
    picture: str
    heldout: dict | None  # the shipped toy model's held-out results, measured when it was built


def register_auto_classes() -> None:
    """Tell transformers' Auto classes about this package's classes, so that a folder saved without its remote code
    (the shipped toy: weights and settings only) resolves its image and video processors."""
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoVideoProcessor

    from ..modeling import LlavaOnevision2Config
    from ..processing.image_processing_llava_onevision2 import LlavaOnevision2ImageProcessor
    from ..processing.video_processing_llava_onevision2 import LlavaOnevision2VideoProcessor

    AutoConfig.register(LlavaOnevision2Config.model_type, LlavaOnevision2Config, exist_ok=True)
    # One class serves both resize back-ends (its `resize_backend` setting), so both map to it.
    backends = {"torchvision": LlavaOnevision2ImageProcessor, "pil": LlavaOnevision2ImageProcessor}
    AutoImageProcessor.register(LlavaOnevision2Config, image_processor_classes=backends, exist_ok=True)
    AutoVideoProcessor.register(LlavaOnevision2Config, LlavaOnevision2VideoProcessor, exist_ok=True)
    AutoProcessor.register(LlavaOnevision2Config, LlavaOnevision2Processor, exist_ok=True)


def load_model(path: str | os.PathLike):
    """Model and processor from a folder, loaded with this package's classes. A folder exported with its remote code
    (auto_map) loads its sub-processors through that copy, as `AutoProcessor` would; the shipped toy has none and
    resolves them through `register_auto_classes`."""
    from transformers.utils import logging as hf_logging

    if not Path(path, "config.json").exists():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json).")
    register_auto_classes()
    hf_logging.disable_progress_bar()  # a bar for loading a few MB is noise
    try:
        processor = LlavaOnevision2Processor.from_pretrained(path, trust_remote_code=True)
        model = LlavaOnevision2ForConditionalGeneration.from_pretrained(path).eval()
    finally:
        hf_logging.enable_progress_bar()
    return model, processor


def write_demo_clip(output_dir: str) -> tuple[str, str, list[int]]:
    """The default clip: path, the true answer and the event's first and last frame."""
    path = os.path.join(output_dir, "brief_event.mp4")
    rng = random.Random(DEMO_CLIP["seed"])
    first, last = write_brief_event_video(path, DEMO_CLIP["colour"], DEMO_CLIP["shape"], DEMO_CLIP["direction"], rng)
    return path, DEMO_CLIP["direction"], [first, last]


def method_result(answer: Answer, truth: str | None) -> MethodResult:
    return MethodResult(
        answer=answer.text.strip(),
        visual_tokens=answer.visual_tokens,
        frames_reached=answer.frames_reached,
        correct=None if truth is None else answer.first_word == truth,
    )


def run_demo(
    model_path: str | None = None,
    video: str | None = None,
    question: str | None = None,
    output_dir: str = "demo_output",
) -> DemoReport:
    """Answer with codec sampling and with uniform frames at the same token budget; write the picture and
    `demo_report.json` into `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    model_path = str(model_path or SHIPPED_MODEL)
    model, processor = load_model(model_path)
    truth, event = None, None
    if video is None:
        video, truth, event = write_demo_clip(output_dir)
        question = question or MOTION_QUESTION
    elif not os.path.exists(video):
        raise FileNotFoundError(f"Video not found: {video}")
    question = question or REAL_MODEL_QUESTION
    answers = equal_budget_answers(model, processor, video, question, max_new_tokens=48)
    video_processor = processor.video_processor
    codec_config = CodecSamplingConfig.from_mapping(
        {"patch": video_processor.patch_size, "merge": video_processor.merge_size, "progress": False},
        video_processor.codec_config,
    )
    picture = os.path.join(output_dir, "codec_selection.png")
    summary = summarize_selection(visualize_codec_selection(video, picture, codec_config), codec_config)
    results = Path(model_path, "toy_results.json")
    report = DemoReport(
        model=model_path,
        video=video,
        question=question,
        ground_truth=truth,
        total_frames=summary.total_frames,
        duration=summary.duration,
        event_frames=event,
        codec=method_result(answers["codec"], truth),
        uniform=method_result(answers["uniform"], truth),
        picture=picture,
        heldout=json.loads(results.read_text())["accuracy"] if results.exists() else None,
    )
    Path(output_dir, "demo_report.json").write_text(json.dumps(asdict(report), indent=2))
    return report


def format_report(report: DemoReport) -> str:
    """The short human summary the command prints."""
    lines = [f"Model     {report.model}"]
    video = f"Video     {report.video}: {report.total_frames} frames, {report.duration:.1f} s"
    if report.event_frames:
        first, last = report.event_frames
        video += (
            f"; the shape is visible in frames {first}-{last} only "
            f"({(last - first + 1) / BRIEF_RATE:.1f} s), the scene is still otherwise"
        )
    lines += [
        video,
        f"Question  {report.question}",
        f"Truth     {report.ground_truth or 'not known (your video)'}",
        "",
    ]
    lines.append(f"{'':16}{'answer':<24}{'visual tokens':>14}{'frames seen':>13}")
    for name, result in (("codec sampling", report.codec), ("uniform frames", report.uniform)):
        mark = "" if result.correct is None else ("  (correct)" if result.correct else "  (wrong)")
        answer = (result.answer[:21] + "...") if len(result.answer) > 24 else result.answer
        lines.append(f"{name:<16}{answer + mark:<24}{result.visual_tokens:>14}{result.frames_reached:>13}")
    if report.heldout and "brief_event" in report.heldout:
        brief = report.heldout["brief_event"]
        lines += [
            "",
            f"Held-out brief events ({brief['videos']} clips, measured when this toy model was built): codec sampling "
            f"{brief['accuracy']['codec']:.0%} right, uniform frames {brief['accuracy']['uniform']:.0%}, "
            f"at {brief['visual_tokens_per_video']['codec']:.0f} visual tokens per clip each.",
        ]
    lines += [
        "",
        f"Picture   {report.picture} (anchor frames, chosen blocks and the canvases the model saw)",
        f"Report    {os.path.join(os.path.dirname(report.picture), 'demo_report.json')}",
    ]
    return "\n".join(lines)


__all__ = ["DEMO_CLIP", "SHIPPED_MODEL", "DemoReport", "format_report", "load_model", "run_demo", "write_demo_clip"]
