"""`curate train clip|llava|copydetect` and `curate train export-llava`. torch loads when a
command runs, so registering them keeps `curate` fast to start.

`clip` and `llava` train in this process on the config the command validated, or under torchrun
(`--nproc`, `--nnodes`: train.launch), each rank reading the same config file and flags.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from curate.cli.errors import UserError, user_errors
from train.launch import Launch, LaunchFailed, launch


@click.group()
def train():
    """Train models on curated shards."""


_LAUNCH_OPTIONS = [
    click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
                 help="DDP processes on this node (torchrun)."),
    click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Nodes in the job; run the same command on each, with its --node-rank."),
    click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True,
                 help="This node's rank (0 is the master, which writes the run folder)."),
    click.option("--master-addr", default="127.0.0.1", show_default=True,
                 help="Address of node 0, where the nodes meet (torchrun's static rendezvous)."),
    click.option("--master-port", type=click.IntRange(1, 65535), default=29500, show_default=True,
                 help="Port on node 0 for the rendezvous."),
]


def launch_options(command):
    """A click command's --nproc, --nnodes, --node-rank, --master-addr and --master-port, handed to
    it as one `launch_with: Launch`."""

    @functools.wraps(command)
    def wrapper(*args, nproc, nnodes, node_rank, master_addr, master_port, **kwargs):
        if node_rank >= nnodes:
            raise click.BadParameter(f"{node_rank} is not below --nnodes {nnodes}", param_hint="--node-rank")
        return command(*args, launch_with=Launch(nproc, nnodes, node_rank, master_addr, master_port), **kwargs)

    for option in reversed(_LAUNCH_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def _run_training(module: str, args: list[str], how: Launch, here) -> None:
    """`train.launch.launch`, with a trainer's refusal (bad data, another config's run folder) or a
    failed torchrun job reported as a UserError."""
    try:
        launch(module, args, how, here)
    except (ValueError, LaunchFailed) as exc:
        raise UserError(str(exc)) from exc


@train.command("clip")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Training config (YAML).")
@click.option("--data", help="Curated output folder (or shard files); overrides the config's data.")
@click.option("--output", help="Run folder [default: runs/<config name>].")
@click.option("--samples-seen", type=click.IntRange(min=1), help="Override the samples-seen budget.")
@launch_options
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. lr=0.001.")
@user_errors
def train_clip_command(config_path, data, output, samples_seen, launch_with, overrides):
    """Train a CLIP (InfoNCE or SigLIP) on curated shards at a fixed samples-seen budget; resumes a run folder."""
    from curate.config import updated
    from train.clip.config import load_clip_config

    output = output or f"runs/{Path(config_path).stem}"
    args = [config_path, "--output", output] + (["--data", data] if data else []) + \
        (["--samples-seen", str(samples_seen)] if samples_seen else []) + [a for o in overrides for a in ("--set", o)]
    flags = {key: value for key, value in (("data", data), ("samples_seen", samples_seen)) if value}
    config = updated(load_clip_config(config_path, list(overrides)), config_path, **flags)  # fail fast

    def here() -> None:
        from train.clip.train import train_clip

        train_clip(config, output)

    _run_training("train.clip.train", args, launch_with, here)
    click.echo(f"{config.model} trained: {output}/last.pt (log: {output}/log.jsonl)")


@train.command("llava")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Training config (YAML).")
@click.option("--stage", type=click.Choice(["1", "2"]), help="1: projector on caption pairs; 2: projector and LM on "
                                                            "conversations [default: the config's].")
@click.option("--data", help="Stage 1: curated output folder or shard files; stage 2: LLaVA-Instruct JSON/JSONL.")
@click.option("--output", help="Run folder [default: runs/<config name>].")
@launch_options
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. model.prefix_lm=true or init=runs/s1/last.pt.")
@user_errors
def train_llava_command(config_path, stage, data, output, launch_with, overrides):
    """Train a LLaVA (vision tower + projector + causal LM) at a fixed samples-seen budget; resumes a run folder."""
    from curate.config import updated
    from train.llava.config import load_llava_config

    output = output or f"runs/{Path(config_path).stem}"
    flags = {key: value for key, value in (("stage", stage and int(stage)), ("data", data)) if value}
    config = updated(load_llava_config(config_path, list(overrides)), config_path, **flags)  # fail fast
    args = [config_path, "--output", output, *[a for o in overrides for a in ("--set", o)],
            *[a for key, value in flags.items() for a in (f"--{key}", str(value))]]

    def here() -> None:
        from train.llava.train import train_llava

        train_llava(config, output)

    _run_training("train.llava.train", args, launch_with, here)
    click.echo(f"LLaVA stage {config.stage} trained: {output}/last.pt (log: {output}/log.jsonl)")


@train.command("export-llava")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create: the LM as a Hugging Face model, with the projector and vision tower beside it.")
@user_errors
def export_llava_command(checkpoint, out):
    """Export a LLaVA checkpoint: its LM and tokenizer via save_pretrained (AutoModelForCausalLM loads the
    folder), plus projector.safetensors, vision.safetensors and llava.json saying how they connect."""
    from train.llava.export import export_llava

    try:
        manifest = export_llava(checkpoint, out)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    vision = manifest["vision"]
    click.echo(f"{out}: the LM and tokenizer (AutoModelForCausalLM.from_pretrained), {manifest['projector']['file']}, "
               f"{vision['file']} ({vision['open_clip_model']}, blocks 0-{vision['layer']}), llava.json")


@train.command("copydetect")
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
@user_errors
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
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    calibration = meta.get("calibration") or {}
    found = (f"threshold {meta['threshold']} (recall {calibration['recall']:.3f} at false merges "
             f"{calibration['false_merge']:.4f} on {calibration['copies']} planted copies of held-out images)"
             if meta.get("threshold") is not None else "no calibrated threshold: set one in the stage")
    click.echo(f"copy descriptor trained on {meta['trained']['images']} images: {output}/copydetect.pt; {found}")
