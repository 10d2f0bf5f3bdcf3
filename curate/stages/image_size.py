"""Image size stage: shorter side, longer side and aspect ratio bounds, from DataComp's
`original_width`/`original_height` where a sample has them (its metadata; the json of
img2dataset's shards), else from the decoded size.

DataComp's rule (mlfoundations/datacomp, baselines/apply_filter.py, lines 229-232) reads the
original sizes: shards are downloaded resized to 512 px, and a decoded 512-px image would fail
rules that its original passes (a 2000 x 600 image is 512 x 153 there)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.stage import MapStage, StageConfig, Verdict, fixed_decimals

# the columns a size can come from: decode/resize (or the input), DataComp's metadata (preferred per row)
SIZE_COLUMNS = (("width", "height"), ("original_width", "original_height"))
ORIGINAL_FIRST = SIZE_COLUMNS[::-1]


class ImageSizeConfig(StageConfig):
    """Parameters of the image_size stage (DataComp basic: min_side 200, max_aspect_ratio 3)."""

    min_side: int = Field(0, ge=0, description="shorter side at least this many pixels")
    max_side: int | None = Field(None, gt=0, description="longer side at most this many pixels")
    max_aspect_ratio: float | None = Field(None, ge=1.0, description="long/short side at most this")

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """The decoded width/height when a decode ran (or the input has them), else DataComp's
        original_width/original_height."""
        return list(SIZE_COLUMNS)


class ImageSize(MapStage):
    """Reject images whose shorter side, longer side or aspect ratio is out of bounds
    (original_width/height, else the decoded size)."""

    name = "image_size"
    Config = ImageSizeConfig
    reads = SIZE_COLUMNS[0]
    reasons = ("missing_size", "image_too_small", "image_too_large", "aspect_ratio")

    def cheap_process(self) -> bool:
        """Columnar rules over columns the rows have."""
        return True

    def process(self, table: pa.Table) -> Verdict:
        cfg = self.config
        pairs = [pair for pair in ORIGINAL_FIRST if set(pair) <= set(table.column_names)]
        if not pairs:
            raise ValueError(f"image_size needs width/height (run 'decode' before 'image_size') or "
                             f"original_width/original_height (DataComp's metadata); the batch has "
                             f"{table.column_names}")
        n = table.num_rows
        w, h, known = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool)
        for pair in pairs:  # row by row, the first pair with both sides: the original size, else the decoded one
            sides = [table.column(name).cast(pa.int64()) for name in pair]
            fill = pc.and_(pc.is_valid(sides[0]), pc.is_valid(sides[1])).to_numpy(zero_copy_only=False) & ~known
            w[fill], h[fill] = (side.fill_null(0).to_numpy()[fill] for side in sides)
            known |= fill
        unknown = ~known
        short, long = np.minimum(w, h), np.maximum(w, h)
        never = np.zeros(n, bool)
        checks = [  # in the order of REASONS: the first that holds is the row's reason
            unknown,
            short < cfg.min_side,
            long > cfg.max_side if cfg.max_side is not None else never,
            long > cfg.max_aspect_ratio * short if cfg.max_aspect_ratio is not None else never,
        ]
        code = np.select(checks, np.arange(1, len(checks) + 1), 0)
        values = np.full(n, None, object)
        values[code == 1] = "no " + " or ".join("/".join(pair) for pair in pairs)
        sized = np.flatnonzero((code == 2) | (code == 3))
        values[sized] = _joined([w[sized], h[sized]], "x")
        wide = np.flatnonzero(code == 4)
        values[wide] = fixed_decimals(long[wide] / np.maximum(short[wide], 1), 2).to_numpy(zero_copy_only=False)
        return Verdict(table, _REASONS[code], values)


def _joined(parts: list[np.ndarray], separator: str) -> np.ndarray:
    """Row-wise text of integer arrays joined by `separator`, as objects."""
    texts = [pc.cast(pa.array(p), pa.string()) for p in parts]
    return pc.binary_join_element_wise(*texts, separator).to_numpy(zero_copy_only=False)


_REASONS = np.array([None, *ImageSize.reasons], object)  # reason code 0 keeps the row
