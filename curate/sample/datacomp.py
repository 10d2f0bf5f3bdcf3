"""A DataComp-format copy of a pool, to run the filtering track end to end on this machine: the
metadata folder DataComp releases (per file NAME.parquet and NAME.npz), img2dataset-style
WebDataset shards of the same samples as DataComp downloads them (images resized, the json
carrying the original size), and target vectors standing in for DataComp's ImageNet-1k ones.

  OUT/metadata/NNNNNNNN.parquet  uid, url, text, original_width, original_height (the rendered
                                 image's size), clip_b32_similarity_score,
                                 clip_l14_similarity_score (the arrays' image-text cosines,
                                 float32), face_bboxes (none: drawings), sha256 (of the bytes)
  OUT/metadata/NNNNNNNN.npz      b32_img, b32_txt, l14_img, l14_txt (float16, unit-norm)
  OUT/shards/NNNNNNNN.tar        KEY.jpg (longer side at most `image_size`, as img2dataset's
                                 keep_ratio_largest only shrinks), KEY.txt, KEY.json (uid, url,
                                 caption, key, status, width/height as stored,
                                 original_width/original_height, sha256, face_bboxes)
  OUT/targets/l14_img.npy        the eval split's image vectors (when one is given)

Vectors come from a CLIP checkpoint (its own size under both the b32 and l14 names), or are
random: a unit image vector per sample (768 wide for l14, 512 for b32) and a text vector at a
cosine drawn uniformly from [-0.1, 0.5] to it, so scores spread over DataComp's thresholds.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curate.io.readers.tasks import plan_inputs, read_task
from curate.io.tar_shard import TarShard
from curate.io.writers import atomic, write_json_atomic

DIMS = {"b32": 512, "l14": 768}  # the random vectors' sizes: OpenAI's ViT-B/32 and ViT-L/14
COSINES = (-0.1, 0.5)  # random text vectors lie at a cosine drawn from this range to their image's
BOXES = pa.list_(pa.list_(pa.float64()))


def _pool_rows(paths: list[str]):
    """The pool's decodable samples (uid, url, text, image bytes, size), in input order."""
    for task in plan_inputs(paths):
        for batch in read_task(task, 256):
            for row in batch.kept().select(["uid", "url", "text", "image"]).to_pylist():
                if row["image"]:
                    with Image.open(io.BytesIO(row["image"])) as image:
                        row["size"] = image.size
                    yield row


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class _Vectors:
    """Image and text vectors for rows: a CLIP's, or random ones (see the module docstring)."""

    def __init__(self, checkpoint: str | None, model: str | None, seed: int):
        self._embedder = None
        if checkpoint is not None:
            from curate.models.embedder import ClipEmbedder

            self._embedder = ClipEmbedder(checkpoint, model)
        self._rng = np.random.default_rng(seed)

    def __call__(self, rows: list[dict], dim: int) -> tuple[np.ndarray, np.ndarray]:
        if self._embedder is not None:
            embedded = self._embedder.embed([r["image"] for r in rows], [r["text"] for r in rows])
            if len(embedded.rows) != len(rows):
                raise ValueError(f"{len(rows) - len(embedded.rows)} pool image(s) could not be embedded")
            return embedded.image, embedded.text
        image = _unit(self._rng.standard_normal((len(rows), dim)))
        other = self._rng.standard_normal((len(rows), dim))
        other = _unit(other - (other * image).sum(1, keepdims=True) * image)  # orthogonal to the image vector
        cosine = self._rng.uniform(*COSINES, size=(len(rows), 1))
        return image, cosine * image + np.sqrt(1 - cosine**2) * other


def _resized(data: bytes, size: tuple[int, int], image_size: int) -> tuple[bytes, tuple[int, int]]:
    """The image as img2dataset's keep_ratio_largest stores it: the longer side at most
    `image_size` (only shrunk), re-encoded as JPEG when shrunk."""
    if max(size) <= image_size:
        return data, size
    scale = image_size / max(size)
    target = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGB").resize(target, Image.LANCZOS).save(out, format="JPEG", quality=95)
    return out.getvalue(), target


