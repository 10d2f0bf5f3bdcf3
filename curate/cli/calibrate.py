"""`curate calibrate`: choose a stage's threshold on planted copies."""

from __future__ import annotations

from pathlib import Path

import click

from curate.cli.errors import UserError, user_errors


@click.group()
def calibrate():
    """Choose a stage's threshold on planted copies."""


@calibrate.command("near_dedup")
@click.option("--data", "data", multiple=True, required=True,
              help="Input(s) whose images are copied (any `curate run` input; the held-out part of a descriptor's "
                   "own pool).")
@click.option("--method", type=click.Choice(["phash", "hashes", "descriptor", "verified"]),
              help="near_dedup's method [default: descriptor with --checkpoint, else phash].")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True),
              help="A copydetect.pt (methods descriptor and verified).")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=0.005, show_default=True,
              help="False-merge rate to hold: the share of distinct images merged with another.")
@click.option("--originals", type=click.IntRange(min=1), default=200, show_default=True,
              help="Images copied (one copy of each kind each); every other distinct image is a negative.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--heldout", is_flag=True, help="Copy only the held-out families (curate.copies.heldout): for the data "
                                             "a descriptor was trained on, whose other images it has seen.")
@click.option("--write", is_flag=True, help="Store the threshold in the checkpoint's JSON (the stages' default).")
@user_errors
def calibrate_near_dedup(data, method, checkpoint, target, originals, seed, heldout, write):
    """Plant altered copies of the data's images among its distinct ones; print the threshold with the best
    recall at false merges <= TARGET, and that recall (per kind of copy)."""
    from curate.calibrate import calibrate as run_calibration
    from curate.calibrate import write_threshold
    from curate.copies import family, read_images
    from curate.copies import heldout as held_out

    method = method or ("descriptor" if checkpoint else "phash")
    if (method in ("descriptor", "verified")) != bool(checkpoint) or (write and method != "descriptor"):
        raise UserError("--checkpoint goes with methods descriptor and verified (and --write with descriptor)")
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
    name = {"descriptor": "threshold (cosine)", "verified": "inliers"}.get(method, "radius")
    click.echo(f"{method}: {name} {result['threshold']} holds false merges at {result['false_merge']:.2%} "
               f"(target {target:.2%}) on {planted}: recall {result['recall']:.3f}")
    click.echo("recall by kind: " + ", ".join(f"{k} {v:.3f}" for k, v in result["recall_by_kind"].items()))
    if write:
        write_threshold(checkpoint, result)
        click.echo(f"threshold written to {Path(checkpoint).with_suffix('.json')}")
