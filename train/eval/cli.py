"""`curate eval`: score a CLIP checkpoint on an evaluation suite and write results.json.

torch and open_clip are imported when the command runs, so registering it keeps `curate` fast to start.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import click

from curate.io.writers import write_json_atomic
from train.eval.suite import SuiteError, load_suite

DEFAULT_SUITE = Path(__file__).resolve().parents[2] / "train" / "configs" / "eval_default.yaml"


class EvalError(click.ClickException):
    """A bad suite, checkpoint or data set: printed without a traceback, exit code 2."""

    exit_code = 2


@click.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="a curate checkpoint (.pt), or an open_clip pretrained file with --model")
@click.option("--model", "model_name", default=None, help="open_clip model name (only for open_clip pretrained files)")
@click.option("--suite", "suite_path", type=click.Path(path_type=Path), default=DEFAULT_SUITE, show_default=True,
              help="evaluation suite (YAML)")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="results JSON  [default: results.json next to the checkpoint]")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default=None, help="torch device  [default: cuda when available, else cpu]")
def eval_command(checkpoint: Path, model_name: str | None, suite_path: Path, output: Path | None, batch_size: int,
                 device: str | None) -> None:
    """Evaluate a CLIP checkpoint: zero-shot and retrieval tasks, one aggregate score (DataComp rule)."""
    import torch

    from train.clip.model import load_checkpoint
    from train.eval.evaluate import evaluate

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        suite = load_suite(suite_path)
        clip, extra = load_checkpoint(checkpoint, model_name=model_name, device=device)
    except (SuiteError, FileNotFoundError) as exc:
        raise EvalError(str(exc)) from exc
    except (ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise EvalError(f"cannot load checkpoint {checkpoint}: {exc}") from exc
    try:
        results = evaluate(clip, suite, batch_size=batch_size, device=device)
    except SuiteError as exc:
        raise EvalError(str(exc)) from exc
    output = output or checkpoint.parent / "results.json"
    state = {key: value for key, value in extra.items() if isinstance(value, (bool, int, float, str))}
    write_json_atomic({"checkpoint": str(checkpoint), "checkpoint_state": state, **results}, output)
    click.echo(format_table(results))
    click.echo(f"results: {output}")


def format_table(results: dict) -> str:
    """A short text table of an evaluate() result: task, n, main metric, then the aggregate."""
    width = max(len("aggregate"), *(len(name) for name in results["tasks"]))
    lines = [f"{'task':<{width}}  {'n':>6}  {'metric':<10}  {'main':>6}"]
    for name, task in results["tasks"].items():
        metric = "top1" if task["kind"] == "zeroshot" else "mean R@1"
        lines.append(f"{name:<{width}}  {task['n']:>6}  {metric:<10}  {task['main']:>6.4f}")
    lines.append(f"{'aggregate':<{width}}  {'':>6}  {'mean main':<10}  {results['aggregate']:>6.4f}")
    return "\n".join(lines)
