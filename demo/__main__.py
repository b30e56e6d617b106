"""`python -m llava_onevision2.demo [--model PATH] [--video PATH] [--question TEXT] [--output DIR]`"""

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llava_onevision2.demo",
        description="Answer a question about a video with codec sampling and with uniform frames at the same "
        "visual-token budget; print both answers and draw the codec selection.",
    )
    parser.add_argument("--model", default=os.environ.get("MODEL") or None, help="model folder (default: the toy)")
    parser.add_argument("--video", default=os.environ.get("VIDEO") or None, help="video file (default: generated)")
    parser.add_argument("--question", default=None)
    parser.add_argument("--output", default="demo_output", help="folder for the video, picture and JSON report")
    args = parser.parse_args(argv)
    from .run import format_report, run_demo

    try:
        report = run_demo(args.model, args.video, args.question, args.output)
    except (FileNotFoundError, ValueError) as error:
        print(f"demo: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
