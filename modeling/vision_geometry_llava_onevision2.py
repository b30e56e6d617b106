"""Index maths of the OneVision-Encoder: patch order, attention windows and the 3-D (t, h, w) rotary table.

Pure functions on tensors and shapes; the model calls them once per forward and shares the results across layers.

Terms:
- grid row: one `(t, h, w)` entry of `image_grid_thw` / `video_grid_thw`, in patch units. `t` counts frames (or codec
  canvases) that share one `h x w` size.
- block layout: the order of pixel rows inside a grid row. Each `s x s` group of neighbouring patches (s = spatial
  merge size) is stored contiguously, so the merger can fold `s*s` consecutive rows into one token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def block_layout_positions(grid_thw: torch.Tensor, spatial_merge_size: int) -> torch.Tensor:
    """(t, h, w) position of every patch, in block layout, for all grid rows concatenated.

    `t` is the frame index inside its grid row (so 0 for images), `h` / `w` the patch row / column.

    Args:
        grid_thw: `(num_rows, 3)` integer tensor.
        spatial_merge_size: `s`; `h` and `w` of every row must be multiples of it.

    Returns:
        `(sum(t*h*w), 3)` int64 tensor on `grid_thw.device`.

    Example (t=1, h=w=4, s=2): (0,0,0) (0,0,1) (0,1,0) (0,1,1) (0,0,2) (0,0,3) (0,1,2) (0,1,3) (0,2,0) ...
    """
    s = spatial_merge_size
    rows = []
    for t, h, w in grid_thw.tolist():
        tt, hh, ww = torch.meshgrid(
            torch.arange(t, device=grid_thw.device),
            torch.arange(h, device=grid_thw.device),
            torch.arange(w, device=grid_thw.device),
            indexing="ij",
        )
        raster = torch.stack([tt, hh, ww], dim=-1)  # [t, h, w, 3]
        blocks = raster.view(t, h // s, s, w // s, s, 3).permute(0, 1, 3, 2, 4, 5)  # [t, h/s, w/s, s, s, 3]
        rows.append(blocks.reshape(-1, 3))
    if not rows:
        return torch.zeros(0, 3, dtype=torch.long, device=grid_thw.device)
    return torch.cat(rows)


def attention_window_lengths(grid_thw: torch.Tensor, frames_per_window: int) -> list[int]:
    """Length (in patches) of each attention window, in sequence order.

    Each grid row is cut into windows of `frames_per_window` consecutive frames (the last one may be shorter).
    Windows never span two rows. `frames_per_window <= 0` makes every row a single window.

    Example: rows [[1, 4, 4], [10, 2, 2]] with 4 frames per window -> [16, 16, 16, 8].
    """
    lengths = []
    for t, h, w in grid_thw.tolist():
        per_frame = h * w
        step = frames_per_window if frames_per_window > 0 else t
        for start in range(0, t, step):
            lengths.append(min(step, t - start) * per_frame)
    return lengths


@dataclass
class AttentionWindows:
    """How the patch sequence splits into windows of full attention.

    Attributes:
        cu_seqlens: `(num_windows + 1,)` int32 cumulative window boundaries (for varlen kernels).
        max_length: longest window, in patches.
        groups: one entry per distinct window length, `(length, index)`; `index` is a `(num_windows_of_that_length,
            length)` tensor of sequence positions, or `None` when a single length tiles the whole sequence in order.
            Windows of one length run as one batched attention call.
        restore_order: with several groups, the permutation that puts the concatenated group outputs back into
            sequence order; `None` otherwise.
    """

    cu_seqlens: torch.Tensor
    max_length: int
    groups: list[tuple[int, torch.Tensor | None]]
    restore_order: torch.Tensor | None = None

    @classmethod
    def from_lengths(cls, lengths: list[int], device: torch.device) -> AttentionWindows:
        starts = [0]
        for length in lengths[:-1]:
            starts.append(starts[-1] + length)
        cu_seqlens = torch.tensor([*starts, starts[-1] + lengths[-1]] if lengths else [0], dtype=torch.int32)
        starts_by_length: dict[int, list[int]] = {}
        for start, length in zip(starts, lengths):
            starts_by_length.setdefault(length, []).append(start)
        cu_seqlens = cu_seqlens.to(device)
        max_length = max(lengths, default=0)
        if len(starts_by_length) <= 1:
            return cls(
                cu_seqlens=cu_seqlens, max_length=max_length, groups=[(length, None) for length in starts_by_length]
            )
        groups = [
            (length, torch.tensor(group_starts, device=device)[:, None] + torch.arange(length, device=device))
            for length, group_starts in starts_by_length.items()
        ]
        gathered_order = torch.cat([index.reshape(-1) for _, index in groups])
        return cls(cu_seqlens, max_length, groups, restore_order=torch.argsort(gathered_order))


def rotary_axis_sizes(head_dim: int) -> tuple[int, int, int]:
    """Frequencies per axis (t, h, w): half the head dim split 4:6:6. For head_dim 64: (8, 12, 12)."""
    unit = head_dim // 2 // 16
    return 4 * unit, 6 * unit, 6 * unit


def vision_rotary_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Rotary angles of every patch, always computed in float32.

    Each axis `a` gets its own inverse frequencies `1 / theta ** (j / n_a)`, j < n_a (the exponent is divided by that
    axis' own size). The per-patch angles `[t*inv_t, h*inv_h, w*inv_w]` fill half the head dim and are repeated
    once to cover all of it.

    Args:
        positions: `(N, 3)` integer (t, h, w) per patch.
    Returns:
        `(N, head_dim)` float32 angles.
    """
    device = positions.device
    parts = []
    for axis, size in enumerate(rotary_axis_sizes(head_dim)):
        inv_freq = 1.0 / (theta ** (torch.arange(size, dtype=torch.float32, device=device) / size))
        parts.append(positions[:, axis, None].to(torch.float32) * inv_freq)
    half = torch.cat(parts, dim=-1)
    return torch.cat([half, half], dim=-1)


