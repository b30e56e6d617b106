"""The vision-language model: inputs, placeholder filling, padding, generation, training hooks and errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from conftest import (
    IMAGE,
    MERGE,
    PAD,
    VIDEO,
    pixels_for,
    prompt,
    tiny_model,
)
from llava_onevision2.modeling import (
    LlavaOnevision2Config,
    LlavaOnevision2ForConditionalGeneration,
    LlavaOnevision2Model,
)
from llava_onevision2.modeling.vision_geometry_llava_onevision2 import block_layout_positions

IMAGE_GRID = [[1, 4, 6]]  # 6 tokens
FRAMES_GRID = [[3, 2, 4]]  # 3 frames, 6 tokens, windows of 2 + 1 frames
CODEC_GRID = [[4, 2, 4]]  # 4 canvases merged into one row, 8 tokens


def codec_positions() -> torch.Tensor:
    """Arbitrary source positions as a codec sampler produces them: t = source frame, h/w anywhere."""
    generator = torch.Generator().manual_seed(11)
    t = torch.tensor([0] * 8 + [9] * 8 + [9] * 4 + [31] * 4 + [40] * 8)
    return torch.stack([t, *torch.randint(0, 40, (2, 32), generator=generator)], dim=1)


def image_inputs(grid=IMAGE_GRID, seed=0):
    return {"pixel_values": pixels_for(grid, seed), "image_grid_thw": torch.tensor(grid)}


def video_inputs(grid=FRAMES_GRID, seed=1):
    return {"pixel_values_videos": pixels_for(grid, seed), "video_grid_thw": torch.tensor(grid)}


def ids(*segments) -> torch.Tensor:
    return torch.tensor([prompt(*segments)])


CASES = {
    "text_only": lambda: ({"input_ids": ids([7, 8, 9, 10])}),
    "one_image": lambda: {"input_ids": ids([7], ("image", 6), [8, 9]), **image_inputs()},
    "several_images": lambda: {
        "input_ids": ids([7], ("image", 6), [8], ("image", 1), ("image", 4), [9]),
        **image_inputs([[1, 4, 6], [1, 2, 2], [1, 4, 4]]),
    },
    "video_frames": lambda: {"input_ids": ids([7], ("video", 6), [8]), **video_inputs()},
    "codec_merged_grid": lambda: {
        "input_ids": ids([7], ("image", 2), [30], ("image", 2), [31], ("image", 1), ("image", 1), [32], ("image", 2)),
        **image_inputs(CODEC_GRID),
        "patch_positions": codec_positions(),
    },
    "mixed_image_video": lambda: {
        "input_ids": ids([7], ("video", 6), [8], ("image", 6), [9], ("video", 2), [10]),
        **image_inputs(),
        **video_inputs([[3, 2, 4], [2, 2, 2]]),
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_backward(case):
    model = tiny_model().train()
    inputs = CASES[case]()
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], 96)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["lm_head.weight"].abs().sum() > 0
    vision_grad = grads["model.visual.encoder.layers.0.self_attn.qkv.weight"]
    if case == "text_only":
        assert vision_grad is None
    else:
        assert vision_grad.abs().sum() > 0


def test_placeholders_filled_in_prompt_order():
    """Image features go to <|image_pad|> and video features to <|video_pad|>, each in order, interleaved freely."""
    model = tiny_model()
    inputs = CASES["mixed_image_video"]()
    with torch.no_grad():
        out = model(**inputs)
        image_feats = torch.cat(
            model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        )
        video_feats = torch.cat(
            model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"]).pooler_output
        )
        embeds = model.get_input_embeddings()(inputs["input_ids"]).clone()
        input_ids = inputs["input_ids"][0]
        embeds[0, input_ids == IMAGE] = image_feats
        embeds[0, input_ids == VIDEO] = video_feats
        manual = model(inputs_embeds=embeds)
    torch.testing.assert_close(out.logits, manual.logits)
    # Swapping the two videos' features changes the answer: order matters and is respected.
    assert not torch.allclose(video_feats[:6], torch.cat([video_feats[6:], video_feats[:4]]))


def test_image_outputs_split_per_grid_row():
    model = tiny_model()
    grid = [[1, 4, 6], [1, 2, 2], [3, 2, 4]]
    with torch.no_grad():
        features = model.get_image_features(pixels_for(grid), torch.tensor(grid)).pooler_output
    assert [f.shape[0] for f in features] == [6, 1, 6]


def test_inputs_embeds_path_matches_input_ids_path():
    model = tiny_model()
    inputs = CASES["one_image"]()
    with torch.no_grad():
        by_ids = model(**inputs).logits
        embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
        by_embeds = model(inputs_embeds=embeds, **inputs).logits
    torch.testing.assert_close(by_ids, by_embeds)


def test_derived_positions_equal_explicit_positions():
    model = tiny_model()
    grid = [[1, 4, 6], [3, 2, 4]]
    inputs = {"input_ids": ids([7], ("image", 6), ("image", 6)), **image_inputs(grid)}
    explicit = block_layout_positions(torch.tensor(grid), MERGE)
    # Spelled out for the second row: frame 1 starts after 8 patches of frame 0, in 2x2 blocks.
    assert explicit[24 + 8 : 24 + 12].tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]]
    with torch.no_grad():
        derived_logits = model(**inputs).logits
        explicit_logits = model(**inputs, patch_positions=explicit).logits
        batched_dim = model(**inputs, patch_positions=explicit[None]).logits
        shifted = model(**inputs, patch_positions=explicit + torch.tensor([5, 0, 0])).logits
    torch.testing.assert_close(derived_logits, explicit_logits)
    torch.testing.assert_close(derived_logits, batched_dim)
    assert not torch.allclose(derived_logits, shifted)


def test_eager_matches_sdpa():
    inputs = CASES["mixed_image_video"]()
    with torch.no_grad():
        eager = tiny_model("eager")(**inputs).logits
        sdpa = tiny_model("sdpa")(**inputs).logits
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)


def test_attention_implementation_per_sub_config():
    model = tiny_model({"vision_config": "eager", "text_config": "sdpa", "": "sdpa"})
    assert model.config.vision_config._attn_implementation == "eager"
    assert model.config.text_config._attn_implementation == "sdpa"


def test_flash_attention_without_package_is_a_clear_error():
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ImportError, match="flash_attn|Flash"):
        tiny_model("flash_attention_2")


# -- padding ------------------------------------------------------------------------------------------------------


def pad_batch(sequences: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), PAD)
    mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(sequences):
        span = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
        input_ids[row, span] = torch.tensor(seq)
        mask[row, span] = 1
    return input_ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_sample_alone(side):
    model = tiny_model()
    samples = [
        {"ids": prompt([7], ("image", 6), [8, 9]), **image_inputs([[1, 4, 6]], seed=0)},
        {"ids": prompt([10, 11, 12])},
        {"ids": prompt([13], ("image", 1), [14]), **image_inputs([[1, 2, 2]], seed=2)},
    ]
    input_ids, mask = pad_batch([s["ids"] for s in samples], side)
    batch_images = [s for s in samples if "pixel_values" in s]
    with torch.no_grad():
        batched = model(
            input_ids=input_ids,
            attention_mask=mask,
            pixel_values=torch.cat([s["pixel_values"] for s in batch_images]),
            image_grid_thw=torch.cat([s["image_grid_thw"] for s in batch_images]),
        ).logits
        for row, sample in enumerate(samples):
            alone = model(
                input_ids=torch.tensor([sample["ids"]]),
                pixel_values=sample.get("pixel_values"),
                image_grid_thw=sample.get("image_grid_thw"),
            ).logits[0]
            torch.testing.assert_close(batched[row][mask[row].bool()], alone, atol=1e-5, rtol=1e-5)


# -- generation ---------------------------------------------------------------------------------------------------


def count_vision_calls(model) -> list[int]:
    calls = []
    model.model.visual.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("case", ["one_image", "codec_merged_grid", "mixed_image_video"])
def test_cached_generation_equals_full_recompute(case):
    model = tiny_model()
    inputs = CASES[case]()
    calls = count_vision_calls(model)
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=PAD)
    with torch.no_grad():
        cached = model.generate(**inputs, **kwargs, output_scores=True, return_dict_in_generate=True)
    assert len(calls) == (1 if case != "mixed_image_video" else 2)  # vision runs in prefill only
    with torch.no_grad():
        recomputed = model.generate(**inputs, **kwargs, use_cache=False)
    assert torch.equal(cached.sequences, recomputed)
    # And every greedy step equals a plain forward over the whole sequence so far.
    with torch.no_grad():
        full = model(**{**inputs, "input_ids": cached.sequences[:, :-1]}).logits
    prompt_length = inputs["input_ids"].shape[1]
    steps = torch.stack(cached.scores, dim=1)[0]
    torch.testing.assert_close(steps, full[0, prompt_length - 1 :], atol=1e-5, rtol=1e-5)


def test_manual_decoding_with_past_key_values():
    """Step-by-step decoding with a full-length attention_mask and no position_ids (the upstream crash case)."""
    model = tiny_model()
    inputs = CASES["one_image"]()
    with torch.no_grad():
        out = model(**inputs, attention_mask=torch.ones_like(inputs["input_ids"]), use_cache=True)
        sequence = inputs["input_ids"]
        past = out.cache
        for _ in range(4):
            next_token = out.logits[:, -1:].argmax(-1)
            sequence = torch.cat([sequence, next_token], dim=1)
            out = model(
                input_ids=next_token, attention_mask=torch.ones_like(sequence), past_key_values=past, use_cache=True
            )
            past = out.cache
            full = model(**{**inputs, "input_ids": sequence}).logits[:, -1]
            torch.testing.assert_close(out.logits[:, -1], full, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_static_cache_decoding_matches_eager():
    """`cache_implementation="static"` + `compile_config`: decoding steps compile as one graph (fullgraph=True raises
    on any graph break) after an eager multimodal prefill, and give the eager tokens."""
    from transformers import CompileConfig

    model = tiny_model()
    inputs = CASES["several_images"]()
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=PAD)
    config = CompileConfig(fullgraph=True, dynamic=False)
    config._compile_all_devices = True  # transformers compiles on CUDA by default; this opts the CPU in
    with torch.no_grad():
        eager = model.generate(**inputs, **kwargs)
        compiled = model.generate(**inputs, **kwargs, cache_implementation="static", compile_config=config)
    assert hasattr(model, "_compiled_call")  # the decoding steps ran through torch.compile
    assert torch.equal(eager, compiled)
    assert type(model)._can_compile_fullgraph


def test_static_cache_generation_matches_dynamic():
    model = tiny_model()
    inputs = CASES["several_images"]()
    kwargs = dict(max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=PAD)
    with torch.no_grad():
        dynamic = model.generate(**inputs, **kwargs)
        static = model.generate(**inputs, **kwargs, cache_implementation="static")
    assert torch.equal(dynamic, static)


def test_beam_search_expands_visual_inputs_per_sample():
    """Two samples of equal length with different visual inputs (one a merged codec row): each sample's beams
    equal the beams it gets alone, for num_beams and num_return_sequences > 1."""
    model = tiny_model()
    first = {
        "input_ids": ids([7], ("image", 2), [30], ("image", 2), [31], ("image", 2), ("image", 2), [33]),
        **image_inputs(CODEC_GRID, seed=4),
        "patch_positions": codec_positions(),
    }
    second = {"input_ids": ids([7, 8, 9, 10, 11, 12], ("image", 6), [13, 14, 15, 16, 17, 18]), **image_inputs(seed=6)}
    assert first["input_ids"].shape == second["input_ids"].shape
    batch = {
        "input_ids": torch.cat([first["input_ids"], second["input_ids"]]),
        "pixel_values": torch.cat([first["pixel_values"], second["pixel_values"]]),
        "image_grid_thw": torch.cat([first["image_grid_thw"], second["image_grid_thw"]]),
        "patch_positions": torch.cat(
            [first["patch_positions"], block_layout_positions(second["image_grid_thw"], MERGE)]
        ),
    }
    kwargs = dict(
        max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False, eos_token_id=None, pad_token_id=PAD
    )
    with torch.no_grad():
        together = model.generate(**batch, **kwargs)
        alone = torch.cat([model.generate(**first, **kwargs), model.generate(**second, **kwargs)])
    assert together.shape[0] == 4
    assert torch.equal(together, alone)


def test_sampling_generation_runs_with_video():
    model = tiny_model()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**CASES["video_frames"](), max_new_tokens=3, do_sample=True, top_k=5, pad_token_id=PAD)
    assert out.shape[1] == CASES["video_frames"]()["input_ids"].shape[1] + 3


def test_logits_to_keep():
    model = tiny_model()
    inputs = CASES["one_image"]()
    with torch.no_grad():
        full = model(**inputs).logits
        last = model(**inputs, logits_to_keep=1).logits
    assert last.shape[1] == 1
    torch.testing.assert_close(last[:, 0], full[:, -1])


# -- training hooks -----------------------------------------------------------------------------------------------


def test_loss_ignores_minus_100_and_uses_num_items_in_batch():
    model = tiny_model()
    inputs = CASES["one_image"]()
    labels = inputs["input_ids"].clone()
    labels[:, :10] = -100
    with torch.no_grad():
        out = model(**inputs, labels=labels)
        logits = out.logits[0, :-1]
        targets = labels[0, 1:]
        kept = targets != -100
        token_losses = torch.nn.functional.cross_entropy(logits[kept], targets[kept], reduction="none")
        torch.testing.assert_close(out.loss, token_losses.mean())
        summed = model(**inputs, labels=labels, num_items_in_batch=torch.tensor(20)).loss
        torch.testing.assert_close(summed, token_losses.sum() / 20)
    assert LlavaOnevision2ForConditionalGeneration.accepts_loss_kwargs is True


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs = CASES["mixed_image_video"]()

    def gradients(checkpointing: bool):
        model = tiny_model().train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)
    model = tiny_model()
    model.activation_checkpointing_enable()
    assert model.model.visual.encoder.layers[0].gradient_checkpointing
    assert model.model.language_model.layers[0].gradient_checkpointing


def test_no_split_modules_name_both_towers():
    model = tiny_model()
    assert set(model._no_split_modules) == {"LlavaOnevision2VisionEncoderLayer", "Qwen3DecoderLayer"}


# -- persistence and layout ---------------------------------------------------------------------------------------


def release_key_names(config: LlavaOnevision2Config) -> set[str]:
    """State-dict keys of the released layout, written from the checkpoint description."""
    keys = {"lm_head.weight", "model.language_model.embed_tokens.weight", "model.language_model.norm.weight"}
    v = "model.visual."
    keys |= {v + "embeddings.patch_embedding.weight", v + "layernorm_pre.weight", v + "layernorm_pre.bias"}
    keys |= {v + f"merger.{n}.{p}" for n in ("ln_q", "mlp.0", "mlp.2") for p in ("weight", "bias")}
    for i in range(config.vision_config.num_hidden_layers):
        for module in ("layer_norm1", "layer_norm2", "self_attn.qkv", "self_attn.proj", "mlp.fc1", "mlp.fc2"):
            keys |= {f"{v}encoder.layers.{i}.{module}.weight", f"{v}encoder.layers.{i}.{module}.bias"}
    for i in range(config.text_config.num_hidden_layers):
        t = f"model.language_model.layers.{i}."
        keys |= {t + f"self_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")}
        keys |= {t + f"mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")}
        keys |= {t + "input_layernorm.weight", t + "post_attention_layernorm.weight"}
    return keys


def test_state_dict_is_the_release_layout():
    model = tiny_model()
    assert set(model.state_dict()) == release_key_names(model.config)


def test_save_and_load_roundtrip(tmp_path):
    model = tiny_model()
    inputs = CASES["mixed_image_video"]()
    model.save_pretrained(tmp_path)
    loaded, info = LlavaOnevision2ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, loaded.eval()(**inputs).logits)
    base, info = LlavaOnevision2Model.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_auto_classes_resolve_registered_model(tmp_path):
    AutoConfig.register("llava_onevision2", LlavaOnevision2Config, exist_ok=True)
    AutoModel.register(LlavaOnevision2Config, LlavaOnevision2Model, exist_ok=True)
    AutoModelForImageTextToText.register(LlavaOnevision2Config, LlavaOnevision2ForConditionalGeneration, exist_ok=True)
    tiny_model().save_pretrained(tmp_path)
    assert isinstance(AutoModelForImageTextToText.from_pretrained(tmp_path), LlavaOnevision2ForConditionalGeneration)
    assert isinstance(AutoModel.from_pretrained(tmp_path), LlavaOnevision2Model)


def test_bfloat16_model_runs_and_keeps_rotary_in_float32():
    model = tiny_model().to(torch.bfloat16)
    inputs = CASES["codec_merged_grid"]()
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        bf16 = model(**inputs).logits.float()
        fp32 = tiny_model()(**CASES["codec_merged_grid"]()).logits
    assert torch.isfinite(bf16).all()
    assert (bf16 - fp32).abs().max() < 0.1


# -- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda i: {**i, "input_ids": i["input_ids"][:, :-5]},
            "Image features and image tokens do not match: the prompt holds 4",
        ),
        (
            lambda i: {**i, "pixel_values": i["pixel_values"][:-4]},
            "`pixel_values` has 20 rows but `image_grid_thw` describes 24",
        ),
        (
            lambda i: {**i, "patch_positions": torch.zeros(23, 3, dtype=torch.long)},
            "`patch_positions` has 23 rows but there are 24",
        ),
        (lambda i: {**i, "pixel_values": i["pixel_values"].view(1, 24, -1)}, "must be 2-D"),
        (lambda i: {**i, "image_grid_thw": torch.tensor([1, 4, 6])}, r"must have shape \[num_rows, 3\]"),
        (lambda i: {**i, "image_grid_thw": torch.tensor([[1, 3, 8]])}, "multiples of spatial_merge_size=2"),
        (lambda i: {**i, "image_grid_thw": None}, "`image_grid_thw` is required"),
    ],
)
def test_bad_inputs_raise_errors_with_numbers(change, message):
    model = tiny_model()
    inputs = {"input_ids": ids([7], ("image", 6), [8, 9]), **image_inputs()}
    with pytest.raises(ValueError, match=message):
        model(**change(inputs))


def test_video_errors_name_video_inputs():
    model = tiny_model()
    inputs = {"input_ids": ids([7], ("video", 5)), **video_inputs()}
    with pytest.raises(ValueError, match="Video features and video tokens do not match: the prompt holds 5"):
        model(**inputs)
    inputs = {"input_ids": ids([7], ("video", 6)), **video_inputs(), "video_patch_positions": torch.zeros(5, 3)}
    with pytest.raises(ValueError, match="`video_patch_positions` has 5 rows"):
        model(**inputs)


def test_exactly_one_of_ids_or_embeds():
    with pytest.raises(ValueError, match="exactly one of"):
        tiny_model()(input_ids=None)


def test_text_only_training_batches_still_run_the_tower_under_distribution(monkeypatch):
    """Under FSDP/DDP every rank must run the vision tower each step; a text-only batch runs it on a blank block
    whose contribution is exactly zero."""
    model = tiny_model().train()
    inputs = CASES["text_only"]()
    plain = model(**inputs, labels=inputs["input_ids"])
    monkeypatch.setattr(type(model.model), "_ranks_must_run_the_tower", lambda self: True)
    calls = count_vision_calls(model)
    kept = model(**inputs, labels=inputs["input_ids"])
    assert len(calls) == 1
    torch.testing.assert_close(kept.logits, plain.logits)
    kept.loss.backward()
    grad = model.model.visual.encoder.layers[0].self_attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() == 0
