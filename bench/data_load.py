"""Dataset load time: a plain PIL loop against began.data, first load and cached.

    python -m bench.data_load /data/lfw-deepfunneled [--image-size 64] [--repeats 3]

The baseline is the loop a user would write: one process, PIL open, convert to
RGB, centre crop, resize, grayscale check, stack. The project's first load uses a
fresh cache folder each repeat; the cached load reads what the last one wrote.
Medians of the repeats, all measured in this run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from began.data.crop import crop_box, parse_crop
from began.data.load import load_with_info

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def plain_loop(folder: Path, image_size: int, crop: str) -> int:
    spec, kept = parse_crop(crop), []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS):
        with Image.open(path) as image:
            image = image.convert("RGB")
            image = image.crop(crop_box(spec, *image.size))
            pixels = np.asarray(image.resize((image_size, image_size), Image.Resampling.BICUBIC))
        if not (np.array_equal(pixels[..., 0], pixels[..., 1]) and
                np.array_equal(pixels[..., 1], pixels[..., 2])):  # fmt: skip
            kept.append(pixels)
    return len(np.stack(kept))


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.data_load")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--crop", default="0.56")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    plain, first, cached, counts = [], [], [], set()
    for _ in range(args.repeats):
        seconds, kept = timed(plain_loop, args.folder, args.image_size, args.crop)
        plain.append(seconds)
        counts.add(("plain", kept))
        with tempfile.TemporaryDirectory() as cache:
            load = (str(args.folder), args.image_size, args.crop, False, cache)
            seconds, (images, _) = timed(load_with_info, *load)
            first.append(seconds)
            counts.add(("began.data", images.kept))
            cached.append(timed(load_with_info, *load)[0])
    result = {
        "plain_loop_s": statistics.median(plain),
        "first_load_s": statistics.median(first),
        "cached_load_s": statistics.median(cached),
        "speedup_first": statistics.median(plain) / statistics.median(first),
        "kept": sorted(counts),
        "repeats": args.repeats,
    }
    print(f"plain PIL loop {result['plain_loop_s']:.2f} s; began.data first load "
          f"{result['first_load_s']:.2f} s ({result['speedup_first']:.1f}x), "
          f"cached {result['cached_load_s']:.3f} s; kept {sorted(counts)}")  # fmt: skip
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
