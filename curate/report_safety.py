"""The report's safety section: NSFW scores (kept and rejected), faces found and a gallery of
blurred images, PII types in captions; counted batch by batch over the kept parts and the ledger."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from curate.report_plots import figure, png

BINS = np.linspace(0.0, 1.0, 41)
GALLERY = 8


def safety_section(parts: list, ledger) -> str:
    """HTML for the nsfw, face_blur and pii stages' results, or "" when none of them ran."""
    names = set(pq.read_schema(parts[0]).names) if parts else set()
    columns = [c for c in ("nsfw_score", "face_bboxes", "pii_types") if c in names]
    rejected = _rejected(ledger)
    if not columns and not rejected["nsfw"] and not rejected["pii"]:
        return ""
    kept_hist = np.zeros(len(BINS) - 1, np.int64)
    images_with_faces = faces = 0
    pii: Counter = Counter()
    gallery: list[str] = []
    for batch in (ds.dataset(parts, format="parquet").to_batches(columns=["uid", *columns]) if columns else []):
        if "nsfw_score" in columns:
            scores = batch.column("nsfw_score").drop_null().to_numpy(zero_copy_only=False)
            kept_hist += np.histogram(scores, BINS)[0]
        if "face_bboxes" in columns:
            counts = pc.list_value_length(batch.column("face_bboxes")).fill_null(0).to_numpy(zero_copy_only=False)
            images_with_faces += int((counts > 0).sum())
            faces += int(counts.sum())
            gallery += [u for u, c in zip(batch.column("uid").to_pylist(), counts) if c][:GALLERY - len(gallery)]
        if "pii_types" in columns:
            counted = pc.value_counts(pc.list_flatten(batch.column("pii_types")))
            pii.update(dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist())))
    body = []
    if "nsfw_score" in columns or rejected["nsfw"]:
        body.append(_nsfw_plot(kept_hist, np.histogram(rejected["nsfw"], BINS)[0], len(rejected["nsfw"])))
    if "face_bboxes" in columns:
        body.append(f"<p>{images_with_faces:,} kept images have faces ({faces:,} boxes in face_bboxes).</p>"
                    + _gallery(parts, gallery))
    if pii or rejected["pii"]:
        rows = "".join(f"<tr><td>{html.escape(kind)}</td><td>{pii.get(kind, 0):,}</td>"
                       f"<td>{rejected['pii'].get(kind, 0):,}</td></tr>"
                       for kind in sorted(set(pii) | set(rejected["pii"])))
        body.append("<table><tr><th>PII type</th><th>in kept captions (redacted or recorded)</th>"
                    f"<th>in rejected captions</th></tr>{rows}</table>")
    return f"<section id='safety'><h2>Safety and privacy</h2>{''.join(body)}</section>"


def _rejected(ledger) -> dict:
    """The nsfw rejections' scores (the ledger value is CLASS:score) and the pii rejections' types."""
    found = {"nsfw": [], "pii": Counter()}
    if ledger is None or not ledger.exists():
        return found
    dataset = ds.dataset(ledger, format="parquet")
    for batch in dataset.to_batches(columns=["reason", "value"], filter=ds.field("reason").isin(["nsfw", "pii"])):
        for reason, value in zip(batch.column("reason").to_pylist(), batch.column("value").to_pylist()):
            if reason == "nsfw" and value:
                found["nsfw"].append(float(value.rsplit(":", 1)[1]))
            elif reason == "pii" and value:
                found["pii"].update(value.split(","))
    return found


def _nsfw_plot(kept: np.ndarray, rejected: np.ndarray, n_rejected: int) -> str:
    fig, ax = figure()
    centres, width = (BINS[:-1] + BINS[1:]) / 2, BINS[1] - BINS[0]
    ax.bar(centres, kept, width=width, color="#55a868", label="kept")
    ax.bar(centres, rejected, width=width, bottom=kept, color="#c44e52", label=f"rejected ({n_rejected:,})")
    ax.set_yscale("symlog")
    ax.set_xlabel("nsfw_score (NudeNet: most confident unsafe class)")
    ax.set_ylabel("samples")
    ax.legend()
    return f"<h3>NSFW scores</h3><img src='data:image/png;base64,{png(fig)}'/>"


def _gallery(parts: list, uids: list[str]) -> str:
    """Thumbnails of kept images with faces, as written (blurred where the stage blurred)."""
    from PIL import Image

    if not uids:
        return ""
    table = ds.dataset(parts, format="parquet").to_table(columns=["uid", "image"], filter=ds.field("uid").isin(uids))
    cells = []
    for data in table.column("image").to_pylist():
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            image.thumbnail((160, 160))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
        cells.append(f"<img src='data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}'/>")
    return f"<h3>Images with faces</h3><div>{' '.join(cells)}</div>"
