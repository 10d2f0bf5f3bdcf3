"""The run report: a self-contained HTML page with the funnel, rejection reasons and
distributions of the kept samples (caption length, image size, language)."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from curate.io.writers import atomic  # noqa: E402

SAMPLE_ROWS = 200_000  # kept rows the distribution plots are drawn from


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _bars(title: str, rows: list[tuple[str, int]], color: str) -> str:
    """A horizontal bar chart as HTML (cheaper than a figure, and the labels stay text)."""
    top = max((n for _, n in rows), default=0) or 1
    bars = "".join(
        f"<tr><td>{html.escape(label)}</td><td class='n'>{n}</td><td class='bar'>"
        f"<div style='width:{100 * n / top:.1f}%;background:{color}'>&nbsp;</div></td></tr>"
        for label, n in rows
    )
    return f"<h2>{title}</h2><table class='bars'>{bars}</table>"


def _funnel(stats: dict) -> str:
    rows = [("input", stats["input"])] + [(f"after {s['key']}", s["out"]) for s in stats["stages"]]
    return _bars("Funnel", rows, "#4c72b0")


def _reasons(stats: dict) -> str:
    rows = sorted(((f"{s['name']}: {r}", n) for s in stats["stages"] for r, n in s["reasons"].items()),
                  key=lambda x: -x[1])
    return _bars("Rejection reasons", rows, "#c44e52") if rows else ""


def _figure():
    return plt.subplots(figsize=(6, 3), layout="constrained")


def _distributions(kept) -> list[tuple[str, str]]:
    plots = []
    if kept.num_rows == 0:
        return plots
    lengths = [len(t or "") for t in kept.column("text").to_pylist()]
    fig, ax = _figure()
    ax.hist(lengths, bins=40, color="#55a868")
    ax.set_xlabel("caption length (characters)")
    ax.set_ylabel("kept samples")
    plots.append(("Caption length", _png(fig)))
    sized = []
    if "width" in kept.column_names:
        sized = [(w, h) for w, h in zip(kept.column("width").to_pylist(), kept.column("height").to_pylist()) if w and h]
    if sized:
        fig, ax = _figure()
        ax.scatter([w for w, _ in sized], [h for _, h in sized], s=4, alpha=0.4)
        ax.set_xlabel("width (px)")
        ax.set_ylabel("height (px)")
        plots.append(("Image size", _png(fig)))
    if "lang" in kept.column_names:
        counts: dict[str, int] = {}
        for lang in kept.column("lang").to_pylist():
            counts[lang] = counts.get(lang, 0) + 1
        top = sorted(counts.items(), key=lambda x: -x[1])[:15]
        fig, ax = _figure()
        ax.bar([k for k, _ in top], [v for _, v in top], color="#8172b2")
        ax.set_ylabel("kept samples")
        ax.set_title("Language (fastText lid.176)")
        plots.append(("Language", _png(fig)))
    return plots


GALLERY_SIZE = 8


def _thumbnail(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image.thumbnail((160, 160))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode()


def _capfilt(parts: list) -> str:
    """The recaptioning section: captions replaced, score histograms before and after, a gallery."""
    columns = ["uid", "web_text", "web_score", "synthetic_captions", "synthetic_scores", "caption_source",
               "caption_score", "parent_uid", "text"]
    dataset = ds.dataset(parts, format="parquet")
    kept = dataset.to_table(columns=columns).to_pylist()
    originals = [r for r in kept if r["parent_uid"] is None]
    replaced = [r for r in originals if r["caption_source"] == "synthetic"]
    fig, ax = _figure()
    bins = 30
    ax.hist([r["web_score"] for r in originals], bins=bins, alpha=0.6, label="web caption (before)")
    ax.hist([r["caption_score"] for r in kept], bins=bins, alpha=0.6, label="caption in `text` (after)")
    ax.set_xlabel("CLIP score (image-caption cosine)")
    ax.set_ylabel("kept samples")
    ax.legend()
    gallery = (replaced or originals)[:GALLERY_SIZE]
    shown = dataset.to_table(columns=["uid", "image"], filter=ds.field("uid").isin([r["uid"] for r in gallery]))
    images = dict(zip(shown.column("uid").to_pylist(), shown.column("image").to_pylist()))
    cells = []
    for row in gallery:
        synthetic = "".join(f"<li>{html.escape(c)} <i>({s:.3f})</i></li>"
                            for c, s in zip(row["synthetic_captions"] or [], row["synthetic_scores"] or []))
        cells.append(f"<tr><td><img src='data:image/jpeg;base64,{_thumbnail(images[row['uid']])}'/></td>"
                     f"<td>{html.escape(row['web_text'] or '')} <i>({row['web_score']:.3f})</i></td><td><ul>{synthetic}</ul>"
                     f"</td><td>{html.escape(row['text'] or '')} ({row['caption_source']})</td></tr>")
    return (f"<h2>Recaptioning (CapFilt)</h2><p>{len(replaced)} of {len(originals)} kept samples had their web caption "
            f"replaced by a synthetic one; {len(kept) - len(originals)} extra samples carry further surviving "
            f"captions.</p><img src='data:image/png;base64,{_png(fig)}'/>"
            f"<table><tr><th>image</th><th>web caption (score)</th><th>synthetic captions (scores)</th>"
            f"<th>caption kept</th></tr>{''.join(cells)}</table>")


def _concepts(fit: dict, parts: list) -> str:
    """The concept-balancing section: samples per entry before and after (log-log rank-count
    curves), the head entries and how much they were cut, the share that matched nothing."""
    import numpy as np
    import pyarrow.compute as pc

    from curate.metadata import rank_profile

    after: Counter = Counter()
    if parts and "concepts" in pq.read_schema(parts[0]).names:
        for batch in ds.dataset(parts, format="parquet").to_batches(columns=["concepts"]):  # streamed: counts stay small
            counted = pc.value_counts(pc.list_flatten(batch.column("concepts")))
            after.update(dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist())))
    fig, ax = _figure()
    for label, curve in (("before balancing", fit["rank_counts"]), ("kept", rank_profile(list(after.values())))):
        if curve:
            ax.loglog(*np.array(curve).T, marker=".", label=label)
    ax.axhline(fit["t"], color="grey", linestyle="--", label=f"t = {fit['t']:,}")
    ax.set_xlabel("entry rank (each curve sorted by its own counts)")
    ax.set_ylabel("samples matching the entry")
    ax.legend()
    rows = "".join(
        f"<tr><td>{html.escape(h['entry'])}</td><td>{h['count']:,}</td><td>{h['p']:.4f}</td>"
        f"<td>{after.get(h['id'], 0):,}</td><td>{100 * (1 - after.get(h['id'], 0) / h['count']):.1f}%</td></tr>"
        for h in fit["head"])
    unmatched = fit["unmatched"] / fit["samples"] if fit["samples"] else 0.0
    derived = f" (derived from target_size {fit['target_size']:,}: expected {fit['expected_kept']:,.0f} kept)" \
        if fit["target_size"] else ""
    return (f"<h2>Concepts (MetaCLIP balancing)</h2><p>{fit['samples']:,} samples matched against {fit['entries']:,} "
            f"entries of {html.escape(fit['metadata'])}; {fit['matched_entries']:,} entries matched at least once; "
            f"t = {fit['t']:,}{derived}. {fit['unmatched']:,} samples ({100 * unmatched:.1f}%) matched nothing "
            f"and were {'dropped' if fit['unmatched_policy'] == 'drop' else 'kept'}.</p>"
            f"<img src='data:image/png;base64,{_png(fig)}'/><table><tr><th>head entry</th><th>samples before</th>"
            f"<th>p = min(1, t/count)</th><th>kept</th><th>cut</th></tr>{rows}</table>")


def sample_rows(parts: list, columns: list[str], limit: int = SAMPLE_ROWS):
    """At most about `limit` kept rows, every k-th of the whole output, read batch by batch (the
    report's distributions are drawn from this sample, whatever the run's size)."""
    dataset = ds.dataset(parts, format="parquet")
    step = max(1, -(-dataset.count_rows() // limit))
    pieces, seen = [], 0
    for batch in dataset.to_batches(columns=columns):
        first = (-seen) % step
        pieces.append(batch.take(pa.array(range(first, batch.num_rows, step), pa.int64())))  # typed: an empty take too
        seen += batch.num_rows
    return pa.Table.from_batches(pieces) if pieces else None


def write_report(layout, stats: dict) -> None:
    """Write OUTPUT/report.html from stats.json's content and the kept Parquet parts."""
    parts = sorted(layout.parquet.glob("*.parquet"))
    if parts:
        names = set(pq.read_schema(parts[0]).names)
        kept = sample_rows(parts, [c for c in ("text", "width", "height", "lang") if c in names])
    else:
        kept = None
    rows = "".join(
        f"<tr><td>{html.escape(s['key'])}</td><td>{s['in']}</td><td>{s['out']}</td><td>{s['rejected']}</td>"
        f"<td>{html.escape(', '.join(f'{r}: {n}' for r, n in s['reasons'].items()))}</td></tr>"
        for s in stats["stages"]
    )
    images = _distributions(kept) if kept is not None else []
    figures = _funnel(stats) + _reasons(stats) + "".join(
        f"<h2>{t}</h2><img src='data:image/png;base64,{b}'/>" for t, b in images
    )
    if parts and "caption_source" in names:
        figures += _capfilt(parts)
    figures += "".join(_concepts(fit, parts) for fit in stats.get("fits", {}).values() if fit.get("kind") == "concepts")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>curate run: {html.escape(str(stats.get('pipeline')))}</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse}}.bars td{{border:none}}.bars .n{{text-align:right}}.bars .bar{{width:60%}}</style></head><body>
<h1>curate run: {html.escape(str(stats.get('pipeline')))}</h1>
<p>{stats['input']} input samples, <b>{stats['kept']} kept</b> ({100 * stats['kept_fraction']:.1f}%), {stats['rejected']} rejected
(every rejection is in rejected.parquet). Engine {html.escape(str(stats.get('engine')))}, {stats.get('workers')} worker(s),
{stats.get('elapsed_s')} s, {stats.get('samples_per_s')} samples/s.</p>
<table><tr><th>stage</th><th>in</th><th>out</th><th>rejected</th><th>reasons</th></tr>{rows}</table>
{figures}</body></html>"""
    with atomic(layout.report) as tmp:
        tmp.write_text(page, encoding="utf-8")
