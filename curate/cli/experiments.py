"""`curate ablate` and `curate bootstrap`: experiments that curate, train and evaluate
(curate.experiments), each ending with its leaderboard."""

from __future__ import annotations

from pathlib import Path

import click

from curate.cli.errors import UserError, user_errors


@click.command()
@click.argument("ablation", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key, e.g. samples_seen=2000.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def ablate(ablation, overrides, quiet):
    """Curate -> train -> evaluate every recipe and seed of ABLATION; write the leaderboard."""
    from curate.experiments.ablate import load_ablation, run_ablation

    _experiment(load_ablation(ablation, list(overrides)), run_ablation, quiet)


@click.command()
@click.argument("bootstrap_file", metavar="BOOTSTRAP", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key, e.g. rounds=3.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def bootstrap(bootstrap_file, overrides, quiet):
    """Rounds of CLIP scorers: each round's CLIP picks the next round's data; every round on the leaderboard."""
    from curate.experiments.bootstrap import load_bootstrap, run_bootstrap

    _experiment(load_bootstrap(bootstrap_file, list(overrides)), run_bootstrap, quiet)


def _experiment(config, run, quiet: bool) -> None:
    """Run an ablation or bootstrap experiment and print its leaderboard."""
    from curate.experiments.ablate import ContaminationError

    try:
        rows = run(config, progress=not quiet)
    except ContaminationError as exc:
        raise UserError(str(exc)) from exc
    click.echo(Path(config.output, "leaderboard.md").read_text())
    click.echo(f"leaderboard: {config.output}/leaderboard.md, .csv and .png ({len(rows)} rows)")
