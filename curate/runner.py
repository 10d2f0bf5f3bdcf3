"""Run a pipeline end to end: plan the input, claim the output folder, run an engine, report."""

from __future__ import annotations

import json
from pathlib import Path

from curate.engines.base import RunLayout, fingerprint
from curate.io.readers import plan_inputs, read_task
from curate.config import ConfigError
from curate.pipeline import Pipeline
from curate.report import write_report


def run_pipeline(pipeline: Pipeline, engine, input_paths: str | list[str] | None = None,
                 output: str | Path | None = None, overwrite: bool = False) -> dict:
    """Run `pipeline` with `engine`; input and output default to the pipeline file's.

    Returns the run's stats (also in OUTPUT/stats.json). A finished identical run in the
    output folder is not redone; an interrupted one resumes.
    """
    input_paths = input_paths or pipeline.settings.input
    output = output or pipeline.settings.output
    if not input_paths:
        raise ConfigError(f"{pipeline.source}: no input: set 'input' in the file or pass --input")
    if not output:
        raise ConfigError(f"{pipeline.source}: no output: set 'output' in the file or pass --output")
    tasks = plan_inputs(input_paths)
    first = next(read_task(tasks[0], 1), None)
    pipeline.check_columns(first.table.column_names if first else [])
    layout = RunLayout(output)
    written = [path for spec in pipeline.stages for path in spec.config.written_paths()]
    if layout.prepare(fingerprint(pipeline.raw, tasks, written), overwrite):
        stats = json.loads(layout.stats.read_text())
        stats["resumed_complete"] = True
        return stats
    stats = engine.run(pipeline, tasks, layout)
    write_report(layout, stats)
    layout.mark_complete()
    return stats
