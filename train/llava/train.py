"""Train a LLaVA: `python -m train.llava.train CONFIG --output RUNDIR [--stage 1|2] [--data PATH]
[--set key=value]...`, one process or one per rank under torchrun (`curate train llava --nproc N`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch.distributed as dist

from train.llava.config import LlavaTrainConfig, load_llava_config
from train.llava.data import LlavaBatches, caption_pairs, load_conversations
from train.llava.format import PLACEHOLDER
from train.llava.model import build_llava, build_tiny_lm, load_checkpoint, save_checkpoint
from train.llava.objective import LlavaObjective
from train.loop import LoopSettings, init_distributed, seed_everything, train_loop


def train_llava(config: LlavaTrainConfig, run_dir: str | Path, progress: bool = True) -> dict:
    """Train (or resume, when run_dir holds last.pt) to the config's samples-seen budget.
    Returns the last logged step; the model is at run_dir/last.pt."""
    run_dir = Path(run_dir)
    if config.data is None:
        raise ValueError("no training data: set 'data' in the config or pass --data")
    dist_info, device = init_distributed()
    seed_everything(config.seed)
    if config.stage == 1:
        samples = caption_pairs(config.data, config.caption_prompt)
    else:
        samples = load_conversations(config.data)
    resume = run_dir / "last.pt"
    state = None
    if resume.exists():
        model, state = load_checkpoint(resume, device)
        if state.get("config") != config.model_dump():
            raise ValueError(f"{run_dir} holds a run with another config; use another --output")
    elif config.init:
        model, _ = load_checkpoint(config.init, device)
    else:
        lm_path = config.model.lm
        if lm_path is None:  # a tiny LM: written once by rank 0, then loaded like any HF folder
            lm_path = run_dir / "lm"
            if dist_info.is_main:
                texts = (PLACEHOLDER.sub("", t["value"]) for s in samples for t in s.conversation)
                build_tiny_lm(config.model.lm_config, texts, config.model.vocab_size, config.model.max_grid, lm_path)
            if dist.is_initialized():
                dist.barrier()
        model = build_llava(config.model, lm_path, device)
    if state is None and dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.model_dump(), indent=2))
    batches = LlavaBatches(samples, model.input_format(), config.batch_size, config.grad_accum, dist_info.rank,
                           dist_info.world_size, config.seed)
    settings = LoopSettings(
        total_steps=config.total_steps, grad_accum=config.grad_accum, lr=config.lr,
        weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
        checkpoint_every=config.checkpoint_every, precision=config.precision,
        samples_per_step=config.batch_size,
    )
    objective = LlavaObjective(model, config.stage)

    def save(path: Path, loop_state: dict) -> None:
        save_checkpoint(path, model, config=config.model_dump(), **loop_state)

    def batches_from(step: int):
        pin = device.type == "cuda"  # pinned memory: the copy overlaps the GPU's work
        for batch in batches.from_step(step, config.workers):
            yield {key: (value.pin_memory() if pin else value).to(device, non_blocking=pin)
                   for key, value in batch.items()}

    last = train_loop(objective, batches_from, settings, run_dir, dist_info, device, save, state, progress)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return last


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--output", required=True)
    parser.add_argument("--stage", type=int, choices=[1, 2])
    parser.add_argument("--data")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"stage={args.stage}"] if args.stage else []) + \
        ([f"data={args.data}"] if args.data else [])
    train_llava(load_llava_config(args.config, overrides), args.output)


if __name__ == "__main__":
    main()
