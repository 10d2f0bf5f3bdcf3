"""`curate train copydetect`: the copy descriptor trainer. torch loads when the command runs, so
registering it keeps `curate` fast to start."""

from __future__ import annotations

import click


class CopyDetectError(click.ClickException):
    """Bad training data or settings: printed without a traceback, exit code 2."""

    exit_code = 2


@click.command("copydetect")
@click.option("--data", "data", multiple=True, default=["data/openclipart/pool"], show_default=True,
              help="Input(s) whose images are trained on (any `curate run` input); held-out families are not.")
@click.option("--output", default="runs/copydetect", show_default=True, type=click.Path(file_okay=False),
              help="Run folder: copydetect.pt (weights), copydetect.json (architecture, threshold), log.jsonl.")
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True, help="Optimiser steps.")
@click.option("--batch-size", type=click.IntRange(min=4), default=128, show_default=True,
              help="Images a step (two altered views of each).")
@click.option("--size", type=click.IntRange(min=16), default=96, show_default=True, help="Input side in pixels.")
@click.option("--calibrate-originals", type=click.IntRange(min=0), default=200, show_default=True,
              help="Held-out originals copied to calibrate the threshold at the end (0: none).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="torch CPU threads.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_copydetect_command(data, output, steps, batch_size, size, calibrate_originals, threads, seed):
    """Train a copy descriptor (SSCD-style small CNN) on augmented copies of the data's own images, and
    calibrate its threshold on planted copies of held-out ones: near_dedup / decontaminate `method: descriptor`."""
    from curate.models.copydetect import DescriptorArchitecture
    from train.copydetect.train import CopyDetectConfig, train_copydetect

    config = CopyDetectConfig(data=list(data), output=output, steps=steps, batch_size=batch_size, seed=seed,
                              threads=threads, calibrate_originals=calibrate_originals,
                              architecture=DescriptorArchitecture(size=size))
    try:
        meta = train_copydetect(config, progress=True)
    except (ValueError, FileNotFoundError) as exc:
        raise CopyDetectError(str(exc)) from exc
    calibration = meta.get("calibration") or {}
    found = (f"threshold {meta['threshold']} (recall {calibration['recall']:.3f} at false merges "
             f"{calibration['false_merge']:.4f} on {calibration['copies']} planted copies of held-out images)"
             if meta.get("threshold") is not None else "no calibrated threshold: set one in the stage")
    click.echo(f"copy descriptor trained on {meta['trained']['images']} images: {output}/copydetect.pt; {found}")
