"""The sampler's median, percentile and distinct values give numpy's results bit for bit (the released transform
divides by `np.percentile`), without the functions whose first call imports numpy.ma."""

from pathlib import Path

import numpy as np
import pytest

from llava_onevision2.processing.order_statistics_llava_onevision2 import (
    PERCENTILE_RULE,
    distinct_small_integers,
    linear_percentile,
    median,
    numpy_percentile_rule,
)

# Rows of bit-cost-like values, and np.percentile of each row at each percent as three numpy versions computed it:
# 1.26.4 ("float64"), 2.0.2 ("values' dtype"; 2.3.5 gave the same bits) and 2.4.6 ("float64 position")
RECORDED = Path(__file__).parent / "data" / "numpy_percentiles.npz"
RECORDED_RULES = {"float64": "float64", "values_dtype": "values' dtype", "float64_position": "float64 position"}

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
        assert ours.dtype == theirs.dtype  # the rows' own under numpy 2, float64 under numpy 1
        np.testing.assert_array_equal(ours, theirs, strict=True, err_msg=f"{percent=} {count=}")


@pytest.mark.parametrize("recorded_as", sorted(RECORDED_RULES))
def test_each_rule_gives_the_bits_its_numpy_versions_gave(recorded_as):
    """Every arithmetic, not only the installed numpy's, against np.percentile's outputs recorded under numpy
    versions that use it. The three rules disagree on some of these rows, so a rule that follows another fails."""
    recorded = np.load(RECORDED)
    percents = recorded["percents"].tolist()
    for name in [key for key in recorded.files if key.startswith("rows_")]:
        rows = recorded[name]
        expected = recorded[f"{recorded_as}/{name.replace('rows_', 'expected_')}"]
        ours = np.stack([linear_percentile(rows, percent, rule=RECORDED_RULES[recorded_as]) for percent in percents])
        np.testing.assert_array_equal(ours, expected, strict=True, err_msg=name)


def test_the_recorded_rules_differ_so_the_recordings_can_tell_them_apart():
    recorded = np.load(RECORDED)
    for one, other in (("float64", "float64_position"), ("values_dtype", "float64_position")):
        differing = [
            name
            for name in recorded.files
            if name.startswith(f"{one}/expected_float32")
            and not np.array_equal(recorded[name].astype(np.float32), recorded[name.replace(one, other, 1)])
        ]
        assert differing, (one, other)


def test_numpy_versions_map_to_the_rules_they_were_checked_with():
    assert numpy_percentile_rule("1.26.4") == "float64"
    assert numpy_percentile_rule("2.0.2") == numpy_percentile_rule("2.3.5") == "values' dtype"
    assert numpy_percentile_rule("2.4.6") == numpy_percentile_rule("2.4.0rc1") == "float64 position"
    for unchecked in ("1.25.2", "2.5.0", "3.0.0", "dev"):
        assert numpy_percentile_rule(unchecked) is None
    assert PERCENTILE_RULE == numpy_percentile_rule(np.__version__)


def test_an_unchecked_numpy_computes_the_percentile_itself():
    rows = random_rows(np.random.default_rng(2), np.float32, 4, 77)
    np.testing.assert_array_equal(linear_percentile(rows, 99, rule=None), np.percentile(rows, 99, axis=1), strict=True)


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


def test_linear_percentile_treats_a_numpy_scalar_percent_as_a_python_number():
    """numpy 2 would interpolate float32 rows in float64 for a numpy-scalar percent; the release passes a Python
    number, and so, whatever the caller passes, do we."""
    rows = random_rows(np.random.default_rng(1), np.float32, 3, 50)
    np.testing.assert_array_equal(
        linear_percentile(rows, np.float64(99.0)), np.percentile(rows, 99.0, axis=1), strict=True
    )


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
