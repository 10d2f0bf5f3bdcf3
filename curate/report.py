"""The run report: a self-contained HTML page that shows what each stage removed and why.

Sections: how the output was made (run.json), the funnel with percentages, the rejection
reasons, distributions of the pool and of the kept set side by side (caption length, shorter
side, aspect ratio, language, CLIP score), a gallery of example rejected images per reason with
their captions and ledger values, a gallery of kept samples, and the CapFilt and concept
sections when those stages ran. It stays bounded at pool scale: plots read at most SAMPLE_ROWS
kept rows and POOL_ROWS input rows, galleries a few tasks' rows (curate.samples).
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

from curate import provenance as runs
from curate import samples
from curate.io.card import fold_fits
from curate.io.writers import atomic
from curate.report_plots import SEED, distributions, figure, png, pool_sample, sample_rows

GALLERY_PER_REASON = 12  # example images per rejection reason, and of kept samples
THUMBNAIL = 160
MAX_THUMBNAIL_PIXELS = 50_000_000  # a larger image (a decompression bomb, say) is not opened for a thumbnail


def _bars(title: str, rows: list[tuple[str, int, str]], color: str, section: str) -> str:
    """A horizontal bar chart as HTML (cheaper than a figure, and the labels stay text); each row
    is (label, count, note)."""
    top = max((n for _, n, _ in rows), default=0) or 1
    bars = "".join(
        f"<tr><td>{html.escape(label)}</td><td class='n'>{n:,}</td><td class='n'>{html.escape(note)}</td>"
        f"<td class='bar'><div style='width:{100 * n / top:.1f}%;background:{color}'>&nbsp;</div></td></tr>"
        for label, n, note in rows
    )
    return f"<section id='{section}'><h2>{title}</h2><table class='bars'>{bars}</table></section>"


def _funnel(stats: dict, stages: list[dict]) -> str:
    total = stats["input"] or 1
    rows = [("input", stats["input"], "100.0%")]
    for s in stages:
        share = f"{100 * s['out'] / total:.1f}% of input"
        step = f", -{100 * s['rejected'] / s['in']:.1f}% here" if s["in"] else ""
        rows.append((f"after {s['key']}", s["out"], share + step))
    return _bars("Funnel", rows, "#4c72b0", "funnel")


def _reasons(stats: dict, stages: list[dict]) -> str:
    total = stats["input"] or 1
    rows = sorted(((f"{s['name']}: {r}", n, f"{100 * n / total:.1f}% of input") for s in stages
                   for r, n in s["reasons"].items()), key=lambda x: -x[1])
    return _bars("Rejection reasons", rows, "#c44e52", "reasons") if rows else ""


def thumbnail(data: bytes | None) -> str | None:
    """A JPEG thumbnail (base64) of an encoded image, or None when it cannot be shown (missing,
    broken, or larger than MAX_THUMBNAIL_PIXELS)."""
    from PIL import Image

    if not data:
        return None
    try:
        with warnings.catch_warnings():  # a larger image than the cap is refused below, unread
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            if image.width * image.height > MAX_THUMBNAIL_PIXELS:
                return None
            image.draft("RGB", (THUMBNAIL * 2, THUMBNAIL * 2))
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - an image the decoder rejects is shown as such, not a failed report
        return None
    return base64.b64encode(buffer.getvalue()).decode()


def card(image: bytes | None, caption: str | None, note: str = "", extra: str = "") -> str:
    """One gallery card: the thumbnail (or why there is none), the caption, a note (the ledger value)."""
    thumb = thumbnail(image)
    picture = (f"<img src='data:image/jpeg;base64,{thumb}' alt='{html.escape((caption or '')[:80])}'/>" if thumb
               else f"<div class='noimage'>{'no image' if not image else 'image not decodable'}</div>")
    text = html.escape((caption or "")[:300]) or "<i>(empty caption)</i>"
    note = f"<code>{html.escape(note[:200])}</code>" if note else ""
    return f"<figure class='card'>{picture}<figcaption>{text}{note}{extra}</figcaption></figure>"


def _rejected_galleries(layout, stats: dict, provenance: dict, n: int) -> str:
    """A gallery per (stage, reason): up to `n` seeded examples, read back from their inputs."""
    counts = samples.reason_counts(stats)
    tasks = runs.input_tasks(provenance)
    picked = samples.pick_rejected(layout, [t.index for t in tasks], {k: min(n, c) for k, c in counts.items()}, SEED)
    inputs = samples.read_inputs(picked, {t.index: t for t in tasks}, runs.read_limits(provenance), layout=layout)
    sections = []
    for (stage, reason), count in sorted(counts.items(), key=lambda item: -item[1]):
        mine = [row for row in picked.to_pylist() if (row["stage"], row["reason"]) == (stage, reason)]
        cards = "".join(card(inputs.get(r["uid"], {}).get("image"), inputs.get(r["uid"], {}).get("text"),
                             f"{reason}: {r['value']}" if r["value"] is not None else reason) for r in mine)
        sections.append(f"<section class='gallery' data-stage='{html.escape(stage)}' "
                        f"data-reason='{html.escape(reason)}'><h3>{html.escape(stage)}: {html.escape(reason)} "
                        f"({count:,} rejected, {len(mine)} shown)</h3>"
                        f"<div class='cards'>{cards}</div></section>")
    if not sections:
        return ""
    return (f"<section id='rejected'><h2>Rejected samples</h2><p>Up to {n} examples per reason (a fixed seeded "
            f"choice), with the ledger's value; `curate inspect OUTPUT --reason R` shows more.</p>"
            f"{''.join(sections)}</section>")


def _kept_gallery(layout, provenance: dict, n: int) -> str:
    tasks = [t.index for t in runs.input_tasks(provenance)]
    kept = samples.read_kept(layout, samples.pick_kept(layout, tasks, n, SEED), ["uid", "text", "image"])
    if kept is None or not kept.num_rows:
        return ""
    cards = "".join(card(row.get("image"), row.get("text")) for row in kept.to_pylist())
    return (f"<section id='kept'><h2>Kept samples</h2><section class='gallery' data-kept='true'>"
            f"<div class='cards'>{cards}</div></section></section>")


def _header(stats: dict, provenance: dict | None) -> str:
    """How the output was made: version, command, times, engine, inputs and the resolved pipeline."""
    summary = (f"<p>{stats['input']:,} input samples, <b>{stats['kept']:,} kept</b> "
               f"({100 * stats['kept_fraction']:.1f}%), {stats['rejected']:,} rejected (every rejection is in "
               f"rejected.parquet). Engine {html.escape(str(stats.get('engine')))}, {stats.get('workers')} worker(s), "
               f"{stats.get('elapsed_s')} s, {stats.get('samples_per_s')} samples/s.</p>")
    if provenance is None:
        return summary
    inputs = provenance["inputs"]
    size = sum(f["bytes"] or 0 for f in inputs)
    listed = "".join(f"<li><code>{html.escape(f['path'])}</code> ({f['kind']}, {f['bytes'] or 0:,} bytes, "
                     f"{f['tasks']} task(s))</li>" for f in inputs[:20])
    more = f"<li>... and {len(inputs) - 20:,} more (run.json lists them all)</li>" if len(inputs) > 20 else ""
    pipeline = yaml.safe_dump(provenance["pipeline"], sort_keys=False, allow_unicode=True)
    return (f"{summary}<section id='provenance'><h2>How this output was made</h2><table>"
            f"<tr><th>curate</th><td>{html.escape(provenance['curate_version'])}</td></tr>"
            f"<tr><th>command</th><td><code>{html.escape(provenance['command'])}</code></td></tr>"
            f"<tr><th>started</th><td>{html.escape(provenance['started'])}</td></tr>"
            f"<tr><th>finished</th><td>{html.escape(provenance['finished'])}</td></tr>"
            f"<tr><th>engine</th><td>{html.escape(provenance['engine'])}, {provenance['workers']} worker(s)</td></tr>"
            f"<tr><th>input</th><td>{len(inputs):,} file(s), {size:,} bytes<ul>{listed}{more}</ul></td></tr></table>"
            f"<details open><summary>pipeline ({html.escape(provenance['pipeline_file'])}, after --set)</summary>"
            f"<pre>{html.escape(pipeline)}</pre></details></section>")


GALLERY_SIZE = 8  # the CapFilt section's examples


def _capfilt(parts: list) -> str:
    """The recaptioning section: captions replaced, score histograms before and after, a gallery."""
    columns = ["uid", "web_text", "web_score", "synthetic_captions", "synthetic_scores", "caption_source",
               "caption_score", "parent_uid", "text"]
    dataset = ds.dataset(parts, format="parquet")
    counts = Counter()  # exact, over two narrow columns streamed; the plots and gallery from a bounded sample
    for batch in dataset.to_batches(columns=["parent_uid", "caption_source"]):
        original = pc.is_null(batch.column("parent_uid"))
        counts["kept"] += batch.num_rows
        counts["originals"] += pc.sum(original).as_py() or 0
        synthetic = pc.equal(batch.column("caption_source"), "synthetic")
        counts["replaced"] += pc.sum(pc.and_(original, synthetic)).as_py() or 0
    kept = sample_rows(parts, columns).to_pylist()
    originals = [r for r in kept if r["parent_uid"] is None]
    replaced = [r for r in originals if r["caption_source"] == "synthetic"]
    fig, ax = figure()
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
        cells.append(f"<tr><td><img src='data:image/jpeg;base64,{thumbnail(images[row['uid']])}'/></td>"
                     f"<td>{html.escape(row['web_text'] or '')} <i>({row['web_score']:.3f})</i></td>"
                     f"<td><ul>{synthetic}</ul></td>"
                     f"<td>{html.escape(row['text'] or '')} ({row['caption_source']})</td></tr>")
    return (f"<h2>Recaptioning (CapFilt)</h2><p>{counts['replaced']} of {counts['originals']} kept samples had their "
            f"web caption replaced by a synthetic one; {counts['kept'] - counts['originals']} extra samples carry "
            f"further surviving captions.</p><img src='data:image/png;base64,{png(fig)}'/>"
            f"<table><tr><th>image</th><th>web caption (score)</th><th>synthetic captions (scores)</th>"
            f"<th>caption kept</th></tr>{''.join(cells)}</table>")


def _concepts(fit: dict, parts: list) -> str:
    """The concept-balancing section: samples per entry before and after (log-log rank-count
    curves), the head entries and how much they were cut, the share that matched nothing."""
    from curate.metadata import rank_profile

    after: Counter = Counter()
    if parts and "concepts" in pq.read_schema(parts[0]).names:
        # streamed: the counts stay small
        for batch in ds.dataset(parts, format="parquet").to_batches(columns=["concepts"]):
            counted = pc.value_counts(pc.list_flatten(batch.column("concepts")))
            after.update(dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist())))
    fig, ax = figure()
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
            f"<img src='data:image/png;base64,{png(fig)}'/><table><tr><th>head entry</th><th>samples before</th>"
            f"<th>p = min(1, t/count)</th><th>kept</th><th>cut</th></tr>{rows}</table>")


def write_report(layout, stats: dict, gallery: int = GALLERY_PER_REASON) -> None:
    """Write OUTPUT/report.html from stats.json's content, run.json (how the output was made),
    the kept Parquet parts, the ledger's parts and the input (`gallery` examples per reason)."""
    parts = sorted(layout.parquet.glob("*.parquet"))
    provenance = runs.read(layout.root)
    names = set(pq.read_schema(parts[0]).names) if parts else set()
    kept = sample_rows(parts, [c for c in ("text", "width", "height", "lang", "clip_score") if c in names]) \
        if parts else None
    stages = fold_fits(stats["stages"])
    rows = "".join(
        f"<tr><td>{html.escape(s['key'])}</td><td>{s['in']:,}</td><td>{s['out']:,}</td><td>{s['rejected']:,}</td>"
        f"<td>{html.escape(', '.join(f'{r}: {n:,}' for r, n in s['reasons'].items()))}</td></tr>"
        for s in stages
    )
    body = _funnel(stats, stages) + _reasons(stats, stages)
    if provenance is not None:
        body += distributions(kept, pool_sample(provenance)) + _rejected_galleries(layout, stats, provenance, gallery)
        body += _kept_gallery(layout, provenance, gallery)
    else:
        body += distributions(kept, None)
    if parts and "caption_source" in names:
        body += _capfilt(parts)
    body += "".join(_concepts(fit, parts) for fit in stats.get("fits", {}).values() if fit.get("kind") == "concepts")
    from curate.report_safety import safety_section

    body += safety_section(parts, layout.rejected)
    title = html.escape(str(stats.get("pipeline")))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>curate run: {title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse}}.bars td{{border:none}}.bars .n{{text-align:right}}.bars .bar{{width:50%}}
th{{text-align:left}}.cards{{display:flex;flex-wrap:wrap;gap:8px}}.card{{width:170px;margin:0;font-size:12px}}
.card img{{max-width:160px;max-height:160px;display:block}}.card code{{display:block;color:#a33;word-break:break-all}}
.noimage{{width:160px;height:60px;background:#eee;color:#777;display:flex;align-items:center;justify-content:center}}
figure.plot{{display:inline-block;margin:0 8px 8px 0}}</style></head><body>
<h1>curate run: {title}</h1>
{_header(stats, provenance)}
<section id='stages'><h2>Stages</h2><table><tr><th>stage</th><th>in</th><th>out</th><th>rejected</th><th>reasons</th>
</tr>{rows}</table></section>
{body}</body></html>"""
    with atomic(layout.report) as tmp:
        tmp.write_text(page, encoding="utf-8")
