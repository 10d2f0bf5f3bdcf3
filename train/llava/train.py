"""Train a LLaVA: `python -m train.llava.train CONFIG --output RUNDIR [--stage 1|2] [--data PATH]
[--set key=value]...`, one process or one per rank under torchrun (`curate train llava --nproc N`)."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from curate.config import updated
from curate.models.llava.format import PLACEHOLDER
from curate.models.llava.model import Llava, load_checkpoint, save_checkpoint
from train.data import StreamSettings
from train.llava.build import build_llava, build_tiny_lm
from train.llava.config import LlavaTrainConfig, load_llava_config
from train.llava.data import llava_loader, llava_source, source_texts
from train.llava.objective import LlavaObjective
from train.loop import LoopSettings, train_loop
from train.run import open_run, run_parser, run_values, saver, training_job


def train_llava(config: LlavaTrainConfig, run_dir: str | Path, progress: bool = True) -> dict:
    """Train (or resume, when run_dir holds last.pt) to the config's samples-seen budget.
    Returns the last logged step; the model is at run_dir/last.pt."""
    run_dir = Path(run_dir)
    with training_job(config, config.data) as (dist_info, device):
        source = llava_source(config.stage, config.data)

        def create() -> Llava:
            """A new model: config.init's, else one built on config.model.lm (or a tiny LM of the data's texts)."""
            if config.init:
                return load_checkpoint(config.init, device)[0]
            lm_path = config.model.lm
            if lm_path is None:  # a tiny LM: written once by rank 0, then loaded like any HF folder
                lm_path = run_dir / "lm"
                if dist_info.is_main:
                    texts = (PLACEHOLDER.sub("", text) for text in source_texts(source))
                    build_tiny_lm(config.model.lm_config, texts, config.model.vocab_size, config.model.max_grid,
                                  lm_path)
                if dist.is_initialized():
                    dist.barrier()
            return build_llava(config.model, lm_path, device)

        model, state = open_run(config, run_dir, dist_info, lambda path: load_checkpoint(path, device), create)
        batches = llava_loader(source, model.input_format(), config.caption_prompt, StreamSettings.from_config(config),
                               dist_info.rank, dist_info.world_size)
        objective = LlavaObjective(model, config.stage)
        return train_loop(objective, batches, LoopSettings.from_config(config), run_dir, dist_info, device,
                            saver(save_checkpoint, model, config), state, progress)


def main(argv: list[str] | None = None) -> None:
    parser = run_parser(__doc__.splitlines()[0])
    parser.add_argument("--stage", type=int, choices=[1, 2])
    args = parser.parse_args(argv)
    config = load_llava_config(args.config, args.overrides)
    train_llava(updated(config, args.config, **run_values(args, ["stage"])), args.output)


if __name__ == "__main__":
    main()
