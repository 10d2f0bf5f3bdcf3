"""What every trainer does around the loop, the same way for CLIP and LLaVA: its command line
(train.launch starts it), joining and leaving the job, and opening a run folder (resume, or a new
model beside its config.json)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from train.config import TrainConfig
from train.loop import Distributed, init_distributed, seed_everything

Model = TypeVar("Model")


def run_parser(description: str) -> argparse.ArgumentParser:
    """A trainer's command line: CONFIG, --output RUNDIR, --data and --set key=value (the trainer adds its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config")
    parser.add_argument("--output", required=True)
    parser.add_argument("--data")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    return parser


def run_values(args: argparse.Namespace, keys: list[str]) -> dict:
    """The config values given as flags: --data and each of the trainer's `keys` that was given,
    as typed values (for curate.config.updated, after the --set overrides)."""
    return {key: getattr(args, key) for key in ["data", *keys] if getattr(args, key)}


@contextmanager
def training_job(config: TrainConfig, data: str | None) -> Iterator[tuple[Distributed, torch.device]]:
    """Refuse a run without data, join the job and seed this rank; leave the job once every rank is done."""
    if data is None:
        raise ValueError("no training data: set 'data' in the config or pass --data")
    dist_info, device = init_distributed()
    seed_everything(config.seed)
    yield dist_info, device
    if dist.is_initialized():  # not after an error: the barrier would wait for the ranks that failed
        dist.barrier()
        dist.destroy_process_group()


def open_run(config: TrainConfig, run_dir: Path, dist_info: Distributed,
             load: Callable[[Path], tuple[Model, dict]], create: Callable[[], Model]) -> tuple[Model, dict | None]:
    """The model and loop state of run_dir/last.pt (refused when it is another config's run, loader
    workers aside), else a new
    model from `create` and no state, with config.json written (main rank)."""
    resume = run_dir / "last.pt"
    if resume.exists():
        model, state = load(resume)
        if _same_run(state.get("config")) != _same_run(config.model_dump()):
            raise ValueError(f"{run_dir} holds a run with another config; use another --output")
        return model, state
    model = create()
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.model_dump(), indent=2))
    return model, None


def _same_run(config: dict | None) -> dict | None:
    """What a resumed run must share with the checkpoint's: the config but the loader workers (they
    change no sample, so a run may resume with another number)."""
    return None if config is None else {key: value for key, value in config.items() if key != "workers"}


def saver(save_checkpoint: Callable[..., None], model: Any, config: TrainConfig) -> Callable[[Path, dict], None]:
    """The loop's `save`: the trainer's save_checkpoint of `model` with the config and the loop state."""
    return lambda path, loop_state: save_checkpoint(path, model, config=config.model_dump(), **loop_state)
