"""The modeling files work as Hub remote code: saved flat next to the weights and loaded with trust_remote_code."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from conftest import pixels_for, prompt, tiny_model

MODELING_DIR = Path(__file__).resolve().parents[1] / "modeling"


def test_modeling_files_import_only_siblings():
    """Remote code is copied into one flat folder: only `from .sibling import` survives that."""
    own_packages = {"llava_onevision2", "modeling", "processing", "training", "hub_upload"}
    for path in MODELING_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{path.name}: multi-dot import from {node.module}"
                if node.level == 0:
                    assert node.module.split(".")[0] not in own_packages, f"{path.name}: imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in own_packages, f"{path.name}: imports {alias.name}"


def test_save_with_auto_map_and_load_in_fresh_process(tmp_path):
    model = tiny_model()
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)  # the classes register themselves for the auto classes
    saved = {p.name for p in folder.iterdir()}
    assert {"configuration_llava_onevision2.py", "modeling_llava_onevision2.py"} <= saved
    assert "vision_geometry_llava_onevision2.py" in saved
    assert json.loads((folder / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_llava_onevision2.LlavaOnevision2Config",
        "AutoModel": "modeling_llava_onevision2.LlavaOnevision2Model",
        "AutoModelForImageTextToText": "modeling_llava_onevision2.LlavaOnevision2ForConditionalGeneration",
    }

    grid = [[1, 4, 6]]
    input_ids = torch.tensor([prompt([7], ("image", 6), [8])])
    torch.save(
        {"input_ids": input_ids, "pixel_values": pixels_for(grid), "image_grid_thw": torch.tensor(grid)},
        tmp_path / "inputs.pt",
    )
    with torch.no_grad():
        expected = model(**torch.load(tmp_path / "inputs.pt")).logits
    torch.save(expected, tmp_path / "expected.pt")

    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path = [p for p in sys.path if p not in ("", ".")]
        from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText
        folder = {str(folder)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(base).__name__ == "LlavaOnevision2Model", type(base).__name__
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            logits = model(**inputs).logits
            generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        torch.testing.assert_close(logits, torch.load({str(tmp_path / "expected.pt")!r}))
        assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
        print("remote-ok", type(config).__name__)
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-ok LlavaOnevision2Config" in result.stdout
