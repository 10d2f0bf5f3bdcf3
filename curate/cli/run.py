"""`curate run`, `download`, `validate`, `verify`, `stages` and `inspect`: curation runs, their
pipelines and their outputs."""

from __future__ import annotations

import sys

import click

from curate.cli.errors import UserError, user_errors
from curate.pipeline import load_pipeline


def engine_options(fn):
    """The options that choose and size an engine, shared by `run` and `download`."""
    options = [
        click.option("--engine", type=click.Choice(["local", "ray", "spark"]), default="local", show_default=True,
                     help="Where to run."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Worker processes or actors [default: this machine's cores; on Ray, the cluster's CPUs]."),
        click.option("--address", help="Ray: join this cluster (host:port or 'auto') instead of starting a local Ray."),
        click.option("--master", help="Spark: master URL, e.g. spark://head:7077 [default: local[workers]]."),
        click.option("--overwrite", is_flag=True, help="Replace an output folder that holds another run."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--input", "input_paths", multiple=True, help="Input path(s); overrides the pipeline's input.")
@click.option("--output", help="Output folder or URL (s3://...); overrides the pipeline's output.")
@click.option("--staging", type=click.Path(file_okay=False),
              help="With an output URL: the local folder the run works in before publishing (on Ray or Spark, one "
                   "every node mounts) [default: under ~/.cache/curate/staging].")
@engine_options
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key, e.g. stages[1].min_words=3.")
@click.option("--limit", type=click.IntRange(min=1), help="Read only the input's first N samples (a quick try; the "
                                                         "pipeline's `limit` key).")
@click.option("--verify", "checksums", is_flag=True,
              help="When the output holds this run, finished: check every file's checksum against its manifest "
                   "(reads them all), not only its size, before reusing it.")
@user_errors
def run(pipeline, input_paths, output, staging, engine, workers, address, master, overwrite, overrides, limit,
        checksums, quiet):
    """Run PIPELINE (a YAML file): filter, dedup and write shards, ledger, stats and report."""
    spec = load_pipeline(pipeline, list(overrides) + ([f"limit={limit}"] if limit else []))
    _run_and_summarize(spec, _engine(engine, workers, address, master, quiet), list(input_paths) or None, output,
                       overwrite, staging, checksums)


def _engine(engine: str, workers: int | None, address: str | None, master: str | None, quiet: bool):
    from curate.engines import make_engine

    if address and engine != "ray" or master and engine != "spark":
        raise UserError("--address goes with --engine ray, --master with --engine spark")
    return make_engine(engine, workers, address, master, not quiet)


def _run_and_summarize(spec, engine, input_paths, output, overwrite, staging=None, checksums=False) -> None:
    from curate.runner import run_pipeline

    stats = run_pipeline(spec, engine, input_paths, output, overwrite, staging, checksums=checksums)
    out = str(output or spec.settings.output).rstrip("/")  # a string: Path would mangle s3://
    if stats.get("resumed_complete"):
        checked = "sizes and checksums" if checksums else "sizes"
        click.echo(f"{out} already holds this finished run (its files' {checked} match its manifest): not redone")
    click.echo(f"\n{spec.name}: {stats['input']} in -> {stats['kept']} kept ({100 * stats['kept_fraction']:.1f}%), "
               f"{stats['rejected']} rejected")
    for stage in stats["stages"]:
        if stage["rejected"]:
            reasons = ", ".join(f"{r} {n}" for r, n in stage["reasons"].items())
            click.echo(f"  {stage['key']:<24} -{stage['rejected']:<7} {reasons}")
    click.echo(f"shards:  {out}/shards\nparquet: {out}/parquet\nledger:  {out}/rejected.parquet\n"
               f"report:  {out}/report.html\nstats:   {out}/stats.json")


@click.command()
@click.argument("output")
@click.option("--sizes-only", is_flag=True, help="Check sizes only (reads no file), not checksums.")
@user_errors
def verify(output, sizes_only):
    """Check a finished run's OUTPUT (folder or URL) against its manifest (_SUCCESS): every file
    there, of its size and checksum; prints each problem and exits 1 if there is any."""
    from curate.io.manifest import verify as check

    problems = check(output, checksums=not sizes_only)
    for problem in problems:
        click.echo(f"{output}: {problem}")
    if problems:
        sys.exit(1)
    click.echo(f"{output}: every file matches its manifest ({'sizes' if sizes_only else 'sizes and checksums'})")


@click.command()
@click.argument("urls", nargs=-1, required=True)
@click.option("--output", required=True, help="Output folder.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True)
@click.option("--retries", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=32, show_default=True,
              help="Downloads in flight per worker.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=20_000_000, show_default=True)
@click.option("--image-size", type=click.IntRange(min=1), help="Resize with img2dataset's resizer to this size.")
@click.option("--resize-mode", type=click.Choice(["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"]),
              default="border", show_default=True, help="img2dataset resize mode (with --image-size).")
@engine_options
@user_errors
def download(urls, output, timeout, retries, threads, max_bytes, image_size, resize_mode, engine, workers, address,
             master, overwrite, quiet):
    """Download URL lists (CSV/TSV/JSONL/Parquet with url and caption) into shards; failures go to the ledger."""
    from curate.pipeline import parse_pipeline

    stages = [{"stage": "download", "timeout": timeout, "retries": retries, "threads": threads, "max_bytes": max_bytes}]
    if image_size:
        stages.append({"stage": "resize", "image_size": image_size, "resize_mode": resize_mode})
    stages.append({"stage": "decode"})
    spec = parse_pipeline({"name": "download", "stages": stages}, "curate download")
    _run_and_summarize(spec, _engine(engine, workers, address, master, quiet), list(urls), output, overwrite)


@click.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--input", "input_paths", multiple=True,
              help="Check the stages against this input's columns (a metadata Parquet has no images, say).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key before validating.")
@user_errors
def validate(pipeline, input_paths, overrides):
    """Check a pipeline file without running it: every key, the files it names (input, checkpoints,
    metadata) and, with --input, the stages against that input's columns."""
    from curate.pipeline import missing_files

    spec = load_pipeline(pipeline, list(overrides))
    problems = missing_files(spec, list(input_paths) or None)
    if problems:
        raise UserError("\n".join(problems))
    if input_paths:
        from curate.runner import plan_checked

        tasks = plan_checked(spec, list(input_paths))
        against = f"against {', '.join(input_paths)} ({len(tasks)} task(s))"
    else:
        spec.check_columns()
        against = "no input given: pass --input to check its columns"
    click.echo(f"{pipeline}: ok ({spec.name}: {' -> '.join(s.name for s in spec.stages)}; {against})")


@click.command()
def stages():
    """List the registered stages with their parameters (and the values a parameter allows)."""
    from curate.stage import GlobalStage
    from curate.stages import REGISTRY

    for name, cls in REGISTRY.items():
        kind = "global" if issubclass(cls, GlobalStage) else "map"
        click.echo(f"{name} ({kind}): {cls.summary()}")
        choices = getattr(cls.Config, "choices", {})
        for field, info in cls.Config.model_fields.items():
            doc = f"  {info.description}" if info.description else ""
            default = "(required)" if info.is_required() else f"= {info.default!r}"
            click.echo(f"    {field}: {_type_name(info.annotation)} {default}{doc}")
            allowed = _literal_values(info.annotation) or choices.get(field)
            if allowed:
                click.echo(f"      allowed: {', '.join(map(str, allowed))}")
        if cls.reasons:
            click.echo(f"    rejects: {', '.join(cls.reasons)}")


def _type_name(annotation) -> str:
    """A parameter's type as a reader writes it (`int`, `list[str] | None`, `Literal[...]`)."""
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def _literal_values(annotation) -> list:
    """The values a Literal annotation allows, also inside Optional, unions and lists; [] if none."""
    from typing import Literal, get_args, get_origin

    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [v for arg in get_args(annotation) for v in _literal_values(arg)]


@click.command()
@click.argument("output", type=click.Path(file_okay=False, exists=True))
@click.option("--reason", required=True,
              help="A rejection reason of the run (stats.json lists them), e.g. near_duplicate.")
@click.option("--stage", help="Only the rejections of this stage (when several give the reason).")
@click.option("--n", "count", type=click.IntRange(min=1), default=20, show_default=True, help="Samples to show.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write: a .html page or a .parquet file [default: inspect-REASON.html here].")
@user_errors
def inspect(output, reason, stage, count, out):
    """Show OUTPUT's rejected samples of one reason with their images and captions (for a duplicate,
    the sample kept in its place beside it), as an HTML page or a Parquet file."""
    from curate.inspection import inspect_rejected, write_inspection

    table = inspect_rejected(output, reason, count, stage)
    path = write_inspection(table, out or f"inspect-{reason}.html", f"{output}: {reason} ({table.num_rows} samples)")
    click.echo(f"{table.num_rows} samples rejected with {reason} -> {path}")
