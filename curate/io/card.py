"""The output's dataset card, OUTPUT/README.md, so `datasets.load_dataset(OUTPUT)` gives the kept samples.

Hugging Face reads a dataset folder's README.md YAML front matter: its `configs` name the data
files of each config (`default`: the kept Parquet parts; `rejected`: the ledger's parts), so the
loader never guesses from the folder's other files (the ledger's other schema, the WebDataset
shards, `_work/`); `dataset_info` gives each config's features (from the Parquet schemas) and
split sizes (checked by the loader against what it reads). The body tells a person what the set
is: counts by stage and reason (stats.json, each global stage's fit row folded into it by
`fold_fits`, which the report's funnel shares), the pipeline and provenance (run.json), the columns
and their types, and how to load it with datasets, webdataset and DuckDB.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from curate import provenance
from curate.io.writers import atomic
from curate.schema import LEDGER_SCHEMA

if TYPE_CHECKING:
    from curate.engines.layout import RunLayout

CARD = "README.md"
KEPT_FILES = "parquet/part-*.parquet"
REJECTED_FILES = "rejected.parquet/*.parquet"
_VALUE_NAMES = {"float": "float32", "double": "float64", "halffloat": "float16", "date32[day]": "date32",
                "date64[ms]": "date64"}  # arrow's names that datasets' Value spells otherwise
_LOAD_BATCH = 1024  # rows per batch datasets reads (else a file's first row group's size: 0 in an empty part)
_LISTED_INPUTS = 20  # input files the card names; the rest are counted (run.json has them all)


def features(schema: pa.Schema) -> list[dict]:
    """A schema as the card's `dataset_info.features` (datasets' YAML form: name and dtype, list, struct)."""
    return [{"name": field.name, **_feature(field.type)} for field in schema]


def _feature(kind: pa.DataType) -> dict:
    if pa.types.is_dictionary(kind):
        return _feature(kind.value_type)
    if pa.types.is_struct(kind):
        return {"struct": features(pa.schema([kind.field(i) for i in range(kind.num_fields)]))}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        item = _feature(kind.value_type)
        item = item.get("dtype") or item.get("struct") or item  # short forms: `list: string`, `list: [fields]`
        length = {"length": kind.list_size} if pa.types.is_fixed_size_list(kind) else {}
        return {"large_list" if pa.types.is_large_list(kind) else "list": item, **length}
    return {"dtype": _VALUE_NAMES.get(str(kind), str(kind))}


def write_card(layout: RunLayout, stats: dict) -> None:
    """Write OUTPUT/README.md for a finished run (its stats, run.json and kept Parquet parts written)."""
    parts = sorted(layout.parquet.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{layout.parquet}: no kept Parquet parts to describe in the dataset card")
    kept_schema = pq.read_schema(parts[0])
    has_ledger = any(layout.rejected.glob("*.parquet"))  # a run that rejected nothing has no ledger parts
    run = provenance.read(layout.root) or {}
    meta = {"configs": [_config("default", KEPT_FILES) | {"default": True}],
            "dataset_info": [_info("default", kept_schema, parts)]}
    if has_ledger:
        meta["configs"].append(_config("rejected", REJECTED_FILES))
        meta["dataset_info"].append(_info("rejected", LEDGER_SCHEMA, sorted(layout.rejected.glob("*.parquet"))))
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    with atomic(layout.root / CARD) as tmp:
        tmp.write_text(f"---\n{front}---\n\n{_body(layout, stats, run, kept_schema, has_ledger)}", encoding="utf-8")


def _config(name: str, files: str) -> dict:
    return {"config_name": name, "data_files": [{"split": "train", "path": files}], "batch_size": _LOAD_BATCH}


def _info(config: str, schema: pa.Schema, files: list[Path]) -> dict:
    """A config's features and its one split's size, from the files' Parquet footers: rows (the
    loader checks them against what it reads) and uncompressed bytes (about the Arrow size)."""
    footers = [pq.ParquetFile(path).metadata for path in files]
    rows = sum(meta.num_rows for meta in footers)
    size = sum(meta.row_group(i).total_byte_size for meta in footers for i in range(meta.num_row_groups))
    return {"config_name": config, "features": features(schema),
            "splits": [{"name": "train", "num_bytes": size, "num_examples": rows}]}


def fold_fits(stages: list[dict]) -> list[dict]:
    """Stats rows with each global stage's `:fit` row (its own rejections while the fit rows were
    made) folded into the stage's row: in from the fit row, out from the stage's, reasons summed."""
    folded: list[dict] = []
    fits = {s["key"].removesuffix(":fit"): s for s in stages if s["key"].endswith(":fit")}
    for stage in stages:
        if stage["key"].endswith(":fit"):
            if stage["key"].removesuffix(":fit") not in {s["key"] for s in stages}:
                folded.append({**stage, "key": stage["key"].removesuffix(":fit")})
            continue
        fit = fits.get(stage["key"])
        if fit is not None:
            reasons = Counter(fit["reasons"]) + Counter(stage["reasons"])
            stage = {**stage, "in": fit["in"], "rejected": fit["rejected"] + stage["rejected"],
                     "reasons": dict(sorted(reasons.items()))}
        folded.append(stage)
    return folded


def _body(layout: RunLayout, stats: dict, run: dict, kept_schema: pa.Schema, has_ledger: bool) -> str:
    where = run.get("output") or str(layout.root)  # the output as given (a URL's, not its staging folder)
    name = stats.get("pipeline") or run.get("pipeline", {}).get("name") or "curate run"
    lines = [f"# {name}", "",
             f"Image-text pairs curated by curate {run.get('curate_version', '')}: {stats['input']:,} input samples, "
             f"{stats['kept']:,} kept, {stats['rejected']:,} rejected"
             + (f", {stats['derived']:,} derived" if stats.get("derived") else "")
             + ". Every input sample is kept or in the rejection ledger with its stage and reason.", "",
             "## Counts", "", "| stage | in | out | reason | rejected |", "|---|---:|---:|---|---:|"]
    for stage in fold_fits(stats["stages"]):
        reasons = stage["reasons"] or {"": 0}
        for i, (reason, count) in enumerate(reasons.items()):
            head = (f"`{stage['key']}` | {stage['in']} | {stage['out']}" if i == 0 else " | | ")
            lines.append(f"| {head} | {reason} | {count if reason else ''} |")
    lines += ["", "## Pipeline", ""]
    if run.get("command"):
        lines += [f"Made by `{run['command']}` on the {run.get('engine')} engine ({run.get('workers')} workers).", ""]
    pipeline = run.get("pipeline") or {"name": name}
    lines += ["```yaml", yaml.safe_dump(pipeline, sort_keys=False, allow_unicode=True).rstrip(), "```", "",
              "## Columns", "", f"Kept samples (`{KEPT_FILES}`):", "", "| column | type |", "|---|---|"]
    lines += [f"| `{field.name}` | `{field.type}` |" for field in kept_schema]
    if has_ledger:
        lines += ["", f"Rejection ledger (`{REJECTED_FILES}`), one row per rejected sample: "
                  + ", ".join(f"`{field.name}` ({field.type})" for field in LEDGER_SCHEMA) + "."]
    lines += ["", "## Loading", "", "```python", "from datasets import load_dataset",
              f"kept = load_dataset({where!r})[\"train\"]"
              + "  # image: encoded bytes; .cast_column(\"image\", datasets.Image()) decodes them"]
    if has_ledger:
        lines.append(f"rejected = load_dataset({where!r}, \"rejected\")[\"train\"]")
    lines += ["```", "", "```sql", f"SELECT * FROM read_parquet('{where}/{KEPT_FILES}');  -- DuckDB"]
    if has_ledger:
        lines.append(f"SELECT stage, reason, count(*) FROM read_parquet('{where}/{REJECTED_FILES}') GROUP BY ALL;")
    lines.append("```")
    sizes = layout.shards / "sizes.json"
    if sizes.is_file() and (shards := sorted(json.loads(sizes.read_text()))):
        pattern = _brace(shards)
        lines += ["", "WebDataset shards (`{uid}.jpg`/`.png`, `.txt`, `.json`), with open_clip's `sizes.json`:", "",
                  "```python", "import webdataset as wds",
                  f"samples = wds.WebDataset({f'{where}/shards/{pattern}'!r}).decode(\"pil\")", "```", "",
                  f"`open_clip_train --train-data '{where}/shards/{pattern}' --dataset-type webdataset`"]
    lines += ["", "## Provenance", ""]
    lines += [f"- {key}: {run[key]}" for key in ("curate_version", "started", "finished", "engine", "workers",
                                                 "pipeline_file") if run.get(key) is not None]
    inputs = run.get("inputs", [])
    for entry in inputs[:_LISTED_INPUTS]:
        size = f", {entry['bytes']:,} bytes" if entry.get("bytes") is not None else ""
        rows = f", {entry['rows']:,} rows" if entry.get("rows") is not None else ""
        lines.append(f"- input: `{entry['path']}` ({entry['kind']}{size}{rows})")
    if len(inputs) > _LISTED_INPUTS:
        lines.append(f"- and {len(inputs) - _LISTED_INPUTS} more input files (run.json lists them all)")
    lines += ["", "`run.json` holds the full record, `stats.json` the counts, `report.html` the report with example "
              "images per rejection reason, and `_SUCCESS` the manifest (every file's size and checksum: "
              "`curate verify`)."]
    return "\n".join(lines) + "\n"


def _brace(names: list[str]) -> str:
    """The shards as one brace pattern (`part-{00000..00028}.tar`) when they are numbered parts, else the first."""
    numbers = [n.removeprefix("part-").removesuffix(".tar") for n in names]
    if len(names) > 1 and all(n.isdigit() for n in numbers):
        return f"part-{{{numbers[0]}..{numbers[-1]}}}.tar"
    return names[0]
