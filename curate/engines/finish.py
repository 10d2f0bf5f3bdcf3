"""The end of a run: its final assembly (uids.npy, shards/, stats.json, the accounting and uid
checks) from the tasks' parts, and the manifest that marks the output folder complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from curate.engines.layout import RunLayout
from curate.engines.plan import Pass, StageStats, merge_stats, stage_key
from curate.io.assembly import merge_uids, repeated_uids, uid_count
from curate.io.manifest import describe, write_manifest
from curate.io.readers.contract import READ_STAGE, InputError
from curate.io.shards import place_task_tars, reshard
from curate.io.writers import sync_paths, write_json_atomic
from curate.stage import Stage


def finish_run(layout: RunLayout, stages: list[Stage], task_stats: list[dict[str, StageStats]], input_rows: int,
               tasks: list[int], passes: list[Pass], extra: dict, write_uids: bool = True,
               check_uids: bool = True) -> dict:
    """Assemble uids.npy (unless not `write_uids`), shards/ (for a WebDataset layout) and
    stats.json, check kept + rejected == input and (with `check_uids`: the tasks wrote their `all`
    uid parts) that no uid occurs twice, all streaming: uids are merged from sorted parts."""
    ledger_parts = [p for k in range(len(passes)) for t in tasks if (p := layout.ledger_part(k, t)).exists()]
    rejected = sum(pq.ParquetFile(p).metadata.num_rows for p in ledger_parts)
    kept = sum(pq.ParquetFile(layout.kept_parquet(t)).metadata.num_rows for t in tasks)
    repeats, examples = repeated_uids([layout.uid_part("all", t) for t in tasks]) if check_uids else (0, [])
    if repeats:
        raise InputError(f"{repeats} uid(s) occur more than once among the samples (e.g. {examples[0]}, as its "
                         "128-bit hex id): uids must be unique, and one the input gives may equal one curate "
                         "made for another sample; give every sample its own uid, or none to have curate make "
                         "them all")
    pool_parts = [layout.uid_part("pool", t) for t in tasks]
    pool = merge_uids(pool_parts, layout.uids) if write_uids else uid_count(pool_parts)
    if layout.webdataset:
        _assemble_shards(layout, tasks)
    totals = merge_stats(task_stats)
    derived = sum(s.derived for s in totals.values())  # samples stages made from input samples
    if kept + rejected != input_rows + derived:
        raise RuntimeError(f"accounting error: {kept} kept + {rejected} rejected != "
                           f"{input_rows} input rows + {derived} derived samples")
    order = [READ_STAGE] + [k for i, s in enumerate(stages) for k in (stage_key(i, s) + ":fit", stage_key(i, s))]
    stage_rows = []
    for key in order:
        if key not in totals:
            continue
        entry = totals[key].to_dict()
        entry["key"] = key
        stage_rows.append(entry)
    fit_files = {stage_key(p.fit, stages[p.fit]): layout.fit_stats(p.index) for p in passes if p.fit is not None}
    fits = {key: fit for key, path in fit_files.items() if path.exists() and (fit := json.loads(path.read_text()))}
    stats = {"input": input_rows, "kept": kept, "rejected": rejected, "derived": derived,
             "kept_fraction": round(pool / input_rows, 6) if input_rows else 0.0,
             "stages": stage_rows, **({"fits": fits} if fits else {}), **extra}
    write_json_atomic(stats, layout.stats)
    return stats


def _assemble_shards(layout: RunLayout, tasks: list[int]) -> None:
    """shards/ and its sizes.json from the tasks' tars: moved as they are, or resharded into
    `samples_per_shard` samples each (resuming a resharding cut short)."""
    tars = [layout.kept_tar(t) for t in tasks]
    if layout.samples_per_shard is None:
        place_task_tars(tars, layout.shards, [pq.ParquetFile(layout.kept_parquet(t)).metadata.num_rows for t in tasks])
    else:
        for _ in reshard(tars, layout.shards, layout.samples_per_shard, layout.work / "tars" / "reshard.json"):
            pass  # it commits a shard at a time


def mark_complete(layout: RunLayout) -> None:
    """Record the run as finished: drop intermediates (markers and fit states stay, for reruns),
    fsync every output file and folder, mark run.json complete, then write the manifest
    (_SUCCESS: every output file with its size and checksum), last."""
    for sub in layout.work.iterdir():
        if sub.is_dir() and sub.name != "done":
            shutil.rmtree(sub, ignore_errors=True)
    files = layout.output_files()
    sync_paths(files)
    run = json.loads(layout.run_file.read_text())
    write_json_atomic({**run, "complete": True}, layout.run_file, durable=True)
    write_manifest(layout.root, run, _manifest_entries(layout, files))


def _manifest_entries(layout: RunLayout, files: list[Path]) -> dict[str, dict]:
    """Every output file's entry: the one its task hashed (when the file is still the bytes the
    task wrote: same name and size, and no resharding renamed shards), else hashed here (the
    small files of the run's end, and resharded shards)."""
    hashed: dict[str, dict] = {}
    for marker in sorted((layout.work / "done").glob("pass*.json")):
        hashed |= json.loads(marker.read_text()).get("files", {})
    entries, left = {}, []
    for path in files:
        name = path.relative_to(layout.root).as_posix()
        entry = hashed.get(name)
        resharded = layout.samples_per_shard is not None and name.startswith(f"{layout.shards.name}/")
        if entry is not None and not resharded and entry["size"] == path.stat().st_size:
            entries[name] = entry
        else:
            left.append(path)
    return entries | describe(layout.root, left)
