"""`curate ablate`: score recipes end to end. Each recipe curates the same pool, a model is
trained on the result with the same config and samples-seen budget (DataComp's rule: the
data changes, never the compute), evaluated on the same suite, for each seed; the
leaderboard ranks recipes by the suite's aggregate score.

The model is a CLIP (zero-shot and retrieval tasks) or, with `model: llava`, a LLaVA: stage 1
trains its projector on the recipe's curated captions, which is where LLaVA meets pretraining
data. Stage 2 (projector and LM on conversations) is optional: with `stage2_data` every recipe's
stage-1 model is tuned on the same conversation set at the same budget before captioning and
VQA are scored. A pretrained LM answers after stage 1 alone; the tiny random LM a CPU run
builds cannot, so there stage 2 is what makes the scores measure anything, and the recipe's
effect is what stage 1 leaves in the projector (and in the tokenizer, trained on its captions).

Finished steps are reused: a curated set by its run fingerprint, a trained and evaluated
model by a key over the recipe, the pool, the training config, the seed and the suite.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import statistics
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.config import ConfigError, load_yaml, updated, validate
from curate.pipeline import Pipeline, load_pipeline, parse_pipeline
from curate.stages.decontaminate import Decontaminate


class ExperimentConfig(BaseModel):
    """What every experiment over a pool keeps fixed: the pool, the training budget, the suite."""

    model_config = ConfigDict(extra="forbid")

    name: str
    pool: str = Field(..., description="the pool every recipe curates")
    output: str = Field(..., description="folder for curated sets, runs and the leaderboard")
    model: Literal["clip", "llava"] = Field(
        "clip", description="what every recipe trains and is scored by: clip (zero-shot and retrieval tasks) or "
                            "llava (captioning and VQA tasks)")
    train: str = Field(..., description="training config (YAML): a CLIP config, or a LLaVA one for model: llava")
    samples_seen: int = Field(..., gt=0, description="the fixed training budget for every recipe (LLaVA: stage 1)")
    stage2_data: str | None = Field(
        None, description="llava: a LLaVA-Instruct set (JSON/JSONL, or a folder with train.json) every recipe's "
                          "stage-1 model is tuned on before evaluation, the same for all; none: stage 1 only")
    stage2_samples_seen: int | None = Field(None, gt=0, description="llava: stage 2's budget [default: samples_seen]")
    seeds: list[int] = Field([0], min_length=1)
    suite: str = Field(..., description="evaluation suite (YAML)")
    eval_data: list[str] = Field(..., min_length=1, description="evaluation images to keep out of every curated set")
    decontaminate: Literal["refuse", "filter"] = Field(
        "refuse", description="refuse: stop when a curated set holds eval images; filter: drop them")
    radius: int = Field(4, ge=0, le=31, description="pHash radius for near-copies of eval images")
    workers: int = Field(1, gt=0, description="curation worker processes")

    @model_validator(mode="after")
    def _stage2_is_llava(self):
        if self.model != "llava" and (self.stage2_data is not None or self.stage2_samples_seen is not None):
            raise ValueError("stage2_data and stage2_samples_seen are for model: llava")
        return self


class AblationConfig(ExperimentConfig):
    """An ablation file: recipes to compare, and what stays fixed."""

    recipes: dict[str, str] = Field(..., min_length=1, description="recipe name -> pipeline file")


class ContaminationError(RuntimeError):
    """A curated set contains evaluation images and the ablation was told to refuse."""


def load_ablation(path: str | Path, overrides: list[str] = ()) -> AblationConfig:
    """Read, override and validate an ablation file."""
    return validate(AblationConfig, load_yaml(path, overrides, "ablation"), str(path))


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def with_stage(pipeline: Pipeline, stage: str, **params) -> Pipeline:
    """The pipeline with one more stage after its last one."""
    return parse_pipeline({**pipeline.raw, "stages": pipeline.raw["stages"] + [{"stage": stage, **params}]},
                          pipeline.source)


def curate_recipe(name: str, recipe: str | Pipeline, config: ExperimentConfig, progress: bool) -> tuple[Path, dict]:
    """Run one recipe (a pipeline file or a pipeline) over the pool, reused when already done,
    with the decontaminate stage last; refuse or filter contamination as configured."""
    from curate.engines import LocalEngine
    from curate.runner import run_pipeline

    pipeline = load_pipeline(recipe) if isinstance(recipe, str) else recipe
    pipeline = with_stage(pipeline, Decontaminate.name, eval_data=config.eval_data, radius=config.radius)
    out = Path(config.output) / "curated" / name
    engine = LocalEngine(config.workers, progress)
    try:  # the same run finished is reused, interrupted is resumed
        stats = run_pipeline(pipeline, engine, config.pool, out)
    except FileExistsError:  # the recipe or the pool changed since: curate again
        stats = run_pipeline(pipeline, engine, config.pool, out, overwrite=True)
    found = {r: n for s in stats["stages"] if s["name"] == Decontaminate.name for r, n in s["reasons"].items()}
    if found and config.decontaminate == "refuse":
        raise ContaminationError(
            f"recipe {name!r}: its curated set holds evaluation images ({found}); they are listed in "
            f"{out / 'rejected.parquet'}. Set `decontaminate: filter` to train without them.")
    return out, stats


def check_experiment(config: ExperimentConfig) -> None:
    """Fail before any work when the suite does not fit the model or a training config is invalid."""
    from train.eval.suite import CLIP_KINDS, LLAVA_KINDS, load_suite, require_kinds

    suite = load_suite(config.suite)
    llava = config.model == "llava"
    require_kinds(suite, LLAVA_KINDS if llava else CLIP_KINDS, "LLaVA" if llava else "CLIP")
    if config.stage2_data is not None and not Path(config.stage2_data).exists():
        raise ConfigError(f"stage2_data: {config.stage2_data} not found (the pool's conversation set is built by "
                          f"`python -m train.llava.conversations --pool POOL --out DIR`)")
    training_runs(config, Path(config.pool), config.seeds[0], Path(config.output))


def training_runs(config: ExperimentConfig, curated: Path, seed: int, run_dir: Path) -> list[tuple[Path, BaseModel]]:
    """The training runs of one recipe and seed, in order: (run folder, validated training config),
    the training file's config with the experiment's budget, seed and data set as typed values.
    CLIP: one run. LLaVA: stage 1 on the curated captions, then stage 2 from its checkpoint when set."""
    source = f"{config.train} (as {config.name} sets it)"
    common = {"samples_seen": config.samples_seen, "seed": seed, "data": str(curated)}
    if config.model == "clip":
        from train.clip.config import load_clip_config

        return [(run_dir, updated(load_clip_config(config.train), source, **common))]
    from train.llava.config import load_llava_config

    base = load_llava_config(config.train)
    runs = [(run_dir, updated(base, source, **common, stage=1, init=None))]
    if config.stage2_data is not None:
        budget = config.stage2_samples_seen or config.samples_seen
        stage2 = updated(base, source, samples_seen=budget, seed=seed, data=config.stage2_data, stage=2,
                         init=str(run_dir / "last.pt"))
        runs.append((run_dir / "stage2", stage2))
    return runs


def _content_hash(path: str) -> str:
    """sha256 of a data file (a folder: its train.json), so a rebuilt conversation set retrains stage 2."""
    file = Path(path) / "train.json" if Path(path).is_dir() else Path(path)
    with open(file, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def train_and_evaluate(recipe: str, curated: Path, seed: int, config: ExperimentConfig, progress: bool) -> dict:
    """Train the experiment's model on a curated set with one seed and evaluate it (reused when already done)."""
    from train.eval.suite import load_suite

    run_dir = Path(config.output) / "runs" / recipe / f"seed{seed}"
    runs = training_runs(config, curated, seed, run_dir)
    stage2 = [] if config.stage2_data is None else [_content_hash(config.stage2_data)]
    suite_text = Path(config.suite).read_text()
    key = _key(json.loads((curated / "_work" / "run.json").read_text())["fingerprint"],
               *(c.model_dump(exclude={"data", "init"}) for _, c in runs), *stage2, suite_text)
    results_path, key_path = run_dir / "results.json", run_dir / "key.txt"
    if key_path.exists() and key_path.read_text() != key:
        shutil.rmtree(run_dir)  # trained for other data, config or suite: start over
    if results_path.exists():
        return json.loads(results_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    key_path.write_text(key)
    for out, train_config in runs:  # each resumes an interrupted run from its last.pt
        _train(config.model, train_config, out, progress)
    results = _evaluate(config.model, runs[-1][0] / "last.pt", load_suite(config.suite), progress)
    record = {"key": key, "recipe": recipe, "seed": seed, "samples_seen": config.samples_seen, **results}
    results_path.write_text(json.dumps(record, indent=2))
    return record


def _train(model: str, train_config: BaseModel, run_dir: Path, progress: bool) -> None:
    if model == "clip":
        from train.clip.train import train_clip

        train_clip(train_config, run_dir, progress=progress)
    else:
        from train.llava.train import train_llava

        train_llava(train_config, run_dir, progress=progress)


def _evaluate(model: str, checkpoint: Path, suite, progress: bool) -> dict:
    if model == "clip":
        from curate.models.clip import load_checkpoint
        from train.eval.evaluate import evaluate

        clip, _ = load_checkpoint(checkpoint)
        return evaluate(clip, suite, progress=progress)
    from curate.models.llava.generate import Captioner
    from train.eval.captioning import evaluate_captioner

    return evaluate_captioner(Captioner.load(checkpoint), suite, progress=progress)


def run_ablation(config: AblationConfig, progress: bool = True) -> list[dict]:
    """Curate, train and evaluate every recipe and seed; write the leaderboard. Returns its rows."""
    check_experiment(config)
    for recipe, pipeline_file in config.recipes.items():
        if not Path(pipeline_file).is_file():
            raise ConfigError(f"recipe {recipe!r}: pipeline file {pipeline_file} not found")
    # every recipe is curated before any training: the local engine forks its workers, and a child
    # forked after torch ran OpenMP threads deadlocks in FAISS's OpenMP (decontaminate, near_dedup)
    curated = {recipe: curate_recipe(recipe, file, config, progress) for recipe, file in config.recipes.items()}
    records = []
    for recipe, (out, stats) in curated.items():
        for seed in config.seeds:
            record = train_and_evaluate(recipe, out, seed, config, progress)
            records.append({**record, "curated_size": stats["kept"], "pool_size": stats["input"]})
    rows = leaderboard_rows(records)
    write_leaderboard(rows, records, config, Path(config.output))
    return rows


def leaderboard_rows(records: list[dict]) -> list[dict]:
    """One row per recipe: mean and spread of the aggregate over seeds, each task's mean main score, and
    for captioning tasks each of their metrics (`{task} {metric}`)."""
    rows = []
    for recipe in dict.fromkeys(r["recipe"] for r in records):
        runs = [r for r in records if r["recipe"] == recipe]
        scores = [r["aggregate"] for r in runs]
        row = {"recipe": recipe, "curated_size": runs[0]["curated_size"], "pool_size": runs[0]["pool_size"],
               "seeds": len(runs), "aggregate": statistics.fmean(scores),
               "aggregate_std": statistics.stdev(scores) if len(scores) > 1 else 0.0}
        for task, result in runs[0]["tasks"].items():
            row[task] = statistics.fmean(r["tasks"][task]["main"] for r in runs)
            if result["kind"] == "captioning":  # BLEU-4 and METEOR next to the main CIDEr
                for metric in result["metrics"]:
                    if metric != result["main_metric"]:
                        row[f"{task} {metric}"] = statistics.fmean(r["tasks"][task]["metrics"][metric] for r in runs)
        rows.append(row)
    return sorted(rows, key=lambda r: -r["aggregate"])


def write_leaderboard(rows: list[dict], records: list[dict], config: ExperimentConfig, out: Path,
                      notes: list[str] = ()) -> None:
    """leaderboard.md (with `notes` under the table), leaderboard.csv and plots (score per recipe with
    seed spread; score vs size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    summary = ("recipe", "curated_size", "pool_size", "seeds", "aggregate", "aggregate_std")
    tasks = [k for k in rows[0] if k not in summary]
    with open(out / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    main_metrics = {task: result.get("main_metric") for task, result in records[0]["tasks"].items()}
    labels = [f"{t} ({main_metrics[t]})" if main_metrics.get(t) else t for t in tasks]
    header = "| rank | recipe | curated / pool | aggregate (mean ± std over seeds) | " + " | ".join(labels) + " |"
    trained = f"CLIP `{Path(config.train).name}`, {config.samples_seen:,} samples seen"
    if config.model == "llava":
        trained = (f"LLaVA `{Path(config.train).name}`, stage 1 on the recipe's captions, "
                   f"{config.samples_seen:,} samples seen")
        if config.stage2_data is not None:
            trained += (f", then stage 2 on `{config.stage2_data}` (the same for every recipe), "
                        f"{config.stage2_samples_seen or config.samples_seen:,} samples seen")
    lines = [f"# {config.name}", "",
             f"{trained}, for every recipe; seeds {config.seeds}, suite `{Path(config.suite).name}`, "
             f"decontamination: {config.decontaminate}.", "",
             header, "|" + "---|" * (4 + len(tasks))]
    for rank, row in enumerate(rows, 1):
        lines.append(f"| {rank} | {row['recipe']} | {row['curated_size']:,} / {row['pool_size']:,} | "
                     f"{row['aggregate']:.4f} ± {row['aggregate_std']:.4f} | "
                     + " | ".join(f"{row[t]:.4f}" for t in tasks) + " |")
    lines += ["", *notes] if notes else []
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    names = [r["recipe"] for r in rows]
    left.bar(names, [r["aggregate"] for r in rows], yerr=[r["aggregate_std"] for r in rows], capsize=4,
             color="#4c72b0")
    for i, row in enumerate(rows):
        seeds = [r["aggregate"] for r in records if r["recipe"] == row["recipe"]]
        left.scatter([i] * len(seeds), seeds, color="black", s=12, zorder=3)
    left.set_ylabel("aggregate score")
    left.set_title("Score per recipe (bars: mean; dots: seeds)")
    right.scatter([r["curated_size"] for r in rows], [r["aggregate"] for r in rows])
    for row in rows:
        right.annotate(row["recipe"], (row["curated_size"], row["aggregate"]), fontsize=8)
    right.set_xlabel("curated set size")
    right.set_ylabel("aggregate score")
    right.set_title("Score vs curated-set size")
    fig.savefig(out / "leaderboard.png", dpi=90)
    plt.close(fig)
