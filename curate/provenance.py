"""How an output was made: OUTPUT/run.json (and the report's header) records the resolved
pipeline (after --set), the command, curate's version, the input files with their sizes,
start and end times, the engine and its workers."""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import datetime, timezone
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
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def input_files(tasks: list) -> list[dict]:
    """Each input file (or image folder) the run read, in task order: path, bytes, tasks and the
    samples read from it where the planner knows them (Parquet; with a limit, the limit)."""
    files: dict[str, dict] = {}
    for task in tasks:
        entry = files.setdefault(task.path, {"path": task.path, "bytes": None, "tasks": 0, "rows": 0})
        entry["tasks"] += 1
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
        "command": command or shlex.join(["curate" if Path(sys.argv[0]).name == "curate" else sys.argv[0],
                                          *sys.argv[1:]]),
        "curate_version": curate_version(),
        "engine": engine.name,
        "workers": engine.workers,
        "output": str(output),
        "started": started,
        "finished": now(),
        "inputs": input_files(tasks),
    }


def write(root: Path, provenance: dict) -> None:
    """Write ROOT/run.json atomically."""
    write_json_atomic(provenance, Path(root) / RUN_FILE)


def read(root: Path) -> dict | None:
    """ROOT/run.json, or None for an output without one (made before provenance was recorded)."""
    path = Path(root) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None
