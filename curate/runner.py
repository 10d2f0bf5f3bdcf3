"""Run a pipeline end to end: plan the input, claim the output folder, run an engine, report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from curate import provenance
from curate.config import ConfigError
from curate.engines.finish import mark_complete
from curate.engines.layout import RunLayout, fingerprint
from curate.engines.lock import output_lock
from curate.io import publish
from curate.io.card import write_card
from curate.io.paths import is_url
from curate.io.readers.contract import InputTask, ReadLimits
from curate.io.readers.tasks import holds_images, plan_inputs, read_task
from curate.pipeline import Pipeline, missing_files
from curate.report import write_report
from curate.schema import INPUT_SCHEMA


def run_pipeline(pipeline: Pipeline, engine, input_paths: str | list[str] | None = None,
                 output: str | Path | None = None, overwrite: bool = False, staging: str | Path | None = None,
                 command: str | None = None, checksums: bool = False) -> dict:
    """Run `pipeline` with `engine`; input and output default to the pipeline file's.

    Returns the run's stats (also in OUTPUT/stats.json). A finished identical run in the
    output folder is not redone when its files match its manifest (sizes; with `checksums`, their
    bytes too); an interrupted one resumes. An output URL (s3://, gs://, ...)
    is run in the local folder `staging` (default: one derived from the URL under the user's
    cache, see curate.io.publish) and published to the URL when the run finishes. OUTPUT/run.json
    records how the output was made (`command`: what started the run, default this process's argv).
    The output folder (or staging folder) is locked for the run: a second run into it is refused.
    """
    started = provenance.now()
    input_paths = input_paths or pipeline.settings.input
    output = output or pipeline.settings.output
    if not input_paths:
        raise ConfigError(f"{pipeline.source}: no input: set 'input' in the file or pass --input")
    if not output:
        raise ConfigError(f"{pipeline.source}: no output: set 'output' in the file or pass --output")
    if problems := missing_files(pipeline, input_paths):
        raise ConfigError("\n".join(problems))
    tasks = plan_checked(pipeline, input_paths)
    written = [path for spec in pipeline.stages for path in spec.config.written_paths()]
    inputs = [input_paths] if isinstance(input_paths, str) else [*input_paths]
    inputs = [*inputs, *{t.path for t in tasks}]
    run_id = fingerprint(pipeline.raw, tasks, written)
    url = str(output) if is_url(output) else None
    if staging and not url:
        raise ConfigError(f"staging {staging}: a staging folder goes with an output URL, not the folder {output}")
    settings = pipeline.settings
    layout = RunLayout((staging or publish.staging_folder(url)) if url else output, "webdataset" in settings.outputs,
                       settings.samples_per_shard)
    with output_lock(layout.root):
        if url and (published := publish.claim(url, run_id, overwrite, inputs, checksums)) is not None:
            return published
        overwrite = overwrite or bool(url and staging is None)  # a stale run in curate's own staging folder is replaced
        if layout.prepare(run_id, overwrite, inputs, checksums):
            stats = json.loads(layout.stats.read_text())
            if not url:  # at a URL, the run is published only now
                stats["resumed_complete"] = True
        else:
            stats = engine.run(pipeline, tasks, layout)
            record = provenance.record(pipeline, engine, tasks, str(url or output), started, command)
            provenance.write(layout.root, record)
            write_report(layout, stats)
            write_card(layout, stats)  # README.md: load_dataset(OUTPUT) gives the kept samples
            mark_complete(layout)
        if url:
            publish.publish(layout.root, url)
    return stats


def plan_checked(pipeline: Pipeline, input_paths: str | list[str]) -> list[InputTask]:
    """The input's tasks, once every stage is checked against the input's columns (read from its
    first batch), before any work; without image bytes in every input file the input is metadata,
    and a stage that needs images fails here. (The uids the input gives are checked by the engine
    before any stage runs: curate.engines.uniqueness.)"""
    tasks = plan_inputs(input_paths)
    if pipeline.settings.limit is not None:
        tasks = first_samples(tasks, pipeline.settings.limit, pipeline.settings.read_limits())
    first = next(read_task(tasks[0], 1, pipeline.settings.read_limits()), None)
    columns = first.table.column_names if first else list(INPUT_SCHEMA.names)
    if not all(holds_images(task) for task in {task.path: task for task in tasks}.values()):
        columns = [c for c in columns if c != "image"]
    pipeline.check_columns(columns)
    return tasks


def first_samples(tasks: list[InputTask], limit: int, read_limits=None) -> list[InputTask]:
    """The tasks holding the input's first `limit` samples, in order, the last cut to its share
    (`curate run --limit`). A task of unknown size (a tar, a folder) is counted by reading it, up
    to the samples still wanted."""
    chosen, left = [], limit
    for task in tasks:
        if left <= 0:
            break
        rows = task.rows
        if rows is None:
            batches = read_task(replace(task, limit=left), 1024, read_limits or ReadLimits())
            rows = sum(batch.table.num_rows for batch in batches)
        take = min(rows, left)
        chosen.append(replace(task, rows=take, limit=take))
        left -= take
    return chosen
