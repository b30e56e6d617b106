"""Batching of processed samples: padding, or multimodal packing of several samples per row.

Packing concatenates samples into rows of at most `max_length` tokens (first fit, in arrival order). Each sample's
`position_ids` restart at 0 and no attention mask (and `use_cache=False`) is passed, so the attention implementation
(sdpa's packed-sequence mask or flash-attention's varlen path) keeps every sample to itself. A row's padding tail forms one more segment
with ignored labels. Visual inputs are concatenated in the order their placeholders appear in the packed rows.
The loss over a packed batch equals the loss over the same samples padded (tested).

In a DataLoader worker the batch's tensors are laid out in one shared-memory buffer (`one_shared_buffer`): a worker
hands every separate tensor over as its own shared-memory segment and file descriptor, which the training loop
receives one by one (about 0.3-0.4 ms each on a 2-core machine), so a toy batch's ten tensors took 3.7-4.7 ms to
arrive and the same tensors in one buffer 1.6-2.0 ms (`bench/handoff_bench.py`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..processing.vision_layout_llava_onevision2 import VISUAL_KEYS as KEYS_BY_KIND

VISUAL_KEYS = (*KEYS_BY_KIND["image"], *KEYS_BY_KIND["video"])


def first_fit_rows(lengths: list[int], max_length: int) -> list[list[int]]:
    """Indices of samples per row: each sample goes into the first row with room, else a new row."""
    rows, room = [], []
    for index, length in enumerate(lengths):
        for row, free in enumerate(room):
            if length <= free:
                rows[row].append(index)
                room[row] -= length
                break
        else:
            rows.append([index])
            room.append(max_length - length)
    return rows


class MultimodalCollator:
    """Collate processed samples (`input_ids`, `labels` and visual arrays) into a model batch."""

    def __init__(self, pad_token_id: int, packing: bool = False, max_length: int | None = None):
        if packing and not max_length:
            raise ValueError("Packing needs max_length (the row length).")
        self.pad_token_id = pad_token_id
        self.packing = packing
        self.max_length = max_length

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        if self.packing:
            rows = first_fit_rows([len(s["input_ids"]) for s in samples], self.max_length)
        else:
            rows = [[index] for index in range(len(samples))]
        ordered = [samples[i] for row in rows for i in row]
        row_ids = [np.concatenate([samples[i]["input_ids"] for i in row]) for row in rows]
        row_labels = [np.concatenate([samples[i]["labels"] for i in row]) for row in rows]
        width = max(len(ids) for ids in row_ids)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for row, (ids, targets) in enumerate(zip(row_ids, row_labels)):
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            labels[row, : len(targets)] = torch.as_tensor(targets)
        batch = {"input_ids": input_ids, "labels": labels}
        if self.packing:
            batch["position_ids"] = torch.stack(
                [self.row_positions([len(samples[i]["input_ids"]) for i in row], width) for row in rows]
            )
            # Packed segments are found from the positions only when no cache is built (a cache turns the check off).
            batch["use_cache"] = False
        else:
            lengths = torch.tensor([len(ids) for ids in row_ids])
            batch["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
        for key in VISUAL_KEYS:
            parts = [torch.as_tensor(s[key]) for s in ordered if key in s and len(s[key])]
            if parts:
                batch[key] = torch.cat(parts)
        return self.hand_over(batch)

    @staticmethod
    def hand_over(batch: dict) -> dict:
        """The batch as it leaves this process: one shared buffer in a DataLoader worker, as built in the loop's own
        process (no worker, nothing to hand over)."""
        return one_shared_buffer(batch) if get_worker_info() is not None else batch

    @staticmethod
    def row_positions(lengths: list[int], width: int) -> torch.Tensor:
        """Positions restarting at 0 for each sample; the padding tail is its own segment."""
        segments = [torch.arange(length) for length in lengths]
        if width > sum(lengths):
            segments.append(torch.arange(width - sum(lengths)))
        return torch.cat(segments)


def one_shared_buffer(batch: dict, alignment: int = 64) -> dict:
    """The batch with every tensor copied into its own aligned slice of one shared-memory buffer (same values, dtypes
    and shapes; other entries as they are), so that it crosses to the training process as one segment."""
    tensors = {key: value for key, value in batch.items() if torch.is_tensor(value)}
    offsets, total = {}, 0
    for key, tensor in tensors.items():
        offsets[key] = total
        total += -(-tensor.numel() * tensor.element_size() // alignment) * alignment
    buffer = torch.empty(total, dtype=torch.uint8).share_memory_()  # shared now: pickling it copies nothing more
    shared = dict(batch)
    for key, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        shared[key] = buffer[offsets[key] : offsets[key] + size].view(tensor.dtype).view(tensor.shape)
        shared[key].copy_(tensor)
    return shared


__all__ = ["MultimodalCollator", "VISUAL_KEYS", "first_fit_rows", "one_shared_buffer"]