def swap_pairs(x: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (b, a) for each pair of adjacent channels."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def vision_rotary_tables(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-patch tables `rotate_with_tables` takes: `cos(angles)` and a pair-signed `sin(angles)`.

    The released rotation maps each channel pair (a, b) to (a*cos - b*sin, b*cos + a*sin), with the angles of the
    pair's own two channels. Negating `sin` on the first channel of every pair turns that into
    `x * cos + swap_pairs(x) * signed_sin`: no negation pass per layer, and the same float32 numbers bit for bit
    (a sign flip is exact). Built once per forward and shared by every layer.
    """
    signs = angles.new_tensor([-1.0, 1.0])
    signed_sin = (angles.sin().unflatten(-1, (-1, 2)) * signs).flatten(-2)
    return angles.cos(), signed_sin


def rotate_with_tables(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Apply the 3-D rotary embedding to `x` of shape `(N, ..., head_dim)` (queries and keys stacked on a middle
    dimension rotate in one pass) with the `(N, head_dim)` float32 tables of `vision_rotary_tables`.

    On CUDA without gradients one Triton kernel does it (`vision_rotary_kernel_llava_onevision2`, the same bits);
    everywhere else `rotate_with_tables_in_torch`.
    """
    if x.is_cuda:
        from .vision_rotary_kernel_llava_onevision2 import fused_rotation_or_none

        rotated = fused_rotation_or_none(x, cos, signed_sin)
        if rotated is not None:
            return rotated
    return rotate_with_tables_in_torch(x, cos, signed_sin)


def rotate_with_tables_in_torch(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """`rotate_with_tables` in PyTorch operations (any device, dtype, and with gradients).

    The table is half-concatenated while the rotation pairs adjacent channels, so the two members of a pair use
    different angles. That is not a norm-preserving rotation, but it is what the released weights were trained with.
    The maths runs in float32 (float64 for a float64 model) and the result is cast back to `x.dtype`. Without
    gradients, the products read `x` in its own dtype and promote as they go (no upcast copy); with gradients, `x`
    is upcast first, so the gradients of its two uses add in float32 before the one rounding back.
    """
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    cos, signed_sin = cos.view(shape), signed_sin.view(shape)
    source = x
    if torch.is_grad_enabled() and x.requires_grad:
        source = x.to(torch.promote_types(x.dtype, cos.dtype))
    rotated = source * cos
    rotated += swap_pairs(source) * signed_sin  # in place: two float32 temporaries alive at a time, not three
    return rotated.to(x.dtype)


__all__ = [
    "AttentionWindows",
    "attention_window_lengths",
    "block_layout_positions",
    "rotary_axis_sizes",
    "rotate_with_tables",
    "rotate_with_tables_in_torch",
    "swap_pairs",
    "vision_rotary_angles",
    "vision_rotary_tables",
]
