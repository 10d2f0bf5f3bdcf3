"""The `curate` command line."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

from curate.config import ConfigError
from curate.io.readers import InputError
from curate.metadata import WORDNET_DIR, MetadataError
from curate.pipeline import load_pipeline
from train.copydetect.cli import train_copydetect_command
from train.eval.cli import eval_command
from train.launch import launch_options
from train.llava.cli import caption_command, export_llava_command, train_llava_command


class UserError(click.ClickException):
    """A problem with the user's input or files: printed without a traceback, exit code 2."""

    exit_code = 2


def _user_errors(fn):
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, InputError, MetadataError, FileExistsError, FileNotFoundError) as exc:
            raise UserError(str(exc)) from exc

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


@click.group()
@click.version_option(package_name="curate", prog_name="curate", message="%(prog)s %(version)s")
def main() -> None:
    """curate: curate image-text pretraining data and score every data choice end to end."""


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


@main.command()
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
@_user_errors
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


@main.command()
@click.argument("output")
@click.option("--sizes-only", is_flag=True, help="Check sizes only (reads no file), not checksums.")
@_user_errors
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


@main.command()
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
@_user_errors
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


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--input", "input_paths", multiple=True,
              help="Check the stages against this input's columns (a metadata Parquet has no images, say).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key before validating.")
@_user_errors
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


@main.command()
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


@main.command()
@click.argument("output", type=click.Path(file_okay=False, exists=True))
@click.option("--reason", required=True,
              help="A rejection reason of the run (stats.json lists them), e.g. near_duplicate.")
@click.option("--stage", help="Only the rejections of this stage (when several give the reason).")
@click.option("--n", "count", type=click.IntRange(min=1), default=20, show_default=True, help="Samples to show.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write: a .html page or a .parquet file [default: inspect-REASON.html here].")
@_user_errors
def inspect(output, reason, stage, count, out):
    """Show OUTPUT's rejected samples of one reason with their images and captions (for a duplicate,
    the sample kept in its place beside it), as an HTML page or a Parquet file."""
    from curate.inspection import inspect_rejected, write_inspection

    table = inspect_rejected(output, reason, count, stage)
    path = write_inspection(table, out or f"inspect-{reason}.html", f"{output}: {reason} ({table.num_rows} samples)")
    click.echo(f"{table.num_rows} samples rejected with {reason} -> {path}")


@main.group()
def train():
    """Train models on curated shards."""


@train.command("clip")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Training config (YAML).")
@click.option("--data", help="Curated output folder (or shard files); overrides the config's data.")
@click.option("--output", help="Run folder [default: runs/<config name>].")
@click.option("--samples-seen", type=click.IntRange(min=1), help="Override the samples-seen budget.")
@launch_options
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. lr=0.001.")
@_user_errors
def train_clip_command(config_path, data, output, samples_seen, launch_with, overrides):
    """Train a CLIP (InfoNCE or SigLIP) on curated shards at a fixed samples-seen budget; resumes a run folder."""
    from curate.config import updated
    from train.clip.config import load_clip_config
    from train.launch import launch

    output = output or f"runs/{Path(config_path).stem}"
    args = [config_path, "--output", output] + (["--data", data] if data else []) + \
        (["--samples-seen", str(samples_seen)] if samples_seen else []) + [a for o in overrides for a in ("--set", o)]
    flags = {key: value for key, value in (("data", data), ("samples_seen", samples_seen)) if value}
    config = updated(load_clip_config(config_path, list(overrides)), config_path, **flags)  # fail fast

    def here() -> None:
        from train.clip.train import train_clip

        train_clip(config, output)

    launch("train.clip.train", args, launch_with, here)
    click.echo(f"{config.model} trained: {output}/last.pt (log: {output}/log.jsonl)")


