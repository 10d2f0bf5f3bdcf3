"""`curate bootstrap`: CLIP scorers that curate the data of the next scorer.

Round 0 curates the pool with a base recipe (heuristic filters) and trains a CLIP on it.
Round r scores the base-filtered pool with round r-1's CLIP, keeps the top fraction by CLIP
score (DataComp's rule) and trains the next CLIP on that. Every round trains with the same
config and samples-seen budget and is evaluated on the same suite, so the leaderboard shows
whether bootstrapping helped. Finished curation and training steps are reused as in `curate ablate`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from curate.config import ConfigError, load_yaml, validate
from curate.experiments.ablate import (
    ExperimentConfig,
    curate_recipe,
    leaderboard_rows,
    train_and_evaluate,
    with_stage,
    write_leaderboard,
)
from curate.pipeline import load_pipeline
from curate.stages.clip_score import ClipScore


class BootstrapConfig(ExperimentConfig):
    """A bootstrap file: the base recipe, how many scorer rounds, and what stays fixed."""

    base: str = Field(..., description="round 0's recipe (pipeline file); later rounds score its output")
    rounds: int = Field(2, ge=1, description="scorer rounds after round 0")
    top_fraction: float = Field(0.5, gt=0, lt=1, description="share of the base-filtered pool each scorer keeps")

    @model_validator(mode="after")
    def _scorers_are_clips(self):
        if self.model != "clip":
            raise ValueError("bootstrapping trains CLIP scorers: model must be clip")
        return self


def load_bootstrap(path: str | Path, overrides: list[str] = ()) -> BootstrapConfig:
    """Read, override and validate a bootstrap file."""
    return validate(BootstrapConfig, load_yaml(path, overrides, "bootstrap"), str(path))


def scorer_path(config: BootstrapConfig, round_index: int) -> Path:
    """The CLIP that round `round_index` trained (its first seed's run); the next round's scorer."""
    return Path(config.output) / "runs" / f"round{round_index}" / f"seed{config.seeds[0]}" / "last.pt"


def run_bootstrap(config: BootstrapConfig, progress: bool = True) -> list[dict]:
    """Run round 0 and every scorer round; write the leaderboard. Returns its rows."""
    if not Path(config.base).is_file():
        raise ConfigError(f"base: pipeline file {config.base} not found")
    base = load_pipeline(config.base)
    records, notes = [], [f"- round0: `{Path(config.base).name}` alone"]
    for round_index in range(config.rounds + 1):
        name = f"round{round_index}"
        recipe = base
        if round_index:
            scorer = scorer_path(config, round_index - 1)
            recipe = with_stage(base, ClipScore.name, checkpoint=str(scorer), top_fraction=config.top_fraction)
            notes.append(f"- {name}: `{Path(config.base).name}`, then the top {config.top_fraction:.0%} by the "
                         f"CLIP score of round{round_index - 1}'s model")
        curated, stats = curate_recipe(name, recipe, config, progress)
        for seed in config.seeds:
            record = train_and_evaluate(name, curated, seed, config, progress)
            records.append({**record, "curated_size": stats["kept"], "pool_size": stats["input"]})
    rows = leaderboard_rows(records)
    write_leaderboard(rows, records, config, Path(config.output), notes)
    return rows
