"""Image processor benchmark: the released PIL resize path (default) against the batched torchvision path.

    python bench/image_bench.py [--repeats 5] [--output results.json]

Real photographs shipped by matplotlib and scikit-image, each processed alone (a typical chat request) and all
together; both paths run alternately in one process. Reports seconds per image, the ratio torchvision / PIL, and
the largest difference of their pixel values after normalisation.
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_report  # noqa: E402

from llava_onevision2.processing import LlavaOnevision2ImageProcessor  # noqa: E402


def photos() -> list[PIL.Image.Image]:
    import matplotlib

    paths = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    if (skimage := importlib.util.find_spec("skimage")) is not None:
        data = Path(skimage.submodule_search_locations[0]) / "data"
        paths += [
            data / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
        ]
    return [PIL.Image.open(p).convert("RGB") for p in paths if p.exists()]


def seconds_per_image(processor, images, repeats: int, batched: bool) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        if batched:
            processor(images)
        else:
            for image in images:
                processor(image)
    return (time.perf_counter() - start) / (repeats * len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-pixels", type=int, default=4_000_000)
    parser.add_argument("--output")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    images = photos()
    paths = {
        name: LlavaOnevision2ImageProcessor(max_pixels=args.max_pixels, resize_backend=name)
        for name in ("pil", "torchvision")
    }
    for processor in paths.values():  # warm-up
        processor(images[0])
    timings = {name: {"single": 0.0, "batched": 0.0} for name in paths}
    for _ in range(2):  # alternate, so drift hits both paths alike
        for name, processor in paths.items():
            for mode in ("single", "batched"):
                timings[name][mode] += seconds_per_image(processor, images, args.repeats, mode == "batched") / 2
    difference = max(
        float((paths["pil"](image)["pixel_values"] - paths["torchvision"](image)["pixel_values"]).abs().max())
        for image in images
    )
    emit_report(
        {
            "images": [f"{image.width}x{image.height}" for image in images],
            "max_pixels": args.max_pixels,
            "seconds_per_image": timings,
            "torchvision_over_pil": {
                mode: timings["torchvision"][mode] / timings["pil"][mode] for mode in ("single", "batched")
            },
            "max_abs_difference": difference,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
