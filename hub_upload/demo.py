"""The main job in one command: a video through codec sampling, the processor and the model, to an answer and a PNG.

make demo                           # the toy model (trained on first use, about 5 minutes on CPU, then cached)
make demo MODEL=/path/to/checkpoint VIDEO=/path/to/video.mp4
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch
from transformers import AutoProcessor

from ..modeling import LlavaOnevision2ForConditionalGeneration
from ..processing.codec_sampling_llava_onevision2 import CodecSamplingConfig
from ..processing.codec_visualization_llava_onevision2 import visualize_codec_selection
from ..training.toy import MOTION_QUESTION, TOY_STAGES, run_curriculum, write_moving_video

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "llava_onevision2")


def toy_model(cache_dir: str) -> str:
    """The toy curriculum's final model folder, trained into `cache_dir` the first time it is needed."""
    folder = Path(cache_dir) / "toy"
    final = folder / TOY_STAGES[-1]
    if not (final / "config.json").exists() or not (folder / "toy_results.json").exists():
        print(f"Training the toy model into {folder} (first use only, a few minutes on CPU) ...", flush=True)
        run_curriculum(str(folder))
    return str(final)


def answer(model, processor, video: str, question: str, backend: str) -> str:
    messages = [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"video_backend": backend},
    ).to(model.device)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    return processor.post_process_image_text_to_text(output[:, inputs["input_ids"].shape[1] :])[0].strip()


def run_demo(model_path: str | None, video: str | None, output_dir: str, cache_dir: str, question: str | None) -> dict:
    os.makedirs(output_dir, exist_ok=True)
    model_path = model_path or toy_model(cache_dir)
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    model = LlavaOnevision2ForConditionalGeneration.from_pretrained(model_path).eval()
    if video is None:
        video = os.path.join(output_dir, "sample.mp4")
        write_moving_video(video, "red", "circle", "right", frames=6, rng=random.Random(7))
        question = question or MOTION_QUESTION
    question = question or "Describe what happens in this video."
    vision = model.config.vision_config
    codec = CodecSamplingConfig(patch=vision.patch_size, merge=vision.spatial_merge_size, progress=False)
    picture = os.path.join(output_dir, "codec_selection.png")
    sample = visualize_codec_selection(video, picture, codec)
    report = {
        "model": model_path,
        "video": video,
        "question": question,
        "answer_codec": answer(model, processor, video, question, "codec"),
        "answer_frames": answer(model, processor, video, question, "frames"),
        "codec_canvases": len(sample.canvases),
        "codec_frames_with_tokens": len({int(t) for t in sample.positions[:, 0] if t >= 0}),
        "visualization": picture,
    }
    toy_results = Path(model_path).parent / "toy_results.json"
    if toy_results.exists():
        report["toy_heldout_accuracy"] = json.loads(toy_results.read_text())["accuracy"]
    Path(output_dir, "demo_report.json").write_text(json.dumps(report, indent=2))
    return report


__all__ = ["run_demo", "toy_model"]
