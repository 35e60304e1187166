"""Write a real image folder that is not in this repository: the UCI handwritten digits (1,797 scans of
8x8 pixels, 10 classes, 43 writers; Alpaydin & Kaynak 1998) as `OUT/train/<digit>/*.png` and
`OUT/test/<digit>/*.png`, the layout `--dataset folder --data-dir OUT` reads.

The digits ship with scikit-learn (`sklearn/datasets/data/digits.csv.gz`), so the folder can be made
offline from an installed scikit-learn or from its wheel (`pip download scikit-learn --no-deps`):

    python benchmarks/digits_folder.py --out ~/data/digits
    python benchmarks/digits_folder.py --source scikit_learn-*.whl --out ~/data/digits

Why this set: the collapse check (a search that fills its normal cell with pooling) must run on data the
presets were not tuned on, and the embedded generator is the only other data on a machine without
internet. Images stay 8x8 grey here; the loader scales them to `--image-size` (32 by default), as it would
any folder of small scans. One image in five (every fifth of each class, in file order) is the test split.
"""
from __future__ import annotations

import argparse
import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

_MEMBER = "sklearn/datasets/data/digits.csv.gz"


def read_digits(source: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 8, 8) scaled from 0-16 to 0-255, labels (N,)) from a csv.gz, a scikit-learn wheel,
    or the installed scikit-learn when `source` is None."""
    if source is None:
        try:
            import sklearn
        except ImportError:
            sys.exit("error: scikit-learn is not installed: give --source digits.csv.gz or a scikit-learn wheel")
        raw = (Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz").read_bytes()
    elif source.endswith(".whl"):
        with zipfile.ZipFile(source) as wheel:
            raw = wheel.read(_MEMBER)
    else:
        raw = Path(source).read_bytes()
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 65:
        sys.exit(f"error: {source}: expected 65 columns (64 pixels and a label), found shape {table.shape}")
    images = np.clip(np.rint(table[:, :64] * (255 / 16)), 0, 255).astype(np.uint8).reshape(-1, 8, 8)
    return images, table[:, 64]


def main(argv: list[str] | None = None) -> None:
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to create (must not hold a train/ or test/ folder)")
    p.add_argument("--source", default=None, help="digits.csv.gz or a scikit-learn wheel (default: installed sklearn)")
    args = p.parse_args(argv)
    out = Path(args.out).expanduser()
    if (out / "train").exists() or (out / "test").exists():
        sys.exit(f"error: {out} already holds train/ or test/")
    images, labels = read_digits(args.source)
    counts = {"train": 0, "test": 0}
    for digit in range(10):
        for k, i in enumerate(np.flatnonzero(labels == digit)):
            split = "test" if k % 5 == 4 else "train"
            folder = out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
            counts[split] += 1
    print(f"wrote {counts['train']} training and {counts['test']} test images of 10 classes to {out}")


if __name__ == "__main__":
    main()
