"""`curate inspect`: a finished run's rejected samples of one reason joined back to their images
and captions (and, for duplicates, the sample kept in their place), as an HTML page or a Parquet
file. The samples are the report's seeded choice (curate.samples), so the first ones shown are
the report's."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pyarrow as pa

from curate import provenance as runs
from curate import samples
from curate.config import ConfigError, suggest
from curate.engines.layout import RunLayout
from curate.io.writers import atomic, write_table_atomic

COLUMNS = ["uid", "stage", "reason", "value", "text", "image", "url", "kept_uid", "kept_status", "kept_text",
           "kept_image"]
SCHEMA = pa.schema([("uid", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("value", pa.string()),
                    ("text", pa.string()), ("image", pa.binary()), ("url", pa.string()), ("kept_uid", pa.string()),
                    ("kept_status", pa.string()), ("kept_text", pa.string()), ("kept_image", pa.binary())])


def inspect_rejected(output: str | Path, reason: str, n: int = 20, stage: str | None = None,
                     seed: int = 0) -> pa.Table:
    """Up to `n` samples the run in `output` rejected with `reason` (of `stage`, if given), with
    their input's text, image and url; for a duplicate reason, the sample kept in its place
    (kept_uid, its text and image, and kept_status: `kept`, or the reason a later stage gave).
    The choice is the report's (seed 0): the report's examples come first."""
    layout = RunLayout(output)
    if not layout.stats.is_file():
        raise ConfigError(f"{output}: no stats.json: not a finished curate run")
    provenance = runs.read(layout.root)
    if provenance is None:
        raise ConfigError(f"{output}: no run.json (how the output was made): it was written by an older curate; "
                          "run the pipeline again to inspect it")
    counts = samples.reason_counts(json.loads(layout.stats.read_text()))
    keys = {key: count for key, count in counts.items() if key[1] == reason and stage in (None, key[0])}
    if not keys:
        known = sorted({r for _, r in counts})
        raise ConfigError(f"{output}: no sample was rejected with reason {reason!r}"
                          + (f" by stage {stage!r}" if stage else "") + f"; {suggest(reason, known)}"
                          f"reasons in this run: {', '.join(known) or 'none'}")
    tasks = runs.input_tasks(provenance)
    limits = runs.read_limits(provenance)
    picked = samples.pick_rejected(layout, [t.index for t in tasks], {k: min(n, c) for k, c in keys.items()}, seed)
    by_index = {t.index: t for t in tasks}
    inputs = samples.read_inputs(picked, by_index, limits, layout=layout)
    rows = [{**row, **{c: inputs.get(row["uid"], {}).get(c) for c in ("text", "image", "url")}}
            for row in picked.to_pylist()]
    if reason in samples.DUPLICATE_REASONS:
        _join_kept(layout, rows, [t.index for t in tasks], by_index, limits)
    return pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in rows], schema=SCHEMA)


def _join_kept(layout, rows: list[dict], task_indices: list[int], tasks: dict, limits) -> None:
    """Fill kept_* of each duplicate from the sample its ledger value names: from the kept
    parts, or (when a later stage rejected it) from its input, with that stage's reason."""
    wanted = [row["value"] for row in rows if row["value"]]
    kept = samples.find_kept(layout, task_indices, wanted, ["uid", "text", "image"])
    found = {row["uid"]: {**row, "status": "kept"} for row in (kept.to_pylist() if kept is not None else [])}
    later = samples.find_rejected(layout, task_indices, [uid for uid in wanted if uid not in found])
    if later.num_rows:
        read = samples.read_inputs(later, tasks, limits, layout=layout)
        for row in later.to_pylist():
            source = read.get(row["uid"], {})
            found[row["uid"]] = {"text": source.get("text"), "image": source.get("image"),
                                 "status": f"rejected later: {row['stage']}: {row['reason']}"}
    for row in rows:
        match = found.get(row["value"])
        if match is not None:
            row.update(kept_uid=row["value"], kept_status=match["status"], kept_text=match["text"],
                       kept_image=match["image"])


def write_inspection(table: pa.Table, path: str | Path, title: str) -> Path:
    """Write the inspected samples as Parquet (a `.parquet` path) or as an HTML page."""
    path = Path(path)
    if path.suffix == ".parquet":
        write_table_atomic(table, path)
        return path
    from curate.report import card

    rows = []
    for row in table.to_pylist():
        note = f"{row['reason']}: {row['value']}" if row["value"] is not None else row["reason"]
        rejected = card(row["image"], row["text"], note, f"<br><small>{html.escape(row['uid'])}</small>")
        kept = ""
        if row["kept_uid"] is not None:
            kept = card(row["kept_image"], row["kept_text"], row["kept_status"],
                        f"<br><small>{html.escape(row['kept_uid'])}</small>")
        rows.append(f"<tr><td>{rejected}</td><td>{kept}</td></tr>")
    kept_header = "<th>kept in its place</th>" if any(r["kept_uid"] for r in table.to_pylist()) else "<th></th>"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}td{vertical-align:top;padding:4px 12px}.card{margin:0;"
            "font-size:12px;width:200px}.card code{display:block;color:#a33;word-break:break-all}"
            ".noimage{width:160px;height:60px;background:#eee;color:#777}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table id='inspected'><tr><th>rejected</th>{kept_header}</tr>"
            f"{''.join(rows)}</table></body></html>")
    with atomic(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
