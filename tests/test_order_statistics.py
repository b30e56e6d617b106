"""The sampler's median, percentile and distinct values give numpy's results bit for bit (the released transform
divides by `np.percentile`), without the functions whose first call imports numpy.ma."""

import numpy as np
import pytest

from llava_onevision2.processing.order_statistics_llava_onevision2 import (
    distinct_small_integers,
    linear_percentile,
    median,
)

PERCENTS = (0, 1, 12.5, 37.5, 50, 62.5, 90, 95, 99, 99.9, 100)


def random_rows(rng, dtype, rows, count):
    """Log-scaled bit-cost-like values with many ties (integer bits, zeros) and some spread-out ones."""
    bits = rng.integers(0, 64, size=(rows, count)) * 8 * (rng.random((rows, count)) < 0.7)
    spread = rng.lognormal(3.0, 2.0, size=(rows, count))
    values = np.where(rng.random((rows, count)) < 0.5, bits, spread)
    return np.log1p(values).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [1, 2, 3, 7, 10, 101, 1200, 2057])
def test_linear_percentile_is_numpys_bit_for_bit(dtype, count):
    rng = np.random.default_rng(count)
    rows = random_rows(rng, dtype, 6, count)
    for percent in PERCENTS:
        ours = linear_percentile(rows, percent)
        theirs = np.percentile(rows, percent, axis=1)
        assert ours.dtype == theirs.dtype == dtype
        np.testing.assert_array_equal(ours, theirs, strict=True, err_msg=f"{percent=} {count=}")


def test_linear_percentile_of_one_row_and_of_stacks():
    rng = np.random.default_rng(0)
    row = random_rows(rng, np.float64, 1, 333)[0]
    assert float(linear_percentile(row, 90)) == float(np.percentile(row, 90))
    stack = random_rows(rng, np.float32, 12, 40).reshape(3, 4, 40)
    np.testing.assert_array_equal(linear_percentile(stack, 99), np.percentile(stack, 99, axis=-1), strict=True)


def test_linear_percentile_interpolates_from_the_nearer_neighbour():
    """Weights below one half interpolate up from the lower value, at or above it down from the upper one; the two
    formulas differ in the last bit for these values, so swapping them fails."""
    row = np.array([[0.1, 0.7000001, 0.3, 1e-7, 12.0]], dtype=np.float32)
    for percent in np.linspace(0, 100, 81).tolist():
        assert linear_percentile(row, percent)[0] == np.percentile(row, percent, axis=1)[0], percent
    assert linear_percentile(row, 50)[0] == np.float32(0.3)  # the middle of five, exactly


def test_linear_percentile_keeps_the_values_dtype_for_a_numpy_scalar_percent():
    rows = random_rows(np.random.default_rng(1), np.float32, 3, 50)
    ours = linear_percentile(rows, np.float64(99.0))
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, np.percentile(rows, 99.0, axis=1), strict=True)


def test_linear_percentile_of_rows_with_nan_is_nan_as_in_numpy():
    rows = np.arange(30, dtype=np.float32).reshape(3, 10)
    rows[1, 2] = np.nan
    ours, theirs = linear_percentile(rows, 50), np.percentile(rows, 50, axis=1)
    np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(ours[1]) and not np.isnan(ours[[0, 2]]).any()


def test_linear_percentile_rejects_what_it_cannot_answer():
    with pytest.raises(TypeError, match="floating-point"):
        linear_percentile(np.arange(4), 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        linear_percentile(np.ones(4), 101)
    with pytest.raises(ValueError, match="empty"):
        linear_percentile(np.ones((2, 0)), 50)


@pytest.mark.parametrize("count", [1, 2, 5, 6, 99, 100])
def test_median_is_numpys(count):
    values = np.random.default_rng(count).normal(1 / 30, 1e-3, size=count)
    assert median(values) == float(np.median(values))
    halves = np.array([0.1, 0.2, 0.7, 0.30000000000000004])  # even count: the two middle ones' sum halved
    assert median(halves) == float(np.median(halves))
    with pytest.raises(ValueError, match="no values"):
        median(np.array([]))


def test_distinct_small_integers_are_numpys_unique():
    values = np.random.default_rng(3).integers(0, 300, size=500)
    np.testing.assert_array_equal(distinct_small_integers(values), np.unique(values))
    np.testing.assert_array_equal(distinct_small_integers(np.array([4, 4, 0, 4112])), [0, 4, 4112])
    assert distinct_small_integers(np.array([], dtype=np.int32)).size == 0
    with pytest.raises(ValueError, match="non-negative"):
        distinct_small_integers(np.array([3, -1]))