@main.command()
@click.argument("ablation", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key, e.g. samples_seen=2000.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_user_errors
def ablate(ablation, overrides, quiet):
    """Curate -> train -> evaluate every recipe and seed of ABLATION; write the leaderboard."""
    from curate.ablate import load_ablation, run_ablation

    _experiment(load_ablation(ablation, list(overrides)), run_ablation, quiet)


@main.command()
@click.argument("bootstrap_file", metavar="BOOTSTRAP", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key, e.g. rounds=3.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_user_errors
def bootstrap(bootstrap_file, overrides, quiet):
    """Rounds of CLIP scorers: each round's CLIP picks the next round's data; every round on the leaderboard."""
    from curate.bootstrap import load_bootstrap, run_bootstrap

    _experiment(load_bootstrap(bootstrap_file, list(overrides)), run_bootstrap, quiet)


def _experiment(config, run, quiet: bool) -> None:
    """Run an ablation or bootstrap experiment and print its leaderboard."""
    from curate.ablate import ContaminationError

    try:
        rows = run(config, progress=not quiet)
    except ContaminationError as exc:
        raise UserError(str(exc)) from exc
    click.echo(Path(config.output, "leaderboard.md").read_text())
    click.echo(f"leaderboard: {config.output}/leaderboard.md, .csv and .png ({len(rows)} rows)")


@main.group()
def sample():
    """Build sample data sets."""


@sample.command("openclipart")
@click.option("--out", default="data/openclipart", show_default=True, type=click.Path(file_okay=False))
@click.option("--source", default="/usr/share/openclipart/svg", show_default=True, type=click.Path(file_okay=False))
@click.option("--limit", type=click.IntRange(min=1), help="Render only this many drawings, spread evenly (tests).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Render processes (default: all cores).")
@click.option("--eval-percent", type=click.IntRange(0, 100), default=10, show_default=True,
              help="Share of drawings held out as the eval split.")
@click.option("--max-side", type=click.IntRange(min=16), default=512, show_default=True,
              help="Cap on the longer side of a rendered image.")
@_user_errors
def openclipart(out, source, limit, workers, eval_percent, max_side):
    """Render Debian's openclipart-svg drawings into a pool and a held-out eval split."""
    from curate.sample.openclipart import build_pool

    summary = build_pool(Path(out), Path(source), workers, limit, eval_percent, max_side)
    click.echo(f"{summary['rendered']} of {summary['svgs']} drawings rendered ({summary['failed']} failed, listed in "
               f"{out}/summary.json): {summary['pool']} in {out}/pool, {summary['eval']} in {out}/eval")


@main.group()
def metadata():
    """Concept metadata for MetaCLIP-style balancing (concept_match, concept_balance)."""


@metadata.command("build")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Metadata file: .parquet (entry, source) or text (entry<TAB>source per line).")
@click.option("--wordnet", default=str(WORDNET_DIR), show_default=True, type=click.Path(file_okay=False),
              help="WordNet folder with data.noun/verb/adj/adv (Debian wordnet-base).")
@click.option("--no-wordnet", is_flag=True, help="Leave WordNet out.")
@click.option("--corpus", "corpora", multiple=True, default=["data/openclipart/pool"], show_default=True,
              help="Input(s) whose captions give frequent uni- and bigrams (any `curate run` input).")
@click.option("--no-corpus", is_flag=True, help="Leave corpus n-grams out.")
@click.option("--min-unigram-count", type=click.IntRange(min=1), default=5, show_default=True,
              help="A corpus word is an entry when seen this often (MetaCLIP: 100 in Wikipedia).")
@click.option("--min-bigram-count", type=click.IntRange(min=1), default=3, show_default=True,
              help="A corpus word pair is considered when seen this often.")
@click.option("--min-bigram-pmi", type=float, default=8.0, show_default=True,
              help="... and is an entry when its PMI (log2, NLTK's) reaches this (MetaCLIP: 30 in Wikipedia).")
@click.option("--file", "files", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="A user entry list, one entry per line (repeatable).")
@_user_errors
def metadata_build(out, wordnet, no_wordnet, corpora, no_corpus, min_unigram_count, min_bigram_count, min_bigram_pmi,
                   files):
    """Build an entry list from WordNet, a corpus's frequent n-grams and user files (MetaCLIP used 500k entries)."""
    from curate.metadata import (
        build_metadata,
        corpus_ngrams,
        read_captions,
        read_entry_file,
        wordnet_entries,
        write_metadata,
    )

    sources = {}
    if not no_wordnet:
        sources["wordnet"] = wordnet_entries(wordnet)
    if not no_corpus:
        unigrams, bigrams = corpus_ngrams(read_captions(list(corpora)), min_unigram_count, min_bigram_count,
                                          min_bigram_pmi)
        sources.update(corpus_unigram=unigrams, corpus_bigram=bigrams)
    for path in files:
        sources[f"file:{path}"] = read_entry_file(path)
    if not sources:
        raise UserError("no source left: drop --no-wordnet or --no-corpus, or give --file")
    table = build_metadata(sources)
    write_metadata(table, out)
    found = Counter(s for entry_sources in table.column("source").to_pylist() for s in entry_sources.split(","))
    click.echo(f"{table.num_rows:,} entries -> {out} (" + ", ".join(f"{name}: {found[name]:,}" for name in sources) +
               "; an entry found by several sources counts for each)")


@sample.command("datacomp")
@click.option("--pool", "pool", multiple=True, default=["data/openclipart/pool"], show_default=True,
              help="Input(s) to copy (any `curate run` input with images).")
@click.option("--out", default="data/datacomp", show_default=True, type=click.Path(file_okay=False))
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True),
              help="A CLIP checkpoint for the vectors (default: random vectors with spread image-text cosines).")
