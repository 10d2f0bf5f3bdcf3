"""`curate sample`: build sample data sets (the openclipart pool, a pool in DataComp's format)."""

from __future__ import annotations

from pathlib import Path

import click

from curate.cli.errors import user_errors


@click.group()
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
@user_errors
def openclipart(out, source, limit, workers, eval_percent, max_side):
    """Render Debian's openclipart-svg drawings into a pool and a held-out eval split."""
    from curate.sample.openclipart import build_pool

    summary = build_pool(Path(out), Path(source), workers, limit, eval_percent, max_side)
    click.echo(f"{summary['rendered']} of {summary['svgs']} drawings rendered ({summary['failed']} failed, listed in "
               f"{out}/summary.json): {summary['pool']} in {out}/pool, {summary['eval']} in {out}/eval")


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
@user_errors
def sample_datacomp(pool, out, checkpoint, model, eval_data, rows_per_file, image_size, seed):
    """Write a pool in DataComp's release format: metadata Parquet + .npz embeddings, img2dataset shards, targets."""
    from curate.sample.datacomp import build_datacomp

    summary = build_datacomp(list(pool), Path(out), checkpoint, model, list(eval_data), rows_per_file, image_size, seed)
    click.echo(f"{summary['samples']} samples in {summary['files']} file(s): metadata in {summary['metadata']}, "
               f"shards in {summary['shards']}"
               + (f", targets in {summary['targets']}" if "targets" in summary else ""))
