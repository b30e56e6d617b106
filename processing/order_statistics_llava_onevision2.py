"""Medians, percentiles and distinct values with numpy's results, without numpy's functions for them.

In numpy 2, `np.median`, `np.percentile` and `np.unique` import `numpy.ma` on their first call (about 12 ms on the
development machine). The codec sampler of a short clip runs in about 0.2 s in a fresh process, and is measured
against the released tool's wall time there (`bench/codec_bench.py`), so that import is a cost worth not paying.

`linear_percentile` must give numpy's bits: the release normalises its bit-costs by `np.percentile`, and a
different rounding would reorder tied blocks. It follows numpy's default ("linear") method step by step: the same
float64 position, the same two neighbours, and the same interpolation in the values' own dtype, from the lower
neighbour below a weight of one half and from the upper one at or above it. Tests compare it with numpy on random,
tied, short and NaN-holding rows.
"""

import math

import numpy as np


def median(values: np.ndarray) -> float:
    """`float(np.median(values))` of a non-empty 1-D array: the middle value, or the mean of the two middle ones
    (their sum halved, as `np.mean` of two float64 values computes it)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if ordered.size == 0:
        raise ValueError("The median of no values is undefined.")
    middle = ordered.size // 2
    if ordered.size % 2:
        return float(ordered[middle])
    return (float(ordered[middle - 1]) + float(ordered[middle])) / 2


def linear_percentile(rows: np.ndarray, percent: float) -> np.ndarray:
    """`np.percentile(rows, percent, axis=-1)` for a Python number `percent` in [0, 100]: one value per row in the
    rows' floating dtype (a 1-D input gives a 0-d array). A row holding NaN gives NaN, as in numpy."""
    rows = np.asarray(rows)
    if not np.issubdtype(rows.dtype, np.floating):
        raise TypeError(f"linear_percentile takes floating-point rows, got {rows.dtype}")
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must lie in [0, 100], got {percent}")
    percent = float(percent)  # a numpy scalar would not be weak under numpy 2 and would promote float32 rows
    count = rows.shape[-1]
    if count == 0:
        raise ValueError("The percentile of an empty row is undefined.")
    # at least 2-D, so that the interpolation below is array-by-Python-float arithmetic (the values' dtype) under
    # numpy 1's value-based casting as under numpy 2's weak scalars
    table = rows.reshape(-1, count)
    position = (count - 1) * (percent / 100)  # numpy's float64 position of the "linear" method
    lower_index = min(math.floor(position), count - 1)
    upper_index = min(lower_index + 1, count - 1)
    ordered = np.partition(table, sorted({lower_index, upper_index, count - 1}), axis=-1)
    lower, upper = ordered[:, lower_index], ordered[:, upper_index]
    weight = position - lower_index if position < count - 1 else 0.0  # numpy takes the last value there
    step = upper - lower
    result = upper - step * (1 - weight) if weight >= 0.5 else lower + step * weight
    result = np.where(np.isnan(ordered[:, -1]), ordered[:, -1], result)  # NaN sorts last in a partition
    return result.reshape(rows.shape[:-1])


def distinct_small_integers(values: np.ndarray) -> np.ndarray:
    """`np.unique(values)` of non-negative integers, by counting: for frame offsets and packed block sizes, whose
    largest value is a few thousand at most."""
    flat = np.asarray(values).ravel()
    if flat.size == 0:
        return flat.astype(np.int64)
    if flat.min() < 0:
        raise ValueError(f"distinct_small_integers takes non-negative integers, got {flat.min()}.")
    return np.flatnonzero(np.bincount(flat))
