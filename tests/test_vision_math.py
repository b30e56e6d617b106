"""The vision tower against a reference written here from the specification, not from the model's helpers.

Spec (the released vision tower; README "Fidelity to the release"): block-layout index formula, windows of
`frame_windows_size` frames per grid row, 4:6:6 split of half the head dim with per-axis exponent denominators,
half-concatenated table with interleaved pair rotation, fp32 rotary maths, pre-norm layers, LayerNorm + two-layer GELU
merger over s*s consecutive rows.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import MERGE, PATCH, pixels_for, tiny_config, tiny_model
from llava_onevision2.modeling import LlavaOnevision2VisionModel
from llava_onevision2.modeling.vision_geometry_llava_onevision2 import (
    AttentionWindows,
    attention_window_lengths,
    block_layout_positions,
)

# -- reference helpers (spec, written independently) --------------------------------------------------------------


def reference_block_positions(grid: list[list[int]], s: int) -> torch.Tensor:
    rows = []
    for t, h, w in grid:
        out = torch.empty(t * h * w, 3, dtype=torch.long)
        wm = w // s
        for tt in range(t):
            for r in range(h):
                for c in range(w):
                    index = tt * h * w + ((r // s) * wm + (c // s)) * s * s + (r % s) * s + (c % s)
                    out[index] = torch.tensor([tt, r, c])
        rows.append(out)
    return torch.cat(rows)


def reference_window_ids(grid: list[list[int]], fws: int) -> torch.Tensor:
    """Window id of every patch: row r, frame f -> (r, f // fws) if t > fws else (r, 0)."""
    ids, next_id = [], 0
    for t, h, w in grid:
        for frame in range(t):
            local = frame // fws if t > fws else 0
            ids += [next_id + local] * (h * w)
        next_id += (t + fws - 1) // fws if t > fws else 1
    return torch.tensor(ids)


def reference_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    half = head_dim // 2
    unit = half // 16
    per_axis = [4 * unit, 6 * unit, 6 * unit]
    rows = []
    for t, h, w in positions.tolist():
        f = []
        for value, n in zip((t, h, w), per_axis):
            f += [value * theta ** (-j / n) for j in range(n)]
        rows.append(f + f)
    return torch.tensor(rows, dtype=torch.float64)


def reference_rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x: [N, heads, d]. Pair (2i, 2i+1) uses angle F[2i] for the first member and F[2i+1] for the second."""
    out = torch.empty_like(x, dtype=torch.float64)
    x = x.double()
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out[..., 0::2] = a * cos[..., 0::2] - b * sin[..., 0::2]
    out[..., 1::2] = b * cos[..., 1::2] + a * sin[..., 1::2]
    return out


def reference_tower(model: LlavaOnevision2VisionModel, pixels, grid, positions) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole tower in float64 from the spec, using the model's weights only."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    eps = cfg.layer_norm_eps

    def ln(x, prefix):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)

    def linear(x, prefix):
        return x @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]

    images = pixels.double().view(-1, cfg.num_channels, cfg.patch_size, cfg.patch_size)
    x = torch.nn.functional.conv2d(images, sd["embeddings.patch_embedding.weight"], stride=cfg.patch_size).flatten(1)
    x = ln(x, "layernorm_pre")
    angles = reference_angles(positions, d, cfg.rope_theta)
    window = reference_window_ids(grid, cfg.frame_windows_size)
    blocked = window[:, None] != window[None, :]
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layers.{i}"
        y = ln(x, p + ".layer_norm1")
        qkv = linear(y, p + ".self_attn.qkv")
        q, k, v = (
            qkv[:, : cfg.hidden_size],
            qkv[:, cfg.hidden_size : 2 * cfg.hidden_size],
            qkv[:, 2 * cfg.hidden_size :],
        )
        q, k, v = (z.reshape(-1, heads, d) for z in (q, k, v))
        q, k = reference_rotate(q, angles), reference_rotate(k, angles)
        scores = torch.einsum("nhd,mhd->hnm", q, k) / math.sqrt(d)
        scores = scores.masked_fill(blocked, float("-inf")).softmax(-1)
        attn = torch.einsum("hnm,mhd->nhd", scores, v).reshape(-1, cfg.hidden_size)
        x = x + linear(attn, p + ".self_attn.proj")
        y = ln(x, p + ".layer_norm2")
        x = x + linear(torch.nn.functional.gelu(linear(y, p + ".mlp.fc1")), p + ".mlp.fc2")
    merged = ln(x, "merger.ln_q").reshape(-1, cfg.hidden_size * cfg.spatial_merge_size**2)
    merged = linear(torch.nn.functional.gelu(linear(merged, "merger.mlp.0")), "merger.mlp.2")
    return x, merged


# -- tests -------------------------------------------------------------------------------------------------------

GRIDS = [
    [[1, 4, 6]],  # one image
    [[1, 2, 2], [1, 6, 4], [1, 4, 4]],  # several images of different sizes
    [[5, 2, 4]],  # five frames, windows of 2 -> 2, 2, 1
    [[1, 4, 4], [3, 2, 2], [2, 2, 6]],  # mixed rows
]


@pytest.mark.parametrize("grid", GRIDS)
def test_block_layout_positions_match_index_formula(grid):
    assert torch.equal(block_layout_positions(torch.tensor(grid), MERGE), reference_block_positions(grid, MERGE))


def test_block_layout_positions_merge_three():
    grid = [[2, 6, 9], [1, 3, 3]]
    assert torch.equal(block_layout_positions(torch.tensor(grid), 3), reference_block_positions(grid, 3))


def test_block_layout_worked_example():
    first = block_layout_positions(torch.tensor([[1, 4, 4]]), 2)[:9, 1:].tolist()
    assert first == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 0]]


@pytest.mark.parametrize(
    ("grid", "fws", "expected"),
    [
        ([[1, 4, 4], [10, 2, 2]], 4, [16, 16, 16, 8]),
        ([[4, 2, 2]], 4, [16]),
        ([[8, 2, 2]], 4, [16, 16]),
        ([[3, 2, 2], [1, 2, 4]], 4, [12, 8]),
        ([[5, 2, 2]], 0, [20]),
    ],
)
def test_window_lengths(grid, fws, expected):
    assert attention_window_lengths(torch.tensor(grid), fws) == expected


def test_windows_group_by_length_and_restore_order():
    windows = AttentionWindows.from_lengths([16, 8, 8, 4, 16], device=torch.device("cpu"))
    assert windows.cu_seqlens.tolist() == [0, 16, 24, 32, 36, 52]
    assert windows.max_length == 16
    assert {length: index.shape[0] for length, index in windows.groups} == {16: 2, 8: 2, 4: 1}
    gathered = torch.cat([index.reshape(-1) for _, index in windows.groups])
    assert torch.equal(gathered[windows.restore_order], torch.arange(52))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("grid", GRIDS)
def test_tower_matches_spec_reference(attn, grid):
    model = tiny_model(attn, cls=LlavaOnevision2VisionModel, config=tiny_config().vision_config)
    pixels = pixels_for(grid)
    positions = reference_block_positions(grid, MERGE)
    with torch.no_grad():
        out = model(pixels, torch.tensor(grid))
    hidden, merged = reference_tower(model, pixels, grid, positions)
    torch.testing.assert_close(out.last_hidden_state.double(), hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooler_output.double(), merged, atol=1e-5, rtol=1e-5)


def test_codec_positions_match_reference():
    """A merged codec-style grid row with arbitrary (t, h, w): positions drive RoPE, the grid drives windows."""
    grid = [[4, 2, 4]]
    generator = torch.Generator().manual_seed(3)
    positions = torch.stack(
        [
            torch.tensor([0] * 8 + [17] * 4 + [23] * 4 + [40] * 8 + [55] * 8),
            torch.randint(0, 30, (32,), generator=generator),
            torch.randint(0, 30, (32,), generator=generator),
        ],
        dim=1,
    )
    model = tiny_model("eager", cls=LlavaOnevision2VisionModel, config=tiny_config().vision_config)
    pixels = pixels_for(grid, seed=5)
    with torch.no_grad():
        out = model(pixels, torch.tensor(grid), patch_positions=positions)
    _, merged = reference_tower(model, pixels, grid, positions)
    torch.testing.assert_close(out.pooler_output.double(), merged, atol=1e-5, rtol=1e-5)


def test_rotation_is_not_norm_preserving_like_the_release():
    """The released rotation pairs channels with different angles, so it changes vector norms; a 'fixed' rotation
    would not. Guards against someone replacing it with rotate_half or a GPT-J rotation."""
    from llava_onevision2.modeling.vision_geometry_llava_onevision2 import (
        rotate_with_tables,
        vision_rotary_angles,
        vision_rotary_tables,
    )

    positions = torch.tensor([[3, 5, 7]])
    angles = vision_rotary_angles(positions, 64, 10000.0)
    x = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(0))
    rotated = rotate_with_tables(x, *vision_rotary_tables(angles))
    assert not torch.allclose(rotated.norm(), x.norm(), rtol=1e-3)
    torch.testing.assert_close(rotated.double(), reference_rotate(x, reference_angles(positions, 64, 10000.0)))


def float32_rotation(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """The rotation as the release computes it: upcast, x * cos + rotate(x) * sin with (a, b) -> (-b, a), cast back."""
    x32 = x.float()
    cos, sin = angles.cos()[:, None, None, :], angles.sin()[:, None, None, :]
    pairs = x32.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (x32 * cos + rotated * sin).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rotary_is_bit_exact_to_the_float32_rotation_with_and_without_gradients(dtype):
    """The pair-signed table, the promotion without an upcast copy and the joint query/key pass change no bit of
    the output, and (with gradients) none of the input gradient."""
    from llava_onevision2.modeling.vision_geometry_llava_onevision2 import rotate_with_tables, vision_rotary_tables

    generator = torch.Generator().manual_seed(3)
    angles = torch.randn(300, 64, generator=generator) * 40
    qkv = torch.randn(300, 3, 4, 64, generator=generator).to(dtype)  # q, k, v as the fused projection lays them out
    tables = vision_rotary_tables(angles)
    with torch.no_grad():
        assert torch.equal(rotate_with_tables(qkv[:, :2], *tables), float32_rotation(qkv[:, :2], angles))

    upstream = torch.randn(300, 3, 4, 64, generator=generator).to(dtype)
    gradients = []
    for rotation in (lambda x: rotate_with_tables(x, *tables), lambda x: float32_rotation(x, angles)):
        leaf = upstream.clone().requires_grad_()
        out = rotation(leaf[:, :2])
        gradients.append((out, torch.autograd.grad(out, leaf, torch.ones_like(out) * 0.37 + out.detach())[0]))
    (ours, our_grad), (reference, reference_grad) = gradients
    assert torch.equal(ours, reference)
    assert torch.equal(our_grad, reference_grad)


def test_attention_runs_one_batched_call_per_window_length(monkeypatch):
    """Windows of equal length share one call; no call ever sees the whole N x N sequence."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def recording_sdpa(module, query, key, value, *args, **kwargs):
        calls.append(tuple(query.shape))
        return sdpa(module, query, key, value, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", recording_sdpa)
    model = tiny_model("sdpa", cls=LlavaOnevision2VisionModel, config=tiny_config().vision_config)
    grid = [[1, 4, 4], [5, 2, 4], [1, 4, 4]]  # windows: 16 | 16, 16, 8 | 16
    with torch.no_grad():
        model(pixels_for(grid), torch.tensor(grid))
    per_layer = calls[: len(calls) // model.config.num_hidden_layers]
    assert sorted(per_layer) == sorted([(4, 2, 16, 32), (1, 2, 8, 32)])


def test_rotary_stays_float32_after_bfloat16_cast():
    model = tiny_model("eager", cls=LlavaOnevision2VisionModel, config=tiny_config().vision_config)
    model = model.to(torch.bfloat16)
    assert not any(buffer.is_floating_point() for buffer in model.buffers())
    seen = []
    layer = model.encoder.layers[0]
    layer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["rotary_cos"]), with_kwargs=True)
    grid = [[1, 4, 4]]
    with torch.no_grad():
        out = model(pixels_for(grid).to(torch.bfloat16), torch.tensor(grid))
    assert out.pooler_output.dtype == torch.bfloat16
    assert seen[0].dtype == torch.float32
    expected = reference_angles(reference_block_positions(grid, MERGE), 32, 10000.0).cos()
    torch.testing.assert_close(seen[0].double(), expected, atol=1e-6, rtol=0)


def test_patch_embedding_equals_convolution():
    model = tiny_model("eager", cls=LlavaOnevision2VisionModel, config=tiny_config().vision_config)
    pixels = pixels_for([[1, 2, 2]])
    conv = model.embeddings.patch_embedding(pixels.view(-1, 3, PATCH, PATCH)).flatten(1)
    torch.testing.assert_close(model.embeddings(pixels), conv)


def test_flash_path_makes_one_varlen_call_with_window_boundaries(monkeypatch):
    """The flash-attention branch (GPU kernel not available here) is driven through a CPU varlen reference with the
    same calling convention: one call per layer, window boundaries in `cu_seq_lens_*`, same result as sdpa."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    calls = []

    def varlen_reference(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        assert attention_mask is None and kwargs["is_causal"] is False
        bounds = kwargs["cu_seq_lens_q"].tolist()
        assert bounds == kwargs["cu_seq_lens_k"].tolist()
        calls.append((tuple(query.shape), bounds, kwargs["max_length_q"]))
        outputs = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            q, k, v = (x[:, :, start:end] for x in (query, key, value))
            outputs.append(torch.softmax(q @ k.transpose(-1, -2) * scaling, dim=-1) @ v)
        return torch.cat(outputs, dim=2).transpose(1, 2), None

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", varlen_reference)
    grid = [[1, 4, 4], [5, 2, 4], [1, 2, 2]]
    model = tiny_model("sdpa", cls=LlavaOnevision2VisionModel, config=tiny_config().vision_config)
    pixels = pixels_for(grid)
    with torch.no_grad():
        expected = model(pixels, torch.tensor(grid)).pooler_output
        model.config._attn_implementation = "flash_attention_2"
        flash = model(pixels, torch.tensor(grid)).pooler_output
    torch.testing.assert_close(flash, expected, atol=1e-5, rtol=1e-5)
    assert len(calls) == model.config.num_hidden_layers
    assert calls[0] == ((1, 2, 60, 32), [0, 16, 32, 48, 56, 60], 16)
