"""Train a CLIP: `python -m train.clip.train CONFIG [--data DIR] [--output RUNDIR] [--samples-seen N]
[--set key=value]...`, one process or one per rank under torchrun (`curate train clip --nproc N`)."""

from __future__ import annotations

from pathlib import Path

from curate.config import updated
from curate.models.clip import create_clip, load_checkpoint, save_checkpoint
from train.clip.config import ClipTrainConfig, load_clip_config
from train.clip.data import clip_loader
from train.clip.objective import ClipObjective
from train.data import StreamSettings
from train.loop import LoopSettings, train_loop
from train.run import open_run, run_parser, run_values, saver, training_job


def train_clip(config: ClipTrainConfig, run_dir: str | Path, progress: bool = True) -> dict:
    """Train (or resume, when run_dir holds last.pt) to the config's samples-seen budget.
    Returns the last logged step; the model is at run_dir/last.pt."""
    run_dir = Path(run_dir)
    with training_job(config, config.data) as (dist_info, device):
        clip, state = open_run(
            config, run_dir, dist_info, lambda path: load_checkpoint(path, device=str(device)),
            lambda: create_clip(config.model, config.pretrained, device, siglip=config.loss == "siglip"))
        image_size = clip.model.visual.image_size
        batches = clip_loader(config.data, clip.preprocess_train, clip.tokenizer,
                              max(image_size) if isinstance(image_size, (tuple, list)) else image_size,
                              StreamSettings.from_config(config), dist_info.rank, dist_info.world_size)
        objective = ClipObjective(clip, config.loss, dist_info.rank, dist_info.world_size)
        return train_loop(objective, batches, LoopSettings.from_config(config), run_dir, dist_info, device,
                            saver(save_checkpoint, clip, config), state, progress)


def main(argv: list[str] | None = None) -> None:
    parser = run_parser(__doc__.splitlines()[0])
    parser.add_argument("--samples-seen", type=int)
    args = parser.parse_args(argv)
    config = load_clip_config(args.config, args.overrides)
    train_clip(updated(config, args.config, **run_values(args, ["samples_seen"])), args.output)


if __name__ == "__main__":
    main()
