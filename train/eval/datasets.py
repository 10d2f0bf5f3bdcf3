"""Evaluation data that ships with the environment, written as Parquet for the suite.

The evaluation sets are real held-out data, never synthetic: the sample pool's `eval` split
(openclipart drawings that `curate sample openclipart` keeps out of the pool by a hash of
their path) and scikit-learn's bundled handwritten digits (1797 real 8x8 scans from the UCI
"Optical Recognition of Handwritten Digits" set), which no curated pool contains.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from curate.io.writers import write_table_atomic

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_SIDE = 32


def _digit_png(pixels: np.ndarray) -> bytes:
    """One 8x8 digit (values 0..16, ink high) as a 32x32 RGB PNG."""
    grey = Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), mode="L")
    out = io.BytesIO()
    grey.resize((DIGIT_SIDE, DIGIT_SIDE), Image.BILINEAR).convert("RGB").save(out, format="PNG")
    return out.getvalue()


def ensure_digits(path: str | Path) -> Path:
    """Write scikit-learn's handwritten digits to `path` (Parquet: `image` PNG bytes, `label` the
    digit as a word, "zero".."nine") unless the file is already there; returns the path."""
    from sklearn.datasets import load_digits

    path = Path(path)
    if path.is_file():
        return path
    digits = load_digits()
    table = pa.table({
        "image": pa.array([_digit_png(image) for image in digits.images], pa.binary()),
        "label": pa.array([DIGIT_NAMES[target] for target in digits.target], pa.string()),
    })
    write_table_atomic(table, path)
    return path


@dataclass(frozen=True)
class Builtin:
    """A bundled data set a suite task can name (`builtin:`): written to the task's path on first use."""

    write: Callable[[Path], Path]
    columns: tuple[str, ...]


BUILTINS = {"digits": Builtin(ensure_digits, ("image", "label"))}
