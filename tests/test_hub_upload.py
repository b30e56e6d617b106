"""Export (verified in a fresh process), push dry-run and conversions."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from conftest import released_layout, tiny_overrides  # noqa: F401
from llava_onevision2.hub_upload.convert import convert_encoder_plus_llm, convert_release
from llava_onevision2.hub_upload.export import REMOTE_CODE, export
from llava_onevision2.hub_upload.push import export_files, push
from llava_onevision2.modeling import LlavaOnevision2ForConditionalGeneration
from llava_onevision2.training.toy import build_toy_processor


def sample_inputs(processor):
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    return processor(text="<|image_pad|> What colour?", images=[image], return_tensors="pt")


def test_export_writes_a_self_contained_folder_that_loads_elsewhere(checkpoint, tmp_path):
    report = export(
        str(tmp_path / "export"), source=str(checkpoint), repo_id="someone/tiny-ov2", max_shard_size="200KB"
    )
    files = set(report["files"])
    assert {
        "config.json",
        "generation_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
        "model.safetensors.index.json",
    } <= files
    assert set(REMOTE_CODE) <= files
    assert any(name.startswith("model-00001-of-") for name in files)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    processor_config = json.loads((tmp_path / "export" / "processor_config.json").read_text())
    assert "AutoProcessor" in processor_config["auto_map"]
    assert "AutoImageProcessor" in processor_config["image_processor"]["auto_map"]
    card = (tmp_path / "export" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: image-text-to-text")
    assert "someone/tiny-ov2" in card and 'video_backend="codec"' in card
    verification = report["verification"]
    assert verification["code_from"] == "transformers_modules"
    assert verification["image_new_tokens"] == verification["video_new_tokens"] == 4


def test_export_verification_reports_a_broken_folder(checkpoint, tmp_path):
    from llava_onevision2.hub_upload.export import verify_export

    folder = tmp_path / "broken"
    shutil.copytree(checkpoint, folder)
    (folder / "modeling_llava_onevision2.py").write_text("raise ImportError('deliberately broken')\n")
    with pytest.raises(RuntimeError, match="Verification of .*broken failed"):
        verify_export(str(folder))


def test_push_dry_run_lists_files_and_refuses_strangers(checkpoint, tmp_path):
    folder = tmp_path / "export"
    export(str(folder), source=str(checkpoint), verify=False)
    plan = push(str(folder), "someone/tiny-ov2", private=True, revision="v1", dry_run=True)
    names = [name for name, _ in plan["files"]]
    assert "config.json" in names and "model.safetensors" in names
    assert plan["total_bytes"] == sum(size for _, size in plan["files"]) > 0
    (folder / "notes.txt").write_text("scratch")
    with pytest.raises(ValueError, match=r"not part of an export: \['notes.txt'\]"):
        export_files(str(folder))
    result = subprocess.run(
        [sys.executable, "-m", "llava_onevision2.hub_upload", "push", str(tmp_path / "missing"), "a/b", "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "not an exported model folder" in result.stderr


def test_convert_release_keeps_weights_and_logits(checkpoint, tmp_path):
    source = released_layout(checkpoint, tmp_path / "released")
    report = convert_release(str(source), str(tmp_path / "ours"))
    assert not any("codec" in note for note in report["notes"])  # every released codec key is honoured
    original = LlavaOnevision2ForConditionalGeneration.from_pretrained(checkpoint).eval()
    converted = LlavaOnevision2ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    assert (tmp_path / "ours" / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    processor = build_toy_processor()
    inputs = sample_inputs(processor)
    with torch.no_grad():
        torch.testing.assert_close(original(**inputs).logits, converted(**inputs).logits, rtol=0, atol=0)
    from transformers import AutoProcessor

    loaded = AutoProcessor.from_pretrained(tmp_path / "ours", trust_remote_code=True)
    assert loaded.image_processor.max_pixels == 8192
    released_codec = json.loads((source / "preprocessor_config.json").read_text())["codec"]
    assert loaded.video_processor.codec_config == released_codec  # every key, cache_root and spatial_mask_mode too


def test_convert_release_refuses_a_different_layout(checkpoint, tmp_path):
    source = released_layout(checkpoint, tmp_path / "released")
    state = LlavaOnevision2ForConditionalGeneration.from_pretrained(checkpoint).state_dict()
    renamed = {k.replace("model.language_model.", "language_model.model."): v.contiguous() for k, v in state.items()}
    save_file(renamed, str(source / "model.safetensors"))
    with pytest.raises(ValueError, match=r"(?s)not in the released layout .* missing model.language_model"):
        convert_release(str(source), str(tmp_path / "ours"))


def test_convert_encoder_plus_llm_builds_a_stage0_checkpoint(checkpoint, tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    reference = LlavaOnevision2ForConditionalGeneration.from_pretrained(checkpoint)
    encoder_dir, llm_dir = tmp_path / "encoder", tmp_path / "llm"
    encoder_dir.mkdir()
    standalone = {}
    for key, value in reference.model.visual.state_dict().items():
        if key.startswith("merger."):
            continue
        if ".self_attn.qkv." in key:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                standalone["vision_model." + key.replace(".qkv.", f".{name}_proj.")] = part.contiguous()
        else:
            standalone["vision_model." + key.replace(".self_attn.proj.", ".self_attn.out_proj.")] = value.contiguous()
    standalone["vision_model.head.probe"] = torch.zeros(1, 1, 64)
    standalone["vision_model.layernorm_post.weight"] = torch.ones(64)
    save_file(standalone, str(encoder_dir / "model.safetensors"))
    vision = reference.config.vision_config.to_dict()
    (encoder_dir / "config.json").write_text(
        json.dumps({**vision, "model_type": "onevision_encoder", "use_head": True})
    )
    text = reference.config.text_config.to_dict()
    llm = Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in text.items() if k != "model_type"}))
    llm.save_pretrained(llm_dir)
    shutil.copy2(checkpoint / "tokenizer.json", llm_dir / "tokenizer.json")
    shutil.copy2(checkpoint / "tokenizer_config.json", llm_dir / "tokenizer_config.json")

    report = convert_encoder_plus_llm(str(encoder_dir), str(llm_dir), str(tmp_path / "stage0"))
    assert report["fresh_merger_tensors"] == 6
    built = LlavaOnevision2ForConditionalGeneration.from_pretrained(tmp_path / "stage0")
    torch.testing.assert_close(
        built.model.visual.encoder.layers[0].self_attn.qkv.weight,
        reference.model.visual.encoder.layers[0].self_attn.qkv.weight,
    )
    torch.testing.assert_close(
        built.model.language_model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight
    )
    torch.testing.assert_close(built.lm_head.weight, llm.lm_head.weight)
    assert built.model.visual.merger.mlp[2].weight.shape == (text["hidden_size"], 4 * vision["hidden_size"])
