"""The first five minutes: `python -m llava_onevision2.demo` (or `make demo`) answers a question about a video with
codec sampling and with uniform frames at the same visual-token budget, prints what each saw and said, and draws the
codec selection. Its default model is the toy curriculum's, shipped in `toy_model/`."""

from .run import SHIPPED_MODEL, DemoReport, run_demo

__all__ = ["SHIPPED_MODEL", "DemoReport", "run_demo"]
