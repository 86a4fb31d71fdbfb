"""Write scikit-learn's handwritten digits (real labelled 8x8 images) as image files.

    python -m training.demo_data OUT_DIR [--layout labels|splits] [--size 32]

`labels`: OUT_DIR/<label>/<file>.png, split later by a stable hash of the key.
`splits`: OUT_DIR/{train,valid,test}/<label>/<file>.png. The test split is the one of
BENCHMARKS.md (train_test_split(test_size=0.2, random_state=0, stratify=y)), so the
accuracy can be compared with its reference SVC; valid is 10% of the rest.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@dataclass(frozen=True)
class DigitImage:
    index: int
    label: str
    split: str
    pixels: np.ndarray  # 8x8, values 0..16


def digit_images() -> Iterator[DigitImage]:
    digits = load_digits()
    indices = np.arange(len(digits.target))
    rest, test = train_test_split(indices, test_size=0.2, random_state=0, stratify=digits.target)
    train, valid = train_test_split(rest, test_size=0.1, random_state=0, stratify=digits.target[rest])
    split_of = {**{i: "train" for i in train}, **{i: "valid" for i in valid}, **{i: "test" for i in test}}
    for index in indices:
        yield DigitImage(int(index), str(digits.target[index]), split_of[index], digits.images[index])


def to_png_image(pixels: np.ndarray, size: int) -> Image.Image:
    gray = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BICUBIC)


def relative_path(image: DigitImage, layout: str) -> Path:
    name = f"digit-{image.index:04d}.png"
    if layout == "splits":
        return Path(image.split) / image.label / name
    return Path(image.label) / name


def write_digits(out_dir: Path, layout: str = "labels", size: int = 32) -> int:
    if layout not in ("labels", "splits"):
        raise ValueError(f"layout must be 'labels' or 'splits', not {layout!r}")
    count = 0
    for image in digit_images():
        path = out_dir / relative_path(image, layout)
        path.parent.mkdir(parents=True, exist_ok=True)
        to_png_image(image.pixels, size).save(path)
        count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--layout", choices=("labels", "splits"), default="labels")
    parser.add_argument("--size", type=int, default=32, help="side of the written images in pixels")
    args = parser.parse_args(argv)
    count = write_digits(args.out_dir, args.layout, args.size)
    print(f"wrote {count} images to {args.out_dir} ({args.layout} layout)")


if __name__ == "__main__":
    main()
