"""The run report: a self-contained HTML page with the funnel, rejection reasons and
distributions of the kept samples (caption length, image size, language)."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from curate.io.writers import temp_path  # noqa: E402


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _funnel(stats: dict) -> str:
    names = ["input"] + [s["key"] for s in stats["stages"]]
    counts = [stats["input"]] + [s["out"] for s in stats["stages"]]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1))
    ax.barh(names[::-1], counts[::-1], color="#4c72b0")
    for y, c in enumerate(counts[::-1]):
        ax.text(c, y, f" {c}", va="center", fontsize=8)
    ax.set_xlabel("samples remaining")
    ax.set_title("Funnel")
    return _png(fig)


def _reasons(stats: dict) -> str | None:
    items = [(f"{s['name']}: {r}", n) for s in stats["stages"] for r, n in s["reasons"].items()]
    if not items:
        return None
    items.sort(key=lambda x: x[1])
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(items) + 1))
    ax.barh([k for k, _ in items], [n for _, n in items], color="#c44e52")
    ax.set_xlabel("samples rejected")
    ax.set_title("Rejection reasons")
    return _png(fig)


def _distributions(kept) -> list[tuple[str, str]]:
    plots = []
    if kept.num_rows == 0:
        return plots
    lengths = [len(t or "") for t in kept.column("text").to_pylist()]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(lengths, bins=40, color="#55a868")
    ax.set_xlabel("caption length (characters)")
    ax.set_ylabel("kept samples")
    plots.append(("Caption length", _png(fig)))
    sized = []
    if "width" in kept.column_names:
        sized = [(w, h) for w, h in zip(kept.column("width").to_pylist(), kept.column("height").to_pylist()) if w and h]
    if sized:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.scatter([w for w, _ in sized], [h for _, h in sized], s=4, alpha=0.4)
        ax.set_xlabel("width (px)")
        ax.set_ylabel("height (px)")
        plots.append(("Image size", _png(fig)))
    if "lang" in kept.column_names:
        counts: dict[str, int] = {}
        for lang in kept.column("lang").to_pylist():
            counts[lang] = counts.get(lang, 0) + 1
        top = sorted(counts.items(), key=lambda x: -x[1])[:15]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([k for k, _ in top], [v for _, v in top], color="#8172b2")
        ax.set_ylabel("kept samples")
        ax.set_title("Language (fastText lid.176)")
        plots.append(("Language", _png(fig)))
    return plots


def write_report(layout, stats: dict) -> None:
    """Write OUTPUT/report.html from stats.json's content and the kept Parquet parts."""
    parts = sorted(layout.parquet.glob("*.parquet"))
    if parts:
        names = set(pq.read_schema(parts[0]).names)
        columns = [c for c in ("text", "width", "height", "lang") if c in names]
        kept = ds.dataset(parts, format="parquet").to_table(columns=columns)
    else:
        kept = None
    rows = "".join(
        f"<tr><td>{html.escape(s['key'])}</td><td>{s['in']}</td><td>{s['out']}</td><td>{s['rejected']}</td>"
        f"<td>{html.escape(', '.join(f'{r}: {n}' for r, n in s['reasons'].items()))}</td></tr>"
        for s in stats["stages"]
    )
    images = [("Funnel", _funnel(stats))]
    if (reasons := _reasons(stats)) is not None:
        images.append(("Rejection reasons", reasons))
    if kept is not None:
        images += _distributions(kept)
    figures = "".join(f"<h2>{t}</h2><img src='data:image/png;base64,{b}'/>" for t, b in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>curate run: {html.escape(str(stats.get('pipeline')))}</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>curate run: {html.escape(str(stats.get('pipeline')))}</h1>
<p>{stats['input']} input samples, <b>{stats['kept']} kept</b> ({100 * stats['kept_fraction']:.1f}%), {stats['rejected']} rejected
(every rejection is in rejected.parquet). Engine {html.escape(str(stats.get('engine')))}, {stats.get('workers')} worker(s),
{stats.get('elapsed_s')} s, {stats.get('samples_per_s')} samples/s.</p>
<table><tr><th>stage</th><th>in</th><th>out</th><th>rejected</th><th>reasons</th></tr>{rows}</table>
{figures}</body></html>"""
    temp_path(layout.report).write_text(page, encoding="utf-8")
    temp_path(layout.report).replace(layout.report)
