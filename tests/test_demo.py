"""The first five minutes: the demo command on the shipped toy model, the shipped model's held-out bar, and the
shipped weights against a fresh build of the toy curriculum."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from llava_onevision2.demo import SHIPPED_MODEL, run_demo
from llava_onevision2.demo.run import DEMO_CLIP, format_report, load_model
from llava_onevision2.training.toy import MODEL_FILES, evaluate_toy_model, ship_toy_model, write_moving_video

NOISE = ("Warning", "warning:", " INFO ", "it/s]", "s/it]", "Loading weights")


def shipped_results() -> dict:
    return json.loads((SHIPPED_MODEL / "toy_results.json").read_text())


def test_shipped_toy_model_is_small_and_complete():
    for name in (*MODEL_FILES, "processor_config.json", "tokenizer.json", "toy_results.json"):
        assert (SHIPPED_MODEL / name).is_file(), name
    assert not list(SHIPPED_MODEL.glob("*.py"))  # weights and settings only: the code is this package's
    size = sum(path.stat().st_size for path in SHIPPED_MODEL.iterdir())
    assert size < 8 * 1024**2


# The bar the shipped toy model must clear on held-out data: 95% colour, 90% motion with uniform frames and with codec
# sampling, and on brief events codec sampling at least 50 points ahead of uniform frames at the same tokens. (Shipped:
# 99% colour, 99% / 98% motion, 86% vs 28% on brief events.)
BAR = {"colour": 0.95, "motion_frames": 0.9, "motion_codec": 0.9, "codec_lead_on_brief_events": 0.5}
# How far a fresh build may land from the shipped model's stored results. Builds differ (see the fresh-build test):
# of five fresh builds of the current curriculum four landed at most 0.09 below the shipped one, and one 0.23 below
# on codec motion (76% against 98%; its frame-view motion was 96%). Chance is 25% on motion, so a broken build fails.
FRESH_BUILD_TOLERANCE = 0.3


def meets_the_bar(accuracy: dict) -> None:
    for name in ("colour", "motion_frames", "motion_codec"):
        assert accuracy[name] >= BAR[name], (name, accuracy[name])
    brief = accuracy["brief_event"]
    assert brief["accuracy"]["codec"] >= brief["accuracy"]["uniform"] + BAR["codec_lead_on_brief_events"], brief


def test_shipped_toy_model_understands_colour_and_motion_and_shows_the_codec_claim():
    """Held-out results measured when the shipped model was built: far above chance (17% colour, 25% motion), and on
    brief events codec sampling answers clearly more often than uniform frames given the same tokens."""
    accuracy = shipped_results()["accuracy"]
    meets_the_bar(accuracy)
    brief = accuracy["brief_event"]
    assert brief["videos"] >= 50
    # Same tokens per clip for both methods; the codec sampler reaches more of the clip's frames with them.
    assert brief["visual_tokens_per_video"]["codec"] == brief["visual_tokens_per_video"]["uniform"]
    assert brief["frames_reached_per_video"]["codec"] > 2 * brief["frames_reached_per_video"]["uniform"]


def test_demo_command_answers_quietly_with_the_shipped_model(tmp_path):
    """`make demo`: generated clip, both methods at one budget, a summary a person reads, and nothing else printed."""
    result = subprocess.run(
        [sys.executable, "-m", "llava_onevision2.demo", "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    printed = result.stdout + result.stderr
    assert not [line for line in printed.splitlines() if any(mark in line for mark in NOISE)], printed
    assert f"Truth     {DEMO_CLIP['direction']}" in result.stdout
    assert "codec sampling" in result.stdout and "uniform frames" in result.stdout
    report = json.loads((tmp_path / "out" / "demo_report.json").read_text())
    assert report["codec"]["visual_tokens"] == report["uniform"]["visual_tokens"] > 0
    assert report["codec"]["frames_reached"] > report["uniform"]["frames_reached"]
    first, last = report["event_frames"]
    assert 0 < first < last < report["total_frames"]
    assert Path(report["picture"]).stat().st_size > 10_000
    assert report["heldout"] == shipped_results()["accuracy"]


def test_demo_on_a_user_video_has_no_ground_truth(tmp_path):
    """MODEL=/VIDEO= path: the truth is unknown, so nothing is marked right or wrong."""
    video = str(tmp_path / "clip.mp4")
    write_moving_video(video, "green", "square", "up", frames=6, rng=random.Random(3))
    report = run_demo(str(SHIPPED_MODEL), video, "Which way does the shape move?", str(tmp_path / "out"))
    assert report.ground_truth is None and report.codec.correct is None and report.uniform.correct is None
    assert report.codec.visual_tokens == report.uniform.visual_tokens
    assert "not known (your video)" in format_report(report)


def test_demo_names_a_missing_model_or_video(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "llava_onevision2.demo",
            "--video",
            str(tmp_path / "nope.mp4"),
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"demo: Video not found: {tmp_path / 'nope.mp4'}"


@pytest.mark.slow
def test_a_fresh_build_of_the_toy_curriculum_learns_and_the_shipped_results_reproduce(tmp_path):
    """`make toy-model` from scratch (about 11 minutes on 2 cores) lands near the shipped model, and the shipped
    weights reproduce their own stored results on the regenerated held-out data (same seed, same clips).

    Two builds do not give equal weights, even on one machine: runs that agree to four digits for hundreds of steps
    part where the motion loss leaves its plateau. Five fresh builds of the current curriculum reached 94-99%
    colour, 91-99% / 76-98% motion and 80-96% vs 21-31% on brief events; the shipped model has 99%, 99% / 98% and
    86% vs 28%."""
    fresh = ship_toy_model(str(tmp_path / "run"), str(tmp_path / "shipped"))["accuracy"]
    assert all((tmp_path / "shipped" / name).is_file() for name in MODEL_FILES)
    stored = shipped_results()["accuracy"]
    for name in ("colour", "motion_frames", "motion_codec"):
        assert abs(stored[name] - fresh[name]) <= FRESH_BUILD_TOLERANCE, (name, stored[name], fresh)
    fresh_brief = fresh["brief_event"]["accuracy"]
    assert fresh_brief["codec"] >= stored["brief_event"]["accuracy"]["codec"] - FRESH_BUILD_TOLERANCE, fresh_brief
    assert fresh_brief["codec"] - fresh_brief["uniform"] >= 0.3, fresh_brief
    model, processor = load_model(SHIPPED_MODEL)
    shipped = evaluate_toy_model(model, processor, str(tmp_path / "run" / "data"))
    for name in ("colour", "motion_frames", "motion_codec"):
        assert abs(stored[name] - shipped[name]) <= 0.05, (name, stored[name], shipped[name])
    for method in ("codec", "uniform"):
        measured = shipped["brief_event"]["accuracy"][method]
        assert abs(stored["brief_event"]["accuracy"][method] - measured) <= 0.05, (method, measured)
