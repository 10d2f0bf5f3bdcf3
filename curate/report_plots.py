"""The report's plots: matplotlib figures as embedded PNGs, and the distributions of the pool and
of the kept set side by side (caption length, shorter side, aspect ratio, language, CLIP score),
drawn from bounded samples: at most SAMPLE_ROWS kept rows and POOL_ROWS input rows."""

from __future__ import annotations

import base64
import html
import io
import warnings
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa

from curate import provenance as runs
from curate import samples

# kept rows the distribution plots are drawn from: the driver's largest allocation at the end of a run (200k
# rows held 45 MiB more at 10M input rows than at 1M, 157k kept), and 50k draw a histogram as well
SAMPLE_ROWS = 50_000
POOL_ROWS = 5_000  # input rows (whole tasks in a seeded order) the pool's distributions are drawn from
SEED = 0  # the report's galleries' and pool sample's fixed seed
POOL, KEPT = "#8c8c8c", "#55a868"


def png(fig) -> str:
    """A figure as a base64 PNG (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def figure():
    """A report-sized figure and its axes."""
    return plt.subplots(figsize=(6, 3), layout="constrained")


def _features(table: pa.Table | None) -> dict[str, np.ndarray]:
    """Per-sample values the distribution plots compare: caption length, shorter side, aspect
    ratio (longer / shorter side), language, CLIP score (where the table has them)."""
    if table is None or not table.num_rows:
        return {}
    out = {"caption": np.array([len(t or "") for t in table.column("text").to_pylist()], np.float64)}
    if "width" in table.column_names and "height" in table.column_names:
        w = table.column("width").to_numpy(zero_copy_only=False).astype(np.float64)
        h = table.column("height").to_numpy(zero_copy_only=False).astype(np.float64)
        sized = (w > 0) & (h > 0)
        out["side"] = np.minimum(w, h)[sized]
        out["aspect"] = (np.maximum(w, h) / np.maximum(np.minimum(w, h), 1))[sized]
    if "lang" in table.column_names:
        out["lang"] = np.array(table.column("lang").fill_null("-").to_pylist(), object)
    if "clip_score" in table.column_names:
        scores = table.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float64)
        out["clip_score"] = scores[np.isfinite(scores)]
    return out


PLOTS = {  # feature -> (title, x label, log x)
    "caption": ("Caption length", "caption length (characters)", False),
    "side": ("Image size", "shorter side (px)", False),
    "aspect": ("Aspect ratio", "longer / shorter side", True),
    "clip_score": ("CLIP score", "image-caption cosine", False),
}


def _histogram(feature: str, pool: np.ndarray | None, kept: np.ndarray) -> str:
    """Pool and kept distributions of one feature as shares, on the same bins."""
    title, label, log = PLOTS[feature]
    both = np.concatenate([kept, pool]) if pool is not None and len(pool) else kept
    low, high = float(both.min()), float(both.max())
    if log:
        bins = np.geomspace(max(low, 1.0), max(high, 1.0) * 1.001 + 1e-9, 30)
    else:
        bins = np.linspace(low, high if high > low else low + 1, 40)
    fig, ax = figure()
    if pool is not None and len(pool):
        ax.hist(pool, bins=bins, weights=np.full(len(pool), 1 / len(pool)), color=POOL, alpha=0.6,
                label=f"pool sample ({len(pool):,})")
    ax.hist(kept, bins=bins, weights=np.full(len(kept), 1 / len(kept)), color=KEPT, alpha=0.6,
            label=f"kept ({len(kept):,})")
    ax.set_xscale("log" if log else "linear")
    ax.set_xlabel(label)
    ax.set_ylabel("share of samples")
    ax.legend()
    return _plot(feature, title, fig)


def _languages(pool: np.ndarray | None, kept: np.ndarray) -> str:
    """The 12 most common languages of the pool (else of the kept set), shares side by side."""
    ranked = Counter(pool if pool is not None and len(pool) else kept).most_common(12)
    names = [name for name, _ in ranked]
    x = np.arange(len(names))
    fig, ax = figure()
    for offset, values, color, label in ((-0.2, pool, POOL, "pool sample"), (0.2, kept, KEPT, "kept")):
        if values is not None and len(values):
            counts = Counter(values)
            ax.bar(x + offset, [counts[n] / len(values) for n in names], 0.4, color=color, label=label)
    ax.set_xticks(x, names)
    ax.set_ylabel("share of samples")
    ax.set_title("Language (fastText lid.176)")
    ax.legend()
    return _plot("lang", "Language", fig)


def _plot(name: str, title: str, fig) -> str:
    return (f"<figure class='plot' data-plot='{name}'><h3>{title}</h3>"
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png(fig)}'/></figure>")


def distributions(kept: pa.Table | None, pool: pa.Table | None) -> str:
    """Pool and kept distributions side by side (the pool's where its sample has the feature)."""
    kept_values, pool_values = _features(kept), _features(pool)
    figures = []
    for feature in ("caption", "side", "aspect", "clip_score"):
        if len(kept_values.get(feature, ())):
            figures.append(_histogram(feature, pool_values.get(feature), kept_values[feature]))
    if len(kept_values.get("lang", ())):
        figures.append(_languages(pool_values.get("lang"), kept_values["lang"]))
    if not figures:
        return ""
    note = (f"Pool: {pool.num_rows:,} input samples (whole tasks in a seeded order; sizes read from the image "
            "headers, languages by the pipeline's language stage); kept: " if pool is not None else "Kept: ")
    note += f"{kept.num_rows:,} kept samples (every k-th of the output)."
    return f"<section id='distributions'><h2>Pool and kept</h2><p>{note}</p>{''.join(figures)}</section>"


def pool_sample(provenance: dict, rows: int = POOL_ROWS) -> pa.Table | None:
    """About `rows` input samples (whole tasks in a seeded order, the last one cut) with text,
    width and height (from the image headers) and, when the pipeline has a language stage, lang
    as that stage gives it."""
    from dataclasses import replace

    from curate.io.readers.tasks import read_task

    tasks = runs.input_tasks(provenance)
    limits = runs.read_limits(provenance)
    pieces, left = [], rows
    for index in samples.task_order([t.index for t in tasks], SEED):
        if left <= 0:
            break
        task = tasks[index]
        for batch in read_task(replace(task, limit=min(left, task.limit or left)), 1024, limits):
            table = batch.table
            pieces.append(_with_sizes(table))
            left -= table.num_rows
    if not pieces:
        return None
    table = pa.concat_tables(pieces)
    return _with_languages(table, provenance["pipeline"].get("stages", []))


def _with_sizes(table: pa.Table) -> pa.Table:
    """uid and text with width and height: read from each image's header, else (a metadata run,
    no image bytes) from DataComp's original_width/original_height; 0 where neither is known."""
    from PIL import Image

    n = table.num_rows
    width, height = np.zeros(n, np.int32), np.zeros(n, np.int32)
    if {"original_width", "original_height"} <= set(table.column_names):
        width[:] = table.column("original_width").cast(pa.int64()).fill_null(0).to_numpy()
        height[:] = table.column("original_height").cast(pa.int64()).fill_null(0).to_numpy()
    images = table.column("image")
    for i in np.flatnonzero(images.is_valid().to_numpy(zero_copy_only=False)).tolist():
        try:
            with warnings.catch_warnings():  # a header is read, never the pixels: a bomb's size is harmless
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(images[i].as_py())) as image:
                    width[i], height[i] = image.size
        except Exception:  # noqa: BLE001 - a broken image has no size to plot
            width[i] = height[i] = 0
    sized = table.select(["uid", "text"]).append_column("width", pa.array(width))
    return sized.append_column("height", pa.array(height))


