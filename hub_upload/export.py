"""Export a self-contained model folder for the Hub, then verify it in a fresh Python process.

The folder holds safetensors weights (sharded with an index above `max_shard_size`), `config.json` with `auto_map`
for AutoConfig / AutoModel / AutoModelForImageTextToText, `generation_config.json`, `processor_config.json` with
nested `auto_map`s, tokenizer files, `chat_template.jinja`, flat copies of the remote-code files of `modeling/` and
`processing/`, and a model card. Verification loads it with `trust_remote_code=True` from a process that cannot
import this repository, and generates from an image and from a video.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from transformers import AutoProcessor

from .. import modeling as modeling_package
from .. import processing as processing_package
from ..modeling import LlavaOnevision2Config, LlavaOnevision2ForConditionalGeneration

CODE_DIRS = tuple(Path(package.__file__).parent for package in (modeling_package, processing_package))


def remote_code_files() -> list[Path]:
    """Every file shipped as remote code: the `*_llava_onevision2.py` modules of `modeling/` and `processing/`. An
    export holds them side by side, so their names must be unique across the two folders."""
    files = sorted(file for folder in CODE_DIRS for file in folder.glob("*_llava_onevision2.py"))
    names = [file.name for file in files]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise RuntimeError(f"Remote-code files share names across modeling/ and processing/: {clashes}.")
    return files


REMOTE_CODE = tuple(file.name for file in remote_code_files())


def copy_remote_code(output: str) -> None:
    """Put every remote-code file in `output` (`save_pretrained` copies only the modules the saved classes import,
    which leaves out e.g. the codec visualisation)."""
    for file in remote_code_files():
        shutil.copy2(file, Path(output) / file.name)


MODEL_CARD = """---
library_name: transformers
pipeline_tag: image-text-to-text
license: {license}
base_model: {base_model}
tags:
- llava-onevision-2
- video
- codec
- multimodal
- custom_code
---

# {name}

LLaVA-OneVision-2 ({parameters} parameters): OneVision-Encoder with 3-D (t, h, w) rotary positions, a patch merger
and a {text_model} language model, for images, long video and codec-aligned sparse video. The weights use the
released layout; the code in this folder (loaded with `trust_remote_code=True`) is the transformers-native
implementation from the `llava-onevision2` project.

## Usage

```python
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo}", trust_remote_code=True, dtype=torch.bfloat16)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)

messages = [{{"role": "user", "content": [{{"type": "image", "image": "photo.jpg"}},
                                          {{"type": "text", "text": "Describe this picture."}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=128)
print(processor.post_process_image_text_to_text(output[:, inputs["input_ids"].shape[1]:])[0])
```

Video, sampled frames (PyAV decoding, one timestamped block per frame):

```python
messages = [{{"role": "user", "content": [{{"type": "video", "video": "clip.mp4"}},
                                          {{"type": "text", "text": "What happens?"}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt", processor_kwargs={{"fps": 1.0, "max_frames": 32}})
```

Video, codec-aligned sampling (dense anchor canvases plus collages of the blocks that change most):

