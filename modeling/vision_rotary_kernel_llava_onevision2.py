"""The vision rotary embedding as one Triton kernel, for inference on CUDA.

Why a kernel: on an H200 the PyTorch rotation of the 8B tower (`rotate_with_tables_in_torch`) costs about 49 of
145 ms of kernel time (`bench/vision_profile.py`): the two float32 products run on PyTorch's mixed-dtype path, and
the pair swap and the in-place sum are two more passes over queries and keys. The kernel reads each query and key
element once (its pair partner comes from the same cache line), reads the two float32 tables, and writes the rotated
element once in the model's dtype, with no float32 temporaries.

Same bits as the PyTorch rotation: the same float32 products and sum (`enable_fp_fusion=False` keeps the compiler
from contracting them into a fused multiply-add, which rounds once instead of twice), then round-to-nearest-even into
bfloat16 or float16. The bfloat16 rounding is written out on the bits (PyTorch's own rule) so that Triton's CPU
interpreter, which the tests run it under, rounds as the GPU does.

Gradients are not implemented: with gradients the PyTorch rotation runs (see `rotate_with_tables`). A kernel that
cannot be compiled or launched on a machine (an old driver, a triton build without this GPU) is reported once and
the PyTorch rotation serves the rest of the process, so the model never stops working for want of the kernel.
"""

from __future__ import annotations

import torch
from transformers.utils import logging
from transformers.utils.import_utils import is_triton_available

logger = logging.get_logger(__name__)

FUSED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

if is_triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _rotate_pairs_kernel(
        x_ptr,
        cos_ptr,
        sin_ptr,
        out_ptr,
        num_rows,
        row_width,
        x_row_stride,
        head_dim,
        ROUND_TO_BF16: tl.constexpr,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_COLS: tl.constexpr,
    ):
        # One tile of rows (patches) x columns (queries then keys, head-major, `head_dim` channels per head).
        rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
        mask = (rows[:, None] < num_rows) & (cols[None, :] < row_width)
        rows = rows.to(tl.int64)
        x_rows = x_ptr + rows[:, None] * x_row_stride
        x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        partner = tl.load(x_rows + (cols ^ 1)[None, :], mask=mask, other=0.0).to(tl.float32)  # (a, b) -> (b, a)
        table = rows[:, None] * head_dim + (cols % head_dim)[None, :]
        cos = tl.load(cos_ptr + table, mask=mask, other=0.0)
        signed_sin = tl.load(sin_ptr + table, mask=mask, other=0.0)
        rotated = x * cos + partner * signed_sin
        if ROUND_TO_BF16:
            bits = rotated.to(tl.uint32, bitcast=True)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            rounded = tl.where(rotated != rotated, 0x7FC0, rounded)  # NaN stays NaN
            value = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            value = rotated.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows[:, None] * row_width + cols[None, :], value, mask=mask)


def rows_are_contiguous(x: torch.Tensor) -> bool:
    """Whether each `x[i]` is one contiguous run of memory (the rows themselves may be strided), as for the query and
    key slice `qkv[:, :2]` of the fused projection's `[N, 3, heads, d]` output."""
    expected = 1
    for size, stride in zip(reversed(x.shape[1:]), reversed(x.stride()[1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def fused_rotation_applies(x: torch.Tensor, cos: torch.Tensor) -> bool:
    """The kernel serves CUDA tensors without gradients, in bfloat16, float16 or float32 with float32 tables."""
    return (
        x.is_cuda
        and x.dtype in FUSED_DTYPES
        and cos.dtype == torch.float32
        and not (torch.is_grad_enabled() and x.requires_grad)
        and x.ndim >= 2
        and x.shape[-1] % 2 == 0
        and rows_are_contiguous(x)
        and is_triton_available()
    )


class _KernelState:
    failure: str | None = None  # set when the kernel failed once in this process


def fused_rotation_or_none(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor | None:
    """The kernel's rotation where it applies and works on this machine; None where the PyTorch rotation must run."""
    if _KernelState.failure is not None or not fused_rotation_applies(x, cos):
        return None
    try:
        return rotate_with_tables_in_triton(x, cos, signed_sin)
    except torch.OutOfMemoryError:
        raise  # not the kernel's fault, and the PyTorch rotation needs more memory still
    except Exception as error:  # noqa: BLE001 - compile or launch failures vary with triton and driver versions
        _KernelState.failure = f"{type(error).__name__}: {error}"
        logger.warning(
            "The fused vision rotary kernel failed on this machine (%s); the PyTorch rotation (same results, "
            "slower) is used from now on in this process.",
            _KernelState.failure,
        )
        return None


def rotate_with_tables_in_triton(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """`rotate_with_tables` in one kernel: `x` `(N, ..., head_dim)` with contiguous rows, tables `(N, head_dim)`
    float32. Returns a new contiguous tensor of `x`'s shape and dtype."""
    if not is_triton_available():
        raise RuntimeError("The fused vision rotary needs the triton package (pip install triton).")
    num_rows, head_dim = x.shape[0], x.shape[-1]
    if cos.shape != (num_rows, head_dim) or signed_sin.shape != cos.shape:
        raise ValueError(f"rotary tables {tuple(cos.shape)} do not match {num_rows} rows of {head_dim} channels")
    row_width = x[0].numel() if num_rows else 0
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_cols = min(triton.next_power_of_2(row_width), 512)
    block_rows = max(1, 4096 // block_cols)
    grid = (triton.cdiv(num_rows, block_rows), triton.cdiv(row_width, block_cols))
    _rotate_pairs_kernel[grid](
        x,
        cos.contiguous(),
        signed_sin.contiguous(),
        out,
        num_rows,
        row_width,
        x.stride(0),
        head_dim,
        ROUND_TO_BF16=x.dtype == torch.bfloat16,
        BLOCK_ROWS=block_rows,
        BLOCK_COLS=block_cols,
        num_warps=4,
        enable_fp_fusion=False,
    )
    return out


__all__ = ["fused_rotation_applies", "fused_rotation_or_none", "rotate_with_tables_in_triton", "rows_are_contiguous"]
