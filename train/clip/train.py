"""Train a CLIP: `python -m train.clip.train CONFIG [--data DIR] [--output RUNDIR] [--samples-seen N]
[--set key=value]...`, one process or one per rank under torchrun (`curate train clip --nproc N`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch.distributed as dist

from train.clip.config import ClipTrainConfig, load_clip_config
from train.clip.data import ClipBatches, load_samples
from train.clip.model import create_clip, load_checkpoint, save_checkpoint
from train.clip.objective import ClipObjective
from train.loop import LoopSettings, init_distributed, seed_everything, train_loop


def train_clip(config: ClipTrainConfig, run_dir: str | Path, progress: bool = True) -> dict:
    """Train (or resume, when run_dir holds last.pt) to the config's samples-seen budget.
    Returns the last logged step; the model is at run_dir/last.pt."""
    run_dir = Path(run_dir)
    if config.data is None:
        raise ValueError("no training data: set 'data' in the config or pass --data")
    dist_info, device = init_distributed()
    seed_everything(config.seed)
    resume = run_dir / "last.pt"
    if resume.exists():
        clip, state = load_checkpoint(resume, device=str(device))
        if state.get("config") != config.model_dump():
            raise ValueError(f"{run_dir} holds a run with another config; use another --output")
    else:
        clip = create_clip(config.model, config.pretrained, device, siglip=config.loss == "siglip")
        state = None
        if dist_info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(config.model_dump(), indent=2))
    image_size = clip.model.visual.image_size
    batches = ClipBatches(load_samples(config.data), clip.preprocess_train, clip.tokenizer, config.batch_size,
                          config.grad_accum, dist_info.rank, dist_info.world_size, config.seed,
                          max(image_size) if isinstance(image_size, (tuple, list)) else image_size)
    settings = LoopSettings(
        total_steps=config.total_steps, grad_accum=config.grad_accum, lr=config.lr,
        weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
        checkpoint_every=config.checkpoint_every, precision=config.precision,
        samples_per_step=config.batch_size,
    )
    objective = ClipObjective(clip, config.loss, dist_info.rank, dist_info.world_size)

    def save(path: Path, loop_state: dict) -> None:
        save_checkpoint(path, clip, config=config.model_dump(), **loop_state)

    def batches_from(step: int):
        for images, texts in batches.from_step(step, config.workers):
            yield images.to(device), texts.to(device)

    last = train_loop(objective, batches_from, settings, run_dir, dist_info, device, save, state, progress)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return last


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--data")
    parser.add_argument("--output", required=True)
    parser.add_argument("--samples-seen", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data={args.data}")
    if args.samples_seen:
        overrides.append(f"samples_seen={args.samples_seen}")
    train_clip(load_clip_config(args.config, overrides), args.output)


if __name__ == "__main__":
    main()