```python
inputs = processor(text="<|video_pad|> What happens?", videos=["clip.mp4"], video_backend="codec",
                   return_tensors="pt")
```
"""


def count_parameters(model) -> str:
    total = sum(p.numel() for p in model.parameters())
    return f"{total / 1e9:.1f}B" if total >= 1e9 else f"{total / 1e6:.1f}M"


def load_source(source: str | None, preset: str | None, config_overrides: dict | None):
    if source:
        return LlavaOnevision2ForConditionalGeneration.from_pretrained(source)
    if preset is None:
        raise ValueError("Give a checkpoint folder or a preset.")
    config = LlavaOnevision2Config.from_preset(preset, **(config_overrides or {}))
    return LlavaOnevision2ForConditionalGeneration._from_config(config)


def export(
    output: str,
    source: str | None = None,
    processor_path: str | None = None,
    preset: str | None = None,
    config_overrides: dict | None = None,
    repo_id: str = "your-name/llava-onevision2",
    base_model: str = "lmms-lab-encoder/LLaVA-OneVision-2-8B-Instruct",
    license: str = "apache-2.0",
    max_shard_size: str | int = "5GB",
    verify: bool = True,
) -> dict:
    """Write the export folder; returns the list of files and, when `verify`, the fresh-process report."""
    model = load_source(source, preset, config_overrides)
    processor_path = processor_path or source
    if processor_path is None:
        raise ValueError("A processor folder is needed (the checkpoint's own, or --processor).")
    processor = AutoProcessor.from_pretrained(processor_path, trust_remote_code=True)
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output, max_shard_size=max_shard_size)
    processor.save_pretrained(output)
    text_model = model.config.text_config.model_type.replace("qwen3_moe", "Qwen3-MoE").replace("qwen3", "Qwen3")
    card = MODEL_CARD.format(
        license=license,
        base_model=base_model,
        name=repo_id.split("/")[-1],
        parameters=count_parameters(model),
        text_model=text_model,
        repo=repo_id,
    )
    Path(output, "README.md").write_text(card)
    copy_remote_code(output)
    report = {"folder": output, "files": sorted(os.listdir(output))}
    if verify:
        report["verification"] = verify_export(output)
    return report


VERIFY_SCRIPT = """
import io, json, sys
repository = {repository!r}
# Drop the repository's own folders (a virtual environment inside it stays: that is where the libraries live).
sys.path = [p for p in sys.path if p not in ("", ".") and ("site-packages" in p or not p.startswith(repository))]


class RefuseProject:
    # However the project is installed (editable or not), this process must not import it.
    def find_spec(self, name, path=None, target=None):
        if name == "llava_onevision2" or name.startswith("llava_onevision2."):
            raise ImportError("llava_onevision2 is deliberately hidden from the export check")
        return None


sys.meta_path.insert(0, RefuseProject())
import numpy as np, torch, av
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
folder = {folder!r}
report = {{}}
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
report["model_class"] = type(model).__name__
report["processor_class"] = type(processor).__name__
report["code_from"] = type(model).__module__.split(".")[0]
image = Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype("uint8"))
buffer = io.BytesIO()
with av.open(buffer, mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=4)
    stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
    for index in range(8):
        frame = np.full((64, 96, 3), 20 * index, dtype=np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
video = buffer.getvalue()
for name, item in (("image", {{"type": "image", "image": image}}), ("video", {{"type": "video", "video": video}})):
    messages = [{{"role": "user", "content": [item, {{"type": "text", "text": "Describe it."}}]}}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    report[name + "_new_tokens"] = int(output.shape[1] - inputs["input_ids"].shape[1])
print("VERIFY " + json.dumps(report))
"""


def verify_export(folder: str) -> dict:
    """Load `folder` with the Auto classes in a process that cannot import this repository; generate twice."""
    repository = str(Path(__file__).resolve().parents[1])
    script = VERIFY_SCRIPT.format(repository=repository, folder=os.path.abspath(folder))
    with tempfile.TemporaryDirectory() as modules:
        env = {**os.environ, "HF_MODULES_CACHE": modules, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            capture_output=True,
            text=True,
            cwd=modules,
            env=env,
            timeout=1800,
        )
    lines = [line for line in result.stdout.splitlines() if line.startswith("VERIFY ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"Verification of {folder} failed (exit code {result.returncode}):\n{result.stderr[-4000:]}"
        )
    report = json.loads(lines[-1][len("VERIFY ") :])
    if report["code_from"] != "transformers_modules":
        raise RuntimeError(f"Verification loaded code from {report['code_from']}, not from the folder.")
    return report


__all__ = ["REMOTE_CODE", "copy_remote_code", "export", "remote_code_files", "verify_export"]
