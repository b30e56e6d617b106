"""Release fidelity: the calling conventions of the tools that drive released folders (lmms-eval, scripts written for
the released processor) and the released folder layout give what the release gives, or fail loudly."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import PIL.Image
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from synthetic_media import encode_video
from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil

from conftest import released_layout, tiny_config, tiny_model, tiny_tokenizer
from llava_onevision2.hub_upload.convert import convert_encoder_plus_llm, convert_release
from llava_onevision2.modeling import LlavaOnevision2ForConditionalGeneration
from llava_onevision2.processing import (
    CodecSamplingConfig,
    LlavaOnevision2ImageProcessor,
    LlavaOnevision2Processor,
    LlavaOnevision2VideoProcessor,
)
from llava_onevision2.processing.vision_layout_llava_onevision2 import smart_resize
from llava_onevision2.training.data import encode_conversation

WRAPPED_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


def make_processor(**video_settings) -> LlavaOnevision2Processor:
    return LlavaOnevision2Processor(
        image_processor=LlavaOnevision2ImageProcessor(),
        tokenizer=tiny_tokenizer(),
        video_processor=LlavaOnevision2VideoProcessor(**video_settings),
    )


def set_budget_like_lmms_eval(processor, min_pixels: int, max_pixels: int) -> None:
    """What lmms-eval 0.7.3's `llava_onevision2` wrapper does after loading a processor (same statements, same
    `except AttributeError` that silently skips read-only attributes)."""
    try:
        video = processor.video_processor
        if video is not None:
            video.min_pixels = int(min_pixels)
            video.max_pixels = int(max_pixels)
    except AttributeError:
        pass
    try:
        image = processor.image_processor
        if image is not None:
            image.min_pixels = int(min_pixels)
            image.max_pixels = int(max_pixels)
            if hasattr(image, "size") and isinstance(image.size, dict):
                image.size = dict(image.size)
                image.size["shortest_edge"] = int(min_pixels)
                image.size["longest_edge"] = int(max_pixels)
    except AttributeError:
        pass


def real_photos() -> list[Path]:
    """Real photographs that installed packages ship: matplotlib's sample photo and scikit-image's data set."""
    import matplotlib

    photos = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    skimage = importlib.util.find_spec("skimage")
    assert skimage is not None, "scikit-image (a dev dependency) ships the test photographs"
    data = Path(skimage.submodule_search_locations[0]) / "data"
    photos += [data / name for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")]
    for photo in photos:
        assert photo.exists(), photo
    return photos


# -- processor: pixel budgets -----------------------------------------------------------------------------------------


def test_budgets_set_the_way_lmms_eval_sets_them_change_token_counts(tmp_path):
    processor = make_processor()
    image = PIL.Image.new("RGB", (640, 480), (10, 200, 30))
    before = processor.image_processor(image)["image_grid_thw"]
    assert before.tolist() == [[1, 34, 46]]  # 391 tokens under the release's default budget

    budget = 64 * 28 * 28
    set_budget_like_lmms_eval(processor, budget, budget)
    after = processor.image_processor(image)["image_grid_thw"]
    # smart_resize under max_pixels 50176: 480 x 640 -> 168 x 252 -> 12 x 18 patches -> 54 tokens
    assert after.tolist() == [[1, 12, 18]]
    reference = Qwen2VLImageProcessorPil(
        patch_size=14, merge_size=2, temporal_patch_size=1, size=dict(processor.image_processor.size)
    )
    assert reference(image, return_tensors="pt")["image_grid_thw"].tolist() == after.tolist()
    assert processor.video_processor.size["longest_edge"] == budget

    # size and the two attributes are one value, in both directions and through save/load
    processor.image_processor.size = {"shortest_edge": 3136, "longest_edge": 100352}
    assert (processor.image_processor.min_pixels, processor.image_processor.max_pixels) == (3136, 100352)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["image_processor"]["max_pixels"] == 100352 and saved["video_processor"]["min_pixels"] == budget
    loaded = LlavaOnevision2Processor.from_pretrained(tmp_path, trust_remote_code=True)
    assert (loaded.image_processor.min_pixels, loaded.image_processor.max_pixels) == (3136, 100352)
    assert loaded.video_processor.max_pixels == budget


def test_budget_in_the_wrong_order_fails_at_use_not_silently():
    processor = make_processor()
    processor.image_processor.max_pixels = 50_000  # below the default min of 200,704: allowed until used
    with pytest.raises(ValueError, match=r"min_pixels \(200704\) exceeds max_pixels \(50000\)"):
        processor.image_processor(PIL.Image.new("RGB", (64, 64)))
    with pytest.raises(ValueError, match="positive integer"):
        processor.image_processor.max_pixels = -1


# -- processor: image resizing ----------------------------------------------------------------------------------------


def test_image_resizing_equals_the_released_pil_path_on_real_photos():
    """Default path: bit-identical to the PIL processor the release uses. The torchvision option differs by a
    measured amount (printed; bounded here)."""
    settings = dict(patch_size=14, merge_size=2, temporal_patch_size=1, min_pixels=256 * 28 * 28, max_pixels=600_000)
    released = Qwen2VLImageProcessorPil(**settings)
    ours = LlavaOnevision2ImageProcessor(min_pixels=settings["min_pixels"], max_pixels=settings["max_pixels"])
    torchvision_path = LlavaOnevision2ImageProcessor(**{**settings, "resize_backend": "torchvision"})
    differences = {}
    for photo in real_photos():
        image = PIL.Image.open(photo).convert("RGB")
        expected = released(image, return_tensors="pt")
        got = ours(image)
        assert got["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist(), photo.name
        assert torch.equal(got["pixel_values"], expected["pixel_values"]), photo.name
        fast = torchvision_path(image)["pixel_values"]
        differences[photo.name] = float((fast - expected["pixel_values"]).abs().max())
    print("torchvision vs released PIL path, max |difference| after normalisation:", differences)
    assert all(0 < value < 0.25 for value in differences.values()), differences


# -- processor: default video sampling --------------------------------------------------------------------------------


def released_frame_indices(num_frames: int, fps: float, max_frames: int = 384) -> list[int]:
    """The released processor's rule, written from its description: count by duration, then round(linspace)."""
    duration = num_frames / fps
    count = 8 if duration < 10 else 16 if duration < 30 else max_frames
    if num_frames <= count:
        return list(range(num_frames))
    return torch.linspace(0, num_frames - 1, count).round().long().tolist()


