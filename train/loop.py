"""The training loop every trainer shares: DDP, a samples-seen budget, AdamW with warmup and
cosine decay, gradient accumulation, checkpoints with exact resume, JSONL logs.

A trainer supplies an `Objective` (the trainable module and how a batch becomes a loss) and
a batch source that can start at any step (train.data's streaming loader); the loop does the
rest, the same way for CLIP and LLaVA.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from curate.io.writers import atomic
from train.config import TrainConfig
from train.data.stream import to_device


class Objective(Protocol):
    """What the loop trains: `module` holds the parameters, `loss` scores a batch through
    `model` (the module itself, or its DDP wrapper, which syncs gradients)."""

    module: torch.nn.Module

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's loss (averaged over it) and scalars to log (floats or 0-d tensors)."""

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. to clamp a temperature)."""


class Batches(Protocol):
    """Micro-batches that can start at any optimizer step (train.data.StreamLoader)."""

    def from_step(self, step: int, states: list[dict] | None = None) -> Iterator[Any]:
        """Micro-batches from optimizer step `step` on; `states` are every rank's `state()` at that
        step in an earlier run (a checkpoint's), or None."""

    def state(self) -> dict:
        """Where this rank's stream stands after the micro-batches taken so far."""


@dataclass(frozen=True)
class LoopSettings:
    """The loop's knobs (a trainer's config maps onto these)."""

    total_steps: int
    grad_accum: int
    lr: float
    weight_decay: float
    warmup_steps: int
    checkpoint_every: int
    precision: str  # "fp32" | "bf16"
    samples_per_step: int

    @classmethod
    def from_config(cls, config: TrainConfig) -> LoopSettings:
        """The settings a trainer's config sets (a step is one global batch)."""
        return cls(total_steps=config.total_steps, grad_accum=config.grad_accum, lr=config.lr,
                   weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
                   checkpoint_every=config.checkpoint_every, precision=config.precision,
                   samples_per_step=config.batch_size)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> tuple[Distributed, torch.device]:
    """Join the torchrun job if there is one (gloo on CPU, nccl on GPU); pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Distributed(rank, world_size, local_rank), device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the same seed on every rank: replicas start identical)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(module: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, embeddings' scales and temperatures (open_clip's rule)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(param)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(step: int, settings: LoopSettings) -> float:
    """Linear warmup to `lr`, then cosine decay to zero at `total_steps`."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.total_steps - settings.warmup_steps)
    return 0.5 * settings.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def _rng_state() -> dict:
    """The RNG states as a weights-only load reads them back (NumPy's key array as a list of ints)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def _gathered(state: dict, dist_info: Distributed) -> list[dict]:
    """Every rank's data state, in rank order."""
    if dist_info.world_size == 1:
        return [state]
    states: list[dict] = [{} for _ in range(dist_info.world_size)]
    dist.all_gather_object(states, state)
    return states


def train_loop(
    objective: Objective,
    batches: Batches,
    settings: LoopSettings,
    run_dir: Path,
    dist_info: Distributed,
    device: torch.device,
    save: Callable[[Path, dict], None],
    resume_state: dict | None = None,
    progress: bool = True,
) -> dict:
    """Train to `settings.total_steps` optimizer steps.

    `batches.from_step(step, states)` yields micro-batches starting at optimizer step `step`
    (so a resumed run sees the data an uninterrupted one would). `save(path, state)` writes a
    checkpoint with the loop `state` (optimizer, step, RNG, every rank's data state) beside the
    model. A `resume_state` from such a checkpoint continues exactly where it stopped.
    """
    module = objective.module
    trainable = module
    if dist_info.world_size > 1:
        trainable = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(module, settings.lr, settings.weight_decay)
    start_step = 0
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        start_step = resume_state["step"]
        _set_rng_state(resume_state["rng"])
    log_path = run_dir / "log.jsonl"
    if dist_info.is_main and log_path.exists():  # steps logged after the checkpoint will be run again
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
        log_path.write_text("".join(line + "\n" for line in kept))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16")
    stream = batches.from_step(start_step, resume_state.get("data") if resume_state is not None else None)
    bar = tqdm(total=settings.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=not (progress and dist_info.is_main))
    last: dict[str, float] = {}
    started = time.perf_counter()
    for step in range(start_step, settings.total_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings)
        optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(settings.grad_accum):
            batch = to_device(next(stream), device)
            sync = micro == settings.grad_accum - 1 or dist_info.world_size == 1
            context = trainable.no_sync() if not sync and hasattr(trainable, "no_sync") else nullcontext()
            with context, autocast:
                loss, scalars = objective.loss(trainable, batch)
                (loss / settings.grad_accum).backward()
            for key, value in {"loss": loss.detach(), **scalars}.items():
                totals[key] = totals.get(key, 0.0) + value / settings.grad_accum
        optimizer.step()
        objective.after_step()
        # scalars may be device tensors: read them once the step is queued (no sync mid-step)
        totals = {key: float(value) for key, value in totals.items()}
        last = {"step": step + 1, "samples_seen": (step + 1) * settings.samples_per_step,
                "lr": optimizer.param_groups[0]["lr"], **totals,
                "elapsed_s": round(time.perf_counter() - started, 3)}
        if dist_info.is_main:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(last) + "\n")
            bar.set_postfix(loss=f"{totals['loss']:.4f}")
            bar.update(1)
        done = step + 1 == settings.total_steps
        if done or (step + 1) % settings.checkpoint_every == 0:
            data_state = _gathered(batches.state(), dist_info)  # every rank takes part
            if dist_info.is_main:
                checkpoint = run_dir / f"step-{step + 1:06d}.pt"
                save(checkpoint, {"optimizer": optimizer.state_dict(), "step": step + 1, "rng": _rng_state(),
                                  "data": data_state})
                with atomic(run_dir / "last.pt") as tmp:
                    shutil.copyfile(checkpoint, tmp)
    bar.close()
    return last
