"""The `curate` command line: `main` (the console script) and a module per command group, each
registered here. Every command reports a problem with the user's input as one type,
curate.cli.errors.UserError: `Error: ...` without a traceback, exit code 2.

The CLI ties curation, training and evaluation together (with curate.experiments): it may import
train/; nothing below it imports it. Commands import their heavy modules (torch, the engines)
when they run, so `curate` starts fast.
"""

from __future__ import annotations

import click

from curate.cli import calibrate as calibrate_commands
from curate.cli import caption as caption_commands
from curate.cli import embeddings as embeddings_commands
from curate.cli import eval as eval_commands
from curate.cli import experiments as experiment_commands
from curate.cli import metadata as metadata_commands
from curate.cli import reshard as reshard_commands
from curate.cli import run as run_commands
from curate.cli import sample as sample_commands
from curate.cli import train as train_commands


@click.group()
@click.version_option(package_name="curate", prog_name="curate", message="%(prog)s %(version)s")
def main() -> None:
    """curate: curate image-text pretraining data and score every data choice end to end."""


for _command in (run_commands.run, run_commands.verify, run_commands.download, run_commands.validate,
                 run_commands.stages, run_commands.inspect, train_commands.train, experiment_commands.ablate,
                 experiment_commands.bootstrap, sample_commands.sample, metadata_commands.metadata,
                 embeddings_commands.embeddings, reshard_commands.reshard_command, calibrate_commands.calibrate,
                 eval_commands.eval_command, caption_commands.caption_command):
    main.add_command(_command)
