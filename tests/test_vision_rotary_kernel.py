"""The fused vision rotary kernel (Triton), run on the CPU through Triton's interpreter, against the PyTorch rotation.

On a GPU the model uses the kernel for inference; here `TRITON_INTERPRET=1` executes the same kernel source with
numpy, so its indexing, masking, pair swap and rounding are checked bit for bit in CI. The variable must be set
before triton decorates the kernel, hence a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from llava_onevision2.modeling.vision_rotary_kernel_llava_onevision2 import fused_rotation_applies, rows_are_contiguous

pytest.importorskip("triton")

CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from llava_onevision2.modeling.vision_geometry_llava_onevision2 import (
        rotate_with_tables_in_torch, vision_rotary_tables)
    from llava_onevision2.modeling.vision_rotary_kernel_llava_onevision2 import rotate_with_tables_in_triton

    results = {}
    generator = torch.Generator().manual_seed(5)
    # (patches, heads, head_dim): rows not a multiple of the row tile, a row width that is not a power of two
    # (3 heads x 64 x q,k = 384 columns), and a width above one 512-column tile (8 x 64 x 2 = 1024).
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for patches, heads, head_dim in ((300, 4, 64), (37, 3, 64), (19, 8, 64), (5, 2, 32)):
            angles = torch.randn(patches, head_dim, generator=generator) * 40
            qkv = (torch.randn(patches, 3, heads, head_dim, generator=generator) * 3).to(dtype)
            if dtype != torch.float16:  # values whose float32 sums round at large magnitudes (fp16 would overflow)
                qkv[0, 0, 0, :4] = torch.tensor([3.0e38, -3.0e38, float("inf"), float("nan")]).to(dtype)
            tables = vision_rotary_tables(angles)
            reference = rotate_with_tables_in_torch(qkv[:, :2], *tables)
            fused = rotate_with_tables_in_triton(qkv[:, :2], *tables)
            same_nan = torch.equal(reference.isnan(), fused.isnan())
            finite = ~reference.isnan()
            results[f"{dtype}-{patches}x{heads}x{head_dim}"] = {
                "shape": list(fused.shape) == list(reference.shape) and fused.dtype == reference.dtype,
                "bits": same_nan and torch.equal(reference[finite], fused[finite]),
                "changed": not torch.equal(fused[:, :, :, :8].float(), qkv[:, :2, :, :8].float()),
            }
    json.dump(results, sys.stdout)
    """
)


def test_kernel_gives_the_bits_of_the_pytorch_rotation_under_the_triton_interpreter():
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=environment, timeout=300, check=False
    )
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout)
    assert len(results) == 12
    for case, checks in results.items():
        assert checks == {"shape": True, "bits": True, "changed": True}, case


def test_kernel_applies_only_where_it_can_serve():
    """CPU tensors and tensors that need gradients take the PyTorch rotation; the kernel reads strided rows whose
    own elements are contiguous (the `qkv[:, :2]` slice) and nothing else."""
    qkv = torch.randn(6, 3, 2, 32)
    cos = torch.randn(6, 32)
    assert rows_are_contiguous(qkv[:, :2])
    assert rows_are_contiguous(qkv[:, :1])
    assert not rows_are_contiguous(qkv[:, :2].transpose(2, 3))
    assert not rows_are_contiguous(qkv[:, :, :1])  # each row's q and k heads with gaps between them
    assert not fused_rotation_applies(qkv[:, :2], cos)  # CPU


def test_a_kernel_that_fails_on_a_machine_is_reported_once_and_the_pytorch_rotation_serves(monkeypatch, caplog):
    from llava_onevision2.modeling import vision_rotary_kernel_llava_onevision2 as kernel

    launches = []

    def failing_launch(*args):
        launches.append(args)
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(kernel._KernelState, "failure", None)
    monkeypatch.setattr(kernel, "fused_rotation_applies", lambda x, cos: True)
    monkeypatch.setattr(kernel, "rotate_with_tables_in_triton", failing_launch)
    x, cos = torch.randn(4, 2, 2, 32), torch.randn(4, 32)
    with caplog.at_level("WARNING"):
        assert kernel.fused_rotation_or_none(x, cos, cos) is None
        assert kernel.fused_rotation_or_none(x, cos, cos) is None
    assert len(launches) == 1  # not retried
    assert [r.getMessage().count("no kernel image") for r in caplog.records] == [1]

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(kernel._KernelState, "failure", None)
    monkeypatch.setattr(kernel, "rotate_with_tables_in_triton", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        kernel.fused_rotation_or_none(x, cos, cos)
    assert kernel._KernelState.failure is None  # memory is not the kernel's fault: it is tried again