@click.option("--model", help="open_clip architecture of a plain open_clip weights file (with --checkpoint).")
@click.option("--eval", "eval_data", multiple=True, default=["data/openclipart/eval"], show_default=True,
              help="Input(s) whose image vectors become targets/l14_img.npy (the image-based filter's targets).")
@click.option("--rows-per-file", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples per metadata file (and per shard).")
@click.option("--image-size", type=click.IntRange(min=1), default=512, show_default=True,
              help="Longest side of a shard's image (larger ones are shrunk, as img2dataset's keep_ratio_largest).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random vectors.")
@_user_errors
def sample_datacomp(pool, out, checkpoint, model, eval_data, rows_per_file, image_size, seed):
    """Write a pool in DataComp's release format: metadata Parquet + .npz embeddings, img2dataset shards, targets."""
    from curate.sample.datacomp import build_datacomp

    summary = build_datacomp(list(pool), Path(out), checkpoint, model, list(eval_data), rows_per_file, image_size, seed)
    click.echo(f"{summary['samples']} samples in {summary['files']} file(s): metadata in {summary['metadata']}, "
               f"shards in {summary['shards']}"
               + (f", targets in {summary['targets']}" if "targets" in summary else ""))


@main.group()
def embeddings():
    """Embedding stores: vectors the embedding stages read."""


@embeddings.command("import")
@click.argument("metadata", type=click.Path(file_okay=False, exists=True))
@click.option("--store", required=True, type=click.Path(file_okay=False),
              help="Embedding store folder to fill (one per pair of arrays: l14 and b32 go to different stores).")
@click.option("--image-key", default="l14_img", show_default=True, help="The .npz array of image vectors.")
@click.option("--text-key", help="The .npz array of text vectors [default: the image key's _txt twin].")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Files imported at once.")
@_user_errors
def embeddings_import(metadata, store, image_key, text_key, workers):
    """Import DataComp .npz vectors (beside each metadata Parquet, in its row order) into an embedding
    store keyed by uid."""
    from curate.io.datacomp import import_embeddings

    try:
        summary = import_embeddings(metadata, store, image_key, text_key, workers)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    click.echo(f"{summary['rows']:,} vectors ({summary['dim']} wide) from {summary['files']} file(s) -> {store} "
               f"({summary['model']}); read it with checkpoint: null, store: {store}")


@main.command("reshard")
@click.option("--uids", "uids_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Sorted uid file (DataComp's u8,u8 .npy, e.g. a run's uids.npy).")
@click.option("--input", "input_paths", multiple=True, required=True, help="WebDataset shards (folders, files, globs).")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--samples-per-shard", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--blur-faces", is_flag=True,
              help="Blur each sample's json face_bboxes (img2dataset's blurrer, as DataComp).")
@click.option("--webp-quality", type=click.IntRange(1, 100),
              help="Re-encode blurred images as lossy WebP at this quality (DataComp: 100) [default: lossless].")