def _with_languages(table: pa.Table, stages: list[dict]) -> pa.Table:
    """`table` with lang from the pipeline's (first) language stage, configured as in the run."""
    from curate.stages import REGISTRY

    entry = next((s for s in stages if isinstance(s, dict) and s.get("stage") == "language"), None)
    if entry is None:
        return table
    stage = REGISTRY["language"](REGISTRY["language"].Config(**{k: v for k, v in entry.items() if k != "stage"}))
    stage.setup()
    return table.append_column("lang", stage.process(table).table.column("lang"))


def sample_rows(parts: list, columns: list[str], limit: int = SAMPLE_ROWS) -> pa.Table | None:
    """About `limit` kept rows (`columns` where present): whole parts in a seeded order, the last
    one cut, read batch by batch, as the pool's sample is drawn; the report's distributions come
    from it, so the run's end reads a bounded share of the output however large the run."""
    import pyarrow.parquet as pq

    pieces, left = [], limit
    for index in samples.task_order(range(len(parts)), SEED):
        if left <= 0:
            break
        source = pq.ParquetFile(parts[index])
        present = [c for c in columns if c in source.schema_arrow.names]
        for batch in source.iter_batches(columns=present):
            pieces.append(pa.Table.from_batches([batch.slice(0, left)]))
            left -= pieces[-1].num_rows
            if left <= 0:
                break
    return pa.concat_tables(pieces, promote_options="default") if pieces else None
