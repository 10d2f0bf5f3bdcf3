"""How an output was made: OUTPUT/run.json (and the report's header) records the resolved
pipeline (after --set), the command, curate's version, the input files with their sizes,
start and end times, the engine and its workers."""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from curate.io.paths import file_sizes, is_url
from curate.io.writers import write_json_atomic

RUN_FILE = "run.json"


def curate_version() -> str:
    """The installed curate's version (pyproject's), or 'unknown' when it is not installed."""
    try:
        return metadata.version("curate")
    except metadata.PackageNotFoundError:
        return "unknown"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def input_files(tasks: list) -> list[dict]:
    """Each input file (or image folder) the run read, in task order: path, kind (parquet, tar,
    files, url_list), bytes, tasks and the samples read from it where the planner knows them
    (Parquet; with a limit, the limit)."""
    files: dict[str, dict] = {}
    for task in tasks:
        entry = files.setdefault(task.path, {"path": task.path, "kind": task.kind, "bytes": None, "tasks": 0,
                                             "rows": 0})
        entry["tasks"] += 1
        if task.limit is not None:  # a run with a limit: each task's share, to read the same samples again
            entry.setdefault("limits", []).append(task.limit)
        entry["rows"] = None if entry["rows"] is None or task.rows is None else entry["rows"] + task.rows
    plain = [path for path, entry in files.items() if is_url(path) or os.path.isfile(path)]
    for path, size in zip(plain, file_sizes(plain) if plain else []):
        files[path]["bytes"] = size
    for path, entry in files.items():
        if entry["bytes"] is None and not is_url(path) and os.path.isdir(path):
            entry["bytes"] = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    return list(files.values())


def record(pipeline, engine, tasks: list, output: str, started: str, command: str | None = None) -> dict:
    """The provenance of a finished run (`started` from `now()` at its start)."""
    return {
        "pipeline_file": pipeline.source,
        "pipeline": json.loads(json.dumps(pipeline.raw, default=str)),  # YAML dates and the like as text
        "command": command or shlex.join([_program(sys.argv[0]), *sys.argv[1:]]),
        "curate_version": curate_version(),
        "engine": engine.name,
        "workers": engine.workers,
        "output": str(output),
        "started": started,
        "finished": now(),
        "inputs": input_files(tasks),
    }


def _program(argv0: str) -> str:
    """`curate` for the command line (its script, or `python -m curate.cli`), else argv[0]."""
    module = Path(__file__).parent / "cli" / "__main__.py"
    return "curate" if Path(argv0).name == "curate" or Path(argv0).resolve() == module else argv0


def write(root: Path, provenance: dict) -> None:
    """Write ROOT/run.json atomically."""
    write_json_atomic(provenance, Path(root) / RUN_FILE)


def read(root: Path) -> dict | None:
    """ROOT/run.json, or None for an output without one (made before provenance was recorded)."""
    path = Path(root) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def input_tasks(provenance: dict) -> list:
    """The run's input tasks, rebuilt from run.json's input list (a Parquet file's tasks are its
    first row groups, any other input one task, each with its limit in a run with one), indexed
    as the run indexed them."""
    from curate.io.readers.contract import InputTask

    tasks = []
    for entry in provenance["inputs"]:
        limits = entry.get("limits") or [None] * entry["tasks"]
        for row_group, limit in zip(range(entry["tasks"]), limits):
            tasks.append(InputTask(len(tasks), entry["kind"], entry["path"], row_group, limit=limit))
    return tasks


def read_limits(provenance: dict):
    """The readers' limits the run used (its pipeline's max_member_bytes, max_caption_bytes, on_unreadable)."""
    from curate.io.readers.contract import ReadLimits

    pipeline = provenance["pipeline"]
    default = ReadLimits()
    return ReadLimits(pipeline.get("max_member_bytes", default.max_member_bytes),
                      pipeline.get("max_caption_bytes", default.max_caption_bytes),
                      pipeline.get("on_unreadable", default.on_unreadable))
