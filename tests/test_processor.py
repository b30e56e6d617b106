"""The multimodal processor: chat template, placeholder expansion, batching, persistence, and the model on its output."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from synthetic_media import encode_video, solid_image, synthetic_frame
from transformers import AutoProcessor

from conftest import tiny_config, tiny_tokenizer
from llava_onevision2.modeling import LlavaOnevision2ForConditionalGeneration
from llava_onevision2.processing.image_processing_llava_onevision2 import LlavaOnevision2ImageProcessor
from llava_onevision2.processing.processing_llava_onevision2 import LlavaOnevision2Processor
from llava_onevision2.processing.video_processing_llava_onevision2 import LlavaOnevision2VideoProcessor
from llava_onevision2.processing.vision_layout_llava_onevision2 import merged_token_count

PATCH = 4  # the tiny model's patch size


@pytest.fixture(scope="module")
def processor():
    return make_processor()


def make_processor(**video_settings):
    budget = dict(patch_size=PATCH, merge_size=2, min_pixels=8 * 8 * 4, max_pixels=8 * 8 * 12)
    return LlavaOnevision2Processor(
        image_processor=LlavaOnevision2ImageProcessor(**budget),
        tokenizer=tiny_tokenizer(),
        video_processor=LlavaOnevision2VideoProcessor(**budget, **{"max_frames": 4, **video_settings}),
    )


def count(ids, token_id):
    return int((torch.as_tensor(ids) == token_id).sum())


def conversation(*content, answer=None):
    messages = [{"role": "user", "content": list(content)}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def test_token_ids_come_from_the_tokenizer(processor):
    tokenizer = processor.tokenizer
    assert processor.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert processor.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert processor.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")


def test_chat_template_text(processor):
    text = processor.apply_chat_template(
        conversation({"type": "image"}, {"type": "text", "text": "Describe"}, {"type": "video"}, answer="A square."),
        tokenize=False,
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe<|video_pad|><|im_end|>\n"
        "<|im_start|>assistant\nA square.<|im_end|>\n"
    )
    prompt = processor.apply_chat_template(
        conversation({"type": "text", "text": "Hi"}), add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    with_system = [{"role": "system", "content": "Be brief."}, *conversation({"type": "text", "text": "Hi"})]
    assert processor.apply_chat_template(with_system, tokenize=False).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>"
    )


def test_image_and_video_expansion_and_counts(processor):
    image = solid_image(40, 24)
    frames = [PIL.Image.fromarray(synthetic_frame(i)) for i in range(6)]
    out = processor.apply_chat_template(
        conversation(
            {"type": "video", "video": frames}, {"type": "text", "text": "and"}, {"type": "image", "image": image}
        ),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    ids = out["input_ids"][0]
    image_tokens = merged_token_count(out["image_grid_thw"][0], 2)
    video_tokens = sum(merged_token_count(row, 2) for row in out["video_grid_thw"])
    assert count(ids, processor.image_token_id) == image_tokens == out["pixel_values"].shape[0] // 4
    assert count(ids, processor.video_token_id) == video_tokens == out["pixel_values_videos"].shape[0] // 4
    text = processor.decode(ids)
    # Order kept: video blocks first, then the image; one timestamped block per sampled frame, no newline between.
    assert text.index("<0.0 seconds>") < text.index("<|image_pad|>")
    assert text.count("<|vision_start|>") == 1 + len(out["video_grid_thw"])
    assert "<|vision_end|><1.0 seconds>" in text or "<|vision_end|><2.0 seconds>" in text


def test_training_format_puts_a_newline_after_each_frame():
    processor = make_processor(video_format="training", pad_to_even_frames=False)
    out = processor(text="<|video_pad|>", videos=[encode_video(num_frames=30, rate=10)], return_tensors="pt")
    text = processor.decode(out["input_ids"][0])
    assert out["video_grid_thw"].shape == (1, 3)
    frames = int(out["video_grid_thw"][0, 0])
    assert text.count("<|vision_end|>\n") == frames == text.count(" seconds>")
    assert count(out["input_ids"], processor.video_token_id) == merged_token_count(out["video_grid_thw"][0], 2)


def test_upstream_wrapped_video_placeholder_is_accepted(processor):
    wrapped = processor(
        text="Look <|vision_start|><|video_pad|><|vision_end|> now",
        videos=[np.stack([synthetic_frame(i) for i in range(4)])],
    )
    bare = processor(text="Look <|video_pad|> now", videos=[np.stack([synthetic_frame(i) for i in range(4)])])
    assert wrapped["input_ids"] == bare["input_ids"]


def test_media_placeholder_mismatch_is_an_error(processor):
    image = solid_image(40, 24)
    with pytest.raises(ValueError, match="Found total 2 <\\|image_pad\\|> tokens and 1 images"):
        processor(text="<|image_pad|> and <|image_pad|>", images=[image])
    with pytest.raises(ValueError, match="Found 1 <\\|video_pad\\|> tokens in the text but no videos"):
        processor(text="<|video_pad|>")


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_with_padding_and_model_logits(side):
    processor = make_processor()
    processor.tokenizer.padding_side = side
    conversations = [
        conversation({"type": "image", "image": solid_image(40, 24)}, {"type": "text", "text": "What is this?"}),
        conversation({"type": "text", "text": "Hello"}),
        conversation({"type": "video", "video": [PIL.Image.fromarray(synthetic_frame(i)) for i in range(4)]}),
    ]
    batch = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True
    )
    mask = batch["attention_mask"]
    pad_column = 0 if side == "left" else -1
    assert mask[1, pad_column] == 0 and mask.sum(1).tolist()[0] > mask.sum(1).tolist()[1]
    model = tiny_model_for(processor)
    with torch.no_grad():
        batched = model(**batch).logits
        for row, single in enumerate(conversations):
            alone = processor.apply_chat_template(
                single, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
            logits = model(**alone).logits[0]
            torch.testing.assert_close(batched[row][mask[row].bool()], logits, atol=1e-5, rtol=1e-5)


def tiny_model_for(processor):
    tokenizer = processor.tokenizer
    config = tiny_config(
        text={
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        image_token_id=processor.image_token_id,
        video_token_id=processor.video_token_id,
        vision_start_token_id=processor.vision_start_token_id,
        vision_end_token_id=processor.vision_end_token_id,
    )
    torch.manual_seed(0)
    return LlavaOnevision2ForConditionalGeneration._from_config(config).eval()


def test_end_to_end_generate_and_decode(processor, tmp_path):
    video_path = tmp_path / "clip.mp4"
    video_path.write_bytes(encode_video(num_frames=40, rate=10))
    inputs = processor.apply_chat_template(
        conversation(
            {"type": "image", "image": solid_image(40, 24)},
            {"type": "video", "path": str(video_path)},
            {"type": "text", "text": "What moves?"},
        ),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    model = tiny_model_for(processor)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new_tokens = generated[:, inputs["input_ids"].shape[1] :]
    assert new_tokens.shape == (1, 5)
    texts = processor.post_process_image_text_to_text(new_tokens)
    assert texts == processor.batch_decode(new_tokens, skip_special_tokens=True)


def test_assistant_mask_covers_answer_and_im_end(processor):
    out = processor.apply_chat_template(
        conversation(
            {"type": "image", "image": solid_image(40, 24)},
            {"type": "text", "text": "Name it"},
            answer="A red square.",
        ),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
    )
    answer = out["input_ids"][0][out["assistant_masks"][0].bool()]
    assert processor.decode(answer) == "A red square.<|im_end|>"


def test_save_and_load_with_auto_processor(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    saved = set(os.listdir(tmp_path))
    assert {"processor_config.json", "chat_template.jinja", "processing_llava_onevision2.py"} <= saved
    assert "vision_layout_llava_onevision2.py" in saved and "video_decoding_llava_onevision2.py" in saved
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "LlavaOnevision2Processor"
    assert loaded.image_processor.patch_size == PATCH and loaded.video_processor.max_frames == 4
    frames = np.stack([synthetic_frame(i) for i in range(4)])
    a = processor(
        text="<|video_pad|><|image_pad|>", videos=[frames], images=[solid_image(40, 24)], return_tensors="pt"
    )
    b = loaded(text="<|video_pad|><|image_pad|>", videos=[frames], images=[solid_image(40, 24)], return_tensors="pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_processing_files_never_import_modeling():
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "processing"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{path.name}: multi-dot import"
                assert not (node.module or "").startswith(("llava_onevision2", "modeling")), (
                    f"{path.name}: {node.module}"
                )
    modeling = {p.name for p in (folder.parent / "modeling").glob("*.py")} - {"__init__.py"}
    assert not modeling & {p.name for p in folder.glob("*.py")}, "basenames must be unique across both folders"


@pytest.mark.slow
def test_processor_loads_in_a_fresh_process(processor, tmp_path):
    processor.save_pretrained(tmp_path / "proc")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path = [p for p in sys.path if p not in ("", ".")]
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(tmp_path / "proc")!r}, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        out = processor(text="<|image_pad|>", images=[__import__("PIL.Image").Image.new("RGB", (40, 24))])
        print("ok", len(out["input_ids"][0]))
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")