def _write_file(out: Path, index: int, rows: list[dict], vectors: dict[str, tuple[np.ndarray, np.ndarray]],
                image_size: int) -> None:
    name = f"{index:08d}"
    sha = [hashlib.sha256(r["image"]).hexdigest() for r in rows]
    scores = {key: np.einsum("ij,ij->i", image.astype(np.float16).astype(np.float32),
                             text.astype(np.float16).astype(np.float32)) for key, (image, text) in vectors.items()}
    table = pa.table({
        "uid": pa.array([r["uid"] for r in rows], pa.string()),
        "url": pa.array([r["url"] for r in rows], pa.string()),
        "text": pa.array([r["text"] for r in rows], pa.string()),
        "original_width": pa.array([r["size"][0] for r in rows], pa.int64()),
        "original_height": pa.array([r["size"][1] for r in rows], pa.int64()),
        "clip_b32_similarity_score": pa.array(scores["b32"], pa.float32()),
        "clip_l14_similarity_score": pa.array(scores["l14"], pa.float32()),
        "face_bboxes": pa.array([[] for _ in rows], BOXES),
        "sha256": pa.array(sha, pa.string()),
    })
    with atomic(out / "metadata" / f"{name}.parquet") as tmp:
        pq.write_table(table, tmp)
    arrays = {f"{key}_{kind}": vector.astype(np.float16)
              for key, pair in vectors.items() for kind, vector in zip(("img", "txt"), pair)}
    with atomic(out / "metadata" / f"{name}.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    names, payloads = [], []
    for i, (row, digest) in enumerate(zip(rows, sha)):
        key = f"{index:05d}{i:04d}"
        image, stored = _resized(row["image"], row["size"], image_size)
        meta = {"uid": row["uid"], "url": row["url"], "caption": row["text"], "key": key, "status": "success",
                "error_message": None, "width": stored[0], "height": stored[1], "original_width": row["size"][0],
                "original_height": row["size"][1], "sha256": digest, "face_bboxes": []}
        names += [f"{key}.jpg", f"{key}.txt", f"{key}.json"]
        payloads += [image, (row["text"] or "").encode("utf-8"), json.dumps(meta).encode("utf-8")]
    with atomic(out / "shards" / f"{name}.tar") as tmp:
        shard = TarShard(tmp)
        shard.add(names, payloads)
        shard.close()


def build_datacomp(pool: list[str], out: Path, checkpoint: str | None = None, model: str | None = None,
                   eval_data: list[str] | None = None, rows_per_file: int = 1000, image_size: int = 512,
                   seed: int = 0) -> dict:
    """Write a DataComp-format copy of `pool` under `out` (see the module docstring); returns a summary."""
    out = Path(out)
    vectors = _Vectors(checkpoint, model, seed)
    files = samples = 0
    rows: list[dict] = []

    def flush() -> None:
        nonlocal files, samples, rows
        if checkpoint is not None:  # one scorer: its vectors under both names
            pair = vectors(rows, 0)
            made = {key: pair for key in DIMS}
        else:
            made = {key: vectors(rows, dim) for key, dim in DIMS.items()}
        _write_file(out, files, rows, made, image_size)
        files, samples, rows = files + 1, samples + len(rows), []

    for row in _pool_rows(pool):
        rows.append(row)
        if len(rows) == rows_per_file:
            flush()
    if rows:
        flush()
    summary = {"files": files, "samples": samples, "metadata": str(out / "metadata"), "shards": str(out / "shards")}
    if eval_data:
        targets = list(_pool_rows(eval_data))
        image, _ = vectors(targets, DIMS["l14"]) if targets else (np.zeros((0, DIMS["l14"])), None)
        (out / "targets").mkdir(parents=True, exist_ok=True)
        with atomic(out / "targets" / "l14_img.npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.ascontiguousarray(image, np.float32))
        summary["targets"] = str(out / "targets" / "l14_img.npy")
    write_json_atomic(summary, out / "summary.json")
    return summary
