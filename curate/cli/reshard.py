"""`curate reshard`: DataComp's resharder."""

from __future__ import annotations

import click

from curate.cli.errors import UserError, user_errors


@click.command("reshard")
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
@user_errors
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