@click.option("--overwrite", is_flag=True, help="Replace a reshard's output in a folder that is not empty.")
@_user_errors
def reshard_command(uids_path, input_paths, output, samples_per_shard, blur_faces, webp_quality, overwrite):
    """DataComp's resharder: the samples of SHARDS whose uid is listed, as new shards with sizes.json."""
    from curate.io.reshard import reshard

    try:
        summary = reshard(uids_path, list(input_paths), output, samples_per_shard, blur_faces, webp_quality, overwrite)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    skipped = ", ".join(f"{k} {v}" for k, v in summary["skipped"].items())
    click.echo(f"{summary['written']:,} of {summary['listed']:,} listed samples written ({summary['read']:,} read) in "
               f"{summary['shards']} shard(s) -> {output}; {summary['not_found']:,} listed not found"
               + (f"; {summary['blurred']:,} blurred" if blur_faces else "")
               + (f"; skipped: {skipped}" if skipped else ""))


@main.group()
def calibrate():
    """Choose a stage's threshold on planted copies."""


@calibrate.command("near_dedup")
@click.option("--data", "data", multiple=True, required=True,
              help="Input(s) whose images are copied (any `curate run` input; the held-out part of a descriptor's "
                   "own pool).")
@click.option("--method", type=click.Choice(["phash", "hashes", "descriptor"]),
              help="near_dedup's method [default: descriptor with --checkpoint, else phash].")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True), help="A copydetect.pt (method descriptor).")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=0.005, show_default=True,
              help="False-merge rate to hold: the share of distinct images merged with another.")
@click.option("--originals", type=click.IntRange(min=1), default=200, show_default=True,
              help="Images copied (one copy of each kind each); every other distinct image is a negative.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--heldout", is_flag=True, help="Copy only the held-out families (curate.copies.heldout): for the data "
                                             "a descriptor was trained on, whose other images it has seen.")
@click.option("--write", is_flag=True, help="Store the threshold in the checkpoint's JSON (the stages' default).")
@_user_errors
def calibrate_near_dedup(data, method, checkpoint, target, originals, seed, heldout, write):
    """Plant altered copies of the data's images among its distinct ones; print the threshold with the best
    recall at false merges <= TARGET, and that recall (per kind of copy)."""
    from curate.calibrate import calibrate as run_calibration
    from curate.calibrate import write_threshold
    from curate.copies import family, read_images
    from curate.copies import heldout as held_out

    method = method or ("descriptor" if checkpoint else "phash")
    if (method == "descriptor") != bool(checkpoint) or (write and method != "descriptor"):
        raise UserError("--checkpoint goes with method descriptor (and --write with a checkpoint)")
    found = read_images(list(data))
    images = found["image"]
    if heldout:
        families = [family(url, uid) for uid, url in zip(found["uid"], found["url"])]
        images = [d for d, h in zip(images, held_out(families)) if h]
    result = run_calibration(method, images, originals, target, seed, checkpoint)
    planted = f"{result['copies']:,} planted copies among {result['distinct']:,} distinct images"
    if result["threshold"] is None:
        raise UserError(f"{method}: no threshold holds false merges <= {target:.2%} on {planted} (lowest "
                        f"{result['lowest_false_merge']:.2%}, recall {result['recall_there']:.3f} there)")
    name = "threshold (cosine)" if method == "descriptor" else "radius"
    click.echo(f"{method}: {name} {result['threshold']} holds false merges at {result['false_merge']:.2%} "
               f"(target {target:.2%}) on {planted}: recall {result['recall']:.3f}")
    click.echo("recall by kind: " + ", ".join(f"{k} {v:.3f}" for k, v in result["recall_by_kind"].items()))
    if write:
        write_threshold(checkpoint, result)
        click.echo(f"threshold written to {Path(checkpoint).with_suffix('.json')}")


main.add_command(eval_command)
main.add_command(caption_command)
train.add_command(train_llava_command)
train.add_command(export_llava_command)
train.add_command(train_copydetect_command)

if __name__ == "__main__":
    sys.exit(main())