@pytest.mark.parametrize("seconds, rate", [(3, 10), (9, 8), (14, 6), (31, 4), (45, 2)])
def test_default_video_sampling_follows_the_released_rule(tmp_path, seconds, rate):
    path = tmp_path / "clip.mp4"
    path.write_bytes(encode_video(num_frames=seconds * rate, rate=rate, width=80, height=48, gop=16))
    out = LlavaOnevision2VideoProcessor()(str(path), return_metadata=True)
    metadata = out["video_metadata"][0]
    expected = released_frame_indices(seconds * rate, rate)
    assert metadata.frames_indices == expected
    timestamps = [round(t, 6) for t in metadata.timestamps]
    assert timestamps == [round(i / rate, 6) for i in expected]
    assert len(set(f"{t:.1f}" for t in timestamps)) == len(timestamps)  # no repeated frame, no <2.9><2.9>
    height, width = smart_resize(48, 80, 28, 256 * 28 * 28, 1_605_632)
    assert out["video_grid_thw"].tolist() == [[1, height // 14, width // 14]] * len(expected)


def test_explicit_sampling_overrides_still_apply(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(encode_video(num_frames=30, rate=10, width=80, height=48))
    processor = LlavaOnevision2VideoProcessor()
    assert len(processor(str(path), fps=2.0, return_metadata=True)["video_metadata"][0].frames_indices) == 6
    padded = processor(str(path), num_frames=5, pad_to_even_frames=True, return_metadata=True)
    assert len(padded["video_metadata"][0].frames_indices) == 6


# -- processor: codec configuration ----------------------------------------------------------------------------------


SMALL_CODEC = {
    "target_canvas": 4,
    "group_size": 8,
    "images_per_group": 2,
    "min_group_frames": 4,
    "max_group_frames": 16,
}


@pytest.fixture(scope="module")
def codec_clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("codec") / "clip.mp4"
    path.write_bytes(encode_video(num_frames=64, rate=8, width=192, height=128, gop=16))
    return path


def test_codec_config_with_the_released_names_as_lmms_eval_passes_them(codec_clip, tmp_path):
    processor = make_processor()
    text = f"<|im_start|>user\n{WRAPPED_VIDEO}\nWhat happens?<|im_end|>\n<|im_start|>assistant\n"
    overrides = {**SMALL_CODEC, "patch": 14, "spatial_mask_mode": "off", "cache_root": tmp_path / "codec-cache"}
    budgets = {}
    for max_pixels in (20_000, 60_000):
        inputs = processor(
            text=[text],
            videos=[str(codec_clip)],
            video_backend="codec",
            max_pixels=max_pixels,
            return_tensors="pt",
            padding=True,
            codec_config=overrides,
        )
        _, grid_h, grid_w = inputs["image_grid_thw"][0].tolist()
        budgets[max_pixels] = grid_h * grid_w * 14 * 14
        assert "pixel_values_videos" not in inputs
    # The call-level max_pixels is the canvas budget (the codec block's own 150,000 is overridden), as released.
    assert budgets[20_000] < budgets[60_000] <= 60_000 * 1.2
    assert len(list((tmp_path / "codec-cache").glob("codec-*.npz"))) == 2
    # The run lines end with a newline that takes the place of the one after the placeholder (no blank line).
    prompt = processor.tokenizer.decode(inputs["input_ids"][0])
    assert "<|vision_end|>\n\nWhat happens?" not in prompt and "<|vision_end|>\nWhat happens?" in prompt


def test_codec_config_rejects_what_it_cannot_honour(codec_clip):
    processor = make_processor()
    with pytest.raises(ValueError, match=r"Unknown codec_config keys \['engine'\]; accepted keys: target_canvas"):
        processor.video_processor(str(codec_clip), video_backend="codec", codec_config={"engine": "dcvc-rt"})
    with pytest.raises(ValueError, match="spatial_mask_mode 'center' is not implemented"):
        CodecSamplingConfig.from_mapping({"spatial_mask_mode": "center"})
    with pytest.raises(ValueError, match="Unknown codec_config keys"):
        LlavaOnevision2VideoProcessor(codec_config={"bogus": 1})
    with pytest.raises(TimeoutError, match=r"exceeded its timeout of 1e-06 s"):
        processor.video_processor(
            str(codec_clip), video_backend="codec", codec_config={**SMALL_CODEC, "timeout": 1e-6, "cache_root": None}
        )


def test_codec_cache_root_defaults_to_the_released_location(monkeypatch, tmp_path):
    monkeypatch.delenv("ONLINE_CODEC_CACHE_DIR", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert CodecSamplingConfig().cache_root == str(tmp_path / "hf" / "online_codec")
    monkeypatch.setenv("ONLINE_CODEC_CACHE_DIR", str(tmp_path / "codec"))
    monkeypatch.setenv("ONLINE_CODEC_TIMEOUT", "90")
    config = CodecSamplingConfig()
    assert (config.cache_root, config.timeout) == (str(tmp_path / "codec"), 90.0)
    assert CodecSamplingConfig(cache_root=None).cache_root is None
    assert CodecSamplingConfig(cache_root=Path("~/x")).cache_root == os.path.expanduser("~/x")


# -- processor: no PyAV needed for images ----------------------------------------------------------------------------


def test_images_need_no_pyav_in_the_package_or_as_remote_code(tmp_path):
    folder = tmp_path / "processor"
    make_processor().save_pretrained(folder)
    for source in (Path(__file__).resolve().parents[1] / "processing").glob("*_llava_onevision2.py"):
        shutil.copy2(source, folder / source.name)
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "av" or name.startswith("av."):
                    raise ImportError("PyAV is not installed")
                return None

        sys.meta_path.insert(0, Refuse())
        import PIL.Image
        from transformers import AutoProcessor
        from llava_onevision2.processing import LlavaOnevision2ImageProcessor
        image = PIL.Image.new("RGB", (64, 64))
        print(LlavaOnevision2ImageProcessor()(image)["image_grid_thw"].tolist())
        sys.path = [p for p in sys.path if "llava_onevision2" not in p]
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        out = processor(text="<|vision_start|><|image_pad|><|vision_end|>", images=[image])
        print(type(processor).__module__, out["image_grid_thw"].tolist(), "av" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "[[1, 32, 32]]"
    assert lines[1].endswith("[[1, 32, 32]] False") and "transformers_modules" in lines[1]


# -- conversion of a released folder ---------------------------------------------------------------------------------

# Qwen2-VL style, as released folders ship it: no {% generation %} markers, the video item wrapped in markers.
RELEASED_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def released_folder(checkpoint, tmp_path):
    folder = released_layout(checkpoint, tmp_path / "released")
    (folder / "chat_template.jinja").write_text(RELEASED_TEMPLATE)
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    settings.update(min_pixels=16 * 16 * 8, max_pixels=48 * 48 * 8, do_convert_rgb=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    (folder / "video_preprocessor_config.json").write_text(
        json.dumps({"min_pixels": 1024, "max_pixels": 6144, "max_frames": 48, "video_processor_type": "X"})
    )
    return folder


def test_convert_release_keeps_template_and_processor_settings(released_folder, tmp_path):
    report = convert_release(str(released_folder), str(tmp_path / "ours"))
    assert report["notes"] == []
    from transformers import AutoProcessor

    loaded = AutoProcessor.from_pretrained(tmp_path / "ours", trust_remote_code=True)
    assert loaded.chat_template["default"] == RELEASED_TEMPLATE and "training" in loaded.chat_template
    assert (loaded.video_processor.min_pixels, loaded.video_processor.max_pixels) == (1024, 6144)
    assert loaded.video_processor.max_frames == 48
    assert loaded.video_processor.codec_config["target_canvas"] == 16
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    rendered = loaded.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")

    # Pixels and grids equal transformers' Qwen2-VL processors built from the released preprocessor_config.json.
    released_pil = Qwen2VLImageProcessorPil.from_pretrained(released_folder)
    released_tv = Qwen2VLImageProcessor.from_pretrained(released_folder)
    photo = PIL.Image.open(real_photos()[0]).convert("RGB")
    expected = released_pil(photo, return_tensors="pt")
    got = loaded.image_processor(photo)
    assert got["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist()
    assert torch.equal(got["pixel_values"], expected["pixel_values"])
    fast = loaded.image_processor(photo, resize_backend="torchvision")
    torch.testing.assert_close(fast["pixel_values"], released_tv(photo, return_tensors="pt")["pixel_values"])

    # Training still gets assistant masks (from the "training" template).
    sample = encode_conversation(
        loaded,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        budget=type("Budget", (), {"max_pixels": 8192, "max_frames": 4, "video_max_pixels": 6144})(),
        processor_kwargs={"videos_kwargs": {"video_backend": "frames"}},
    )
    assert (sample["labels"] != -100).sum() > 0


@pytest.mark.parametrize(
    ("template", "marked"),
    [
        ("{% generation %}{{ x }}{% endgeneration %}", True),
        ("{%- generation -%}{{ x }}{%- endgeneration -%}", True),
        (RELEASED_TEMPLATE, False),
        (None, False),
    ],
)
def test_assistant_marker_rule_shared_by_convert_and_training(template, marked):
    from llava_onevision2.hub_upload.convert import processor_chat_templates
    from llava_onevision2.processing.processing_llava_onevision2 import marks_assistant_turns

    assert marks_assistant_turns(template) is marked
    if template is not None:
        kept = processor_chat_templates(template)
        assert kept == template if marked else kept["default"] == template and "training" in kept


def test_convert_release_without_tokenizer_says_so_and_writes_nothing(released_folder, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (released_folder / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"{released_folder} has no tokenizer files"):
        convert_release(str(released_folder), str(tmp_path / "ours"))
    assert not (tmp_path / "ours").exists() and not list(tmp_path.glob(".ours.partial-*"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "llava_onevision2.hub_upload",
            "convert",
            "release",
            str(released_folder),
            str(tmp_path / "ours"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "has no tokenizer files" in result.stderr and not (tmp_path / "ours").exists()


# -- conversion of an encoder plus a language model -------------------------------------------------------------------


def standalone_encoder(reference, folder: Path, dtype: torch.dtype) -> None:
    """The OneVision-Encoder release layout: separate q / k / v / out projections, a pooling head, a post-norm."""
    folder.mkdir()
    state = {}
    for key, value in reference.model.visual.state_dict().items():
        if key.startswith("merger."):
            continue
        value = value.to(dtype)
        if ".self_attn.qkv." in key:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                state["vision_model." + key.replace(".qkv.", f".{name}_proj.")] = part.contiguous()
        else:
            state["vision_model." + key.replace(".self_attn.proj.", ".self_attn.out_proj.")] = value.contiguous()
    state["vision_model.head.probe"] = torch.zeros(1, 1, 64, dtype=dtype)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**reference.config.vision_config.to_dict(), "use_head": True}))


def test_encoder_plus_llm_keeps_bf16_and_writes_shards(checkpoint, tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    reference = LlavaOnevision2ForConditionalGeneration.from_pretrained(checkpoint)
    standalone_encoder(reference, tmp_path / "encoder", torch.bfloat16)
    text = reference.config.text_config.to_dict()
    llm = Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in text.items() if k != "model_type"})).to(torch.bfloat16)
    llm.save_pretrained(tmp_path / "llm")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(checkpoint / name, tmp_path / "llm" / name)

    report = convert_encoder_plus_llm(
        str(tmp_path / "encoder"), str(tmp_path / "llm"), str(tmp_path / "stage0"), max_shard_size=200_000
    )
    assert report["dtype"] == "bfloat16" and report["shards"] > 1
    index = json.loads((tmp_path / "stage0" / "model.safetensors.index.json").read_text())
    dtypes = set()
    for shard in set(index["weight_map"].values()):
        with safe_open(str(tmp_path / "stage0" / shard), framework="pt") as handle:
            dtypes |= {handle.get_slice(key).get_dtype() for key in handle.keys()}
    assert dtypes == {"BF16"}
    built = LlavaOnevision2ForConditionalGeneration.from_pretrained(tmp_path / "stage0", dtype="auto")
    assert built.dtype == torch.bfloat16
    assert torch.equal(
        built.model.visual.encoder.layers[0].self_attn.qkv.weight,
        reference.model.visual.encoder.layers[0].self_attn.qkv.weight.to(torch.bfloat16),
    )
    assert torch.equal(built.model.language_model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    merger = built.model.visual.merger.mlp[0].weight.float()
    assert merger.abs().sum() > 0 and abs(float(merger.std()) - reference.config.text_config.initializer_range) < 0.01


@pytest.mark.parametrize("layout", ["released remote code", "transformers port"])
def test_encoder_plus_llm_takes_the_language_model_of_llava_onevision_1_5(checkpoint, tmp_path, layout):
    reference = LlavaOnevision2ForConditionalGeneration.from_pretrained(checkpoint)
    standalone_encoder(reference, tmp_path / "encoder", torch.float32)
    ov15 = tmp_path / "ov15"
    ov15.mkdir()
    language = {
        k.removeprefix("model.language_model."): v for k, v in reference.state_dict().items() if "language_model" in k
    }
    if layout == "released remote code":  # visual.*, model.* (Qwen3), lm_head
        state = {f"model.{k}": v for k, v in language.items()}
        state["visual.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)  # RICE tower: left out
    else:  # model.visual.*, model.language_model.*, lm_head
        state = {f"model.language_model.{k}": v for k, v in language.items()}
        state["model.visual.merger.ln_q.weight"] = torch.zeros(3)
    state["lm_head.weight"] = reference.lm_head.weight
    save_file({k: v.contiguous() for k, v in state.items()}, str(ov15 / "model.safetensors"))
    text = reference.config.text_config.to_dict()
    (ov15 / "config.json").write_text(
        json.dumps({"model_type": "llavaonevision1_5", "text_config": text, "vision_config": {"depth": 1}})
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(checkpoint / name, ov15 / name)

    report = convert_encoder_plus_llm(str(tmp_path / "encoder"), str(ov15), str(tmp_path / "stage1"))
    assert report["dtype"] == "float32" and any("LLaVA-OneVision-1.5" in note for note in report["notes"])
    built = LlavaOnevision2ForConditionalGeneration.from_pretrained(tmp_path / "stage1")
    for key, value in reference.state_dict().items():
        if not key.startswith("model.visual.merger."):
            assert torch.equal(built.state_dict()[key], value), key


# -- model ------------------------------------------------------------------------------------------------------------


def test_moe_preset_adds_the_load_balancing_loss_like_qwen3_moe():
    from transformers import Qwen3MoeForCausalLM

    moe = dict(
        model_type="qwen3_moe",
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        output_router_logits=True,
        router_aux_loss_coef=0.5,
    )
    model = tiny_model(config=tiny_config(text=moe))
    reference = Qwen3MoeForCausalLM(model.config.text_config).eval()
    state = {
        key.replace("model.language_model.", "model."): value
        for key, value in model.state_dict().items()
        if key.startswith("model.language_model.") or key == "lm_head.weight"
    }
    reference.load_state_dict(state)
    torch.manual_seed(0)
    input_ids = torch.randint(7, 96, (2, 10))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0
    ours = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)
    theirs = reference(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)
    assert len(ours.router_logits) == 2 and ours.router_logits[0].shape == (20, 4)
    torch.testing.assert_close(ours.aux_loss, theirs.aux_loss)
    torch.testing.assert_close(ours.loss, theirs.loss)
    plain = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids, output_router_logits=False)
    assert plain.aux_loss is None and plain.router_logits is None
    torch.testing.assert_close(ours.loss - plain.loss, 0.5 * ours.aux_loss)
    with pytest.raises(ValueError, match="needs a mixture-of-experts"):
        tiny_model()(input_ids=input_ids, output_router_logits=True)


def test_vision_width_that_differs_from_the_text_width_is_an_error():
    with pytest.raises(ValueError, match=r"out_hidden_size \(32\) must equal text_config.hidden_size \(128\)"):
        tiny_config(vision={"out_hidden_size": 32})
    model = tiny_model()
    input_ids = torch.tensor([[1, 5, 5, 2]])
    embeds = model.get_input_embeddings()(input_ids)
    with pytest.raises(ValueError, match="features are 32 wide but the language model's hidden size is 128"):
        model.model.get_placeholder_mask(input_ids, embeds, "image", 2, 32)
    assert model.model.get_placeholder_mask(input_ids, embeds, "image", 2, 128).sum() == 2


# -- lmms-eval end to end --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lmms_eval_wrapper_calls_work_on_a_saved_folder(checkpoint, codec_clip):
    """The sequence of calls lmms-eval 0.7.3's `llava_onevision2` model makes, on a folder this project wrote."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(
        checkpoint, config=config, dtype=torch.float32, attn_implementation="sdpa", trust_remote_code=True
    ).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    set_budget_like_lmms_eval(processor, 8 * 8 * 4 * 4, 8 * 8 * 4 * 16)
    tokenizer = processor.tokenizer

    # Frames mode: frames as images, each after a "<t seconds>" text item; videos=None.
    frames = [PIL.Image.new("RGB", (96, 64), (40 * i, 90, 200 - 40 * i)) for i in range(4)]
    content = []
    for index, frame in enumerate(frames):
        content += [{"type": "text", "text": f"<{index * 0.5:.1f} seconds>"}, {"type": "image", "image": frame}]
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {"role": "user", "content": [*content, {"type": "text", "text": "What colour?"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=frames, videos=None, return_tensors="pt", padding=True)
    # 96 x 64 under max_pixels 4096 at patch 8 x merge 2: 48 x 64 pixels, 6 x 8 patches, 12 tokens per frame
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 8]] * 4
    assert (inputs["input_ids"] == processor.image_token_id).sum() == 4 * 12
    assert "<0.5 seconds><|vision_start|>" in text

    # Codec mode: one video path, the codec backend, max_pixels as the canvas budget, released codec names.
    codec_text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video", "video": str(codec_clip)}, {"type": "text", "text": "Go?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    codec_inputs = processor(
        text=[codec_text],
        videos=[str(codec_clip)],
        video_backend="codec",
        max_pixels=64 * 64 * 2,
        return_tensors="pt",
        padding=True,
        codec_config={**SMALL_CODEC, "patch": 8},
    )
    assert codec_inputs["image_grid_thw"].shape[0] == 1  # one merged row per video

    for batch in (inputs, codec_inputs):
        with torch.inference_mode():
            output = model.generate(
                **batch,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                max_new_tokens=4,
                num_beams=1,
                do_sample=False,
                use_cache=True,
            )
        answer = tokenizer.batch_decode(output[:, batch["input_ids"].shape[-1] :], skip_special_tokens=True)
        assert len(answer) == 1 and isinstance(answer[0], str)
