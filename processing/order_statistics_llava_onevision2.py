"""Medians, percentiles and distinct values with numpy's results, without numpy's functions for them.

In numpy 2, `np.median`, `np.percentile` and `np.unique` import `numpy.ma` on their first call (about 12 ms on the
development machine). The codec sampler of a short clip runs in about 0.2 s in a fresh process, and is measured
against the released tool's wall time there (`bench/codec_bench.py`), so that import is a cost worth not paying.

`linear_percentile` must give numpy's bits: the release normalises its bit-costs by `np.percentile`, and a
different rounding would reorder tied blocks. numpy's default ("linear") method has changed its arithmetic twice
for float32 values, so this module follows the rule of the installed version step by step (the same position, the
same two neighbours, the same interpolation, from the lower neighbour below a weight of one half and from the upper
one at or above it), and on a numpy version it was not checked against calls `np.percentile` itself. Tests compare
it with the installed numpy on random, tied, short and NaN-holding rows; it was checked bit for bit against numpy
1.26, 2.0, 2.1, 2.2, 2.3 and 2.4.
"""

import math
import re

import numpy as np


def numpy_percentile_rule(version: str) -> str | None:
    """How numpy `version` computes a percentile of float rows for a Python-number percent:
    - "float64": percent / 100, the position and the interpolation in float64, after the two neighbours' difference
      in their own dtype (numpy 1);
    - "values' dtype": percent / 100, the position and the interpolation all in the values' dtype (numpy 2.0-2.3);
    - "float64 position": the position in float64, the interpolation in the values' dtype (numpy 2.4);
    None for versions this module was not checked against."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        return None
    major_minor = (int(found.group(1)), int(found.group(2)))
    if (1, 26) <= major_minor < (2, 0):
        return "float64"
    if (2, 0) <= major_minor < (2, 4):
        return "values' dtype"
    if major_minor == (2, 4):
        return "float64 position"
    return None


PERCENTILE_RULE = numpy_percentile_rule(np.__version__)


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


def linear_percentile(rows: np.ndarray, percent: float, rule: str | None = PERCENTILE_RULE) -> np.ndarray:
    """`np.percentile(rows, percent, axis=-1)` for a Python number `percent` in [0, 100]: one value per row in the
    dtype numpy gives (float64 under numpy 1); a 1-D input gives a 0-d array. A row holding NaN gives NaN, as in
    numpy. `rule`: the installed numpy's arithmetic (`numpy_percentile_rule`); None calls numpy."""
    rows = np.asarray(rows)
    if not np.issubdtype(rows.dtype, np.floating):
        raise TypeError(f"linear_percentile takes floating-point rows, got {rows.dtype}")
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must lie in [0, 100], got {percent}")
    percent = float(percent)  # as the release passes it: a numpy scalar would change numpy's arithmetic
    count = rows.shape[-1]
    if count == 0:
        raise ValueError("The percentile of an empty row is undefined.")
    if rule is None:
        return np.asarray(np.percentile(rows, percent, axis=-1))
    # at least 2-D: arrays combined with a scalar keep the arrays' dtype in numpy 1 and 2 alike (numpy 1 promoted a
    # float32 scalar times a Python float to float64)
    table = rows.reshape(-1, count)
    if rule == "values' dtype":
        kind = rows.dtype.type
        position = kind(count - 1) * (kind(percent) / kind(100))
    else:
        position = (count - 1) * (percent / 100)
    last = position >= count - 1  # numpy takes the last value there
    lower_index = count - 1 if last else math.floor(position)
    upper_index = min(lower_index + 1, count - 1)
    weight = 0.0 if last else position - lower_index  # exact: the fraction of `position`, in its own dtype
    ordered = np.partition(table, sorted({lower_index, upper_index, count - 1}), axis=-1)
    lower, upper = ordered[:, lower_index], ordered[:, upper_index]
    step = upper - lower
    if rule == "float64":
        lower, upper, step = (np.asarray(values, dtype=np.float64) for values in (lower, upper, step))
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
