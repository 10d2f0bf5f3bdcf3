"""`curate eval`: score a CLIP or LLaVA checkpoint on an evaluation suite and write results.json.

The checkpoint says what it is (a LLaVA checkpoint has `kind: llava`; anything else is read as
CLIP): a CLIP is scored on zero-shot and retrieval tasks, a LLaVA on captioning and VQA tasks,
each with its own default suite.

torch and open_clip are imported when the command runs, so registering it keeps `curate` fast to start.
"""

from __future__ import annotations

from pathlib import Path

import click

from curate.cli.errors import UserError
from curate.io.writers import write_json_atomic
from curate.models.checkpoint import UnsafeCheckpointError, load_torch_file
from train.eval.suite import SuiteError, load_suite

DEFAULT_SUITE = Path(__file__).resolve().parents[2] / "train" / "configs" / "eval_default.yaml"
DEFAULT_LLAVA_SUITE = DEFAULT_SUITE.with_name("eval_llava.yaml")


@click.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="a curate CLIP or LLaVA checkpoint (.pt), or an open_clip pretrained file with --model")
@click.option("--model", "model_name", default=None, help="open_clip model name (only for open_clip pretrained files)")
@click.option("--suite", "suite_path", type=click.Path(path_type=Path), default=None,
              help="evaluation suite (YAML)  [default: train/configs/eval_default.yaml for CLIP, eval_llava.yaml "
                   "for LLaVA]")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="results JSON  [default: results.json next to the checkpoint]")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default=None, help="torch device  [default: cuda when available, else cpu]")
def eval_command(checkpoint: Path, model_name: str | None, suite_path: Path | None, output: Path | None,
                 batch_size: int, device: str | None) -> None:
    """Evaluate a checkpoint, one aggregate score (DataComp rule). CLIP: zero-shot and retrieval tasks;
    LLaVA: captioning (BLEU-4, METEOR, CIDEr) and VQA accuracy."""
    import torch

    from train.eval.captioning import evaluate_captioner
    from train.eval.evaluate import evaluate

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = checkpoint_kind(checkpoint)
        suite = load_suite(suite_path or (DEFAULT_LLAVA_SUITE if kind == "llava" else DEFAULT_SUITE))
        model, extra = _load(kind, checkpoint, model_name, device)
    except (SuiteError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    except (ValueError, RuntimeError, EOFError) as exc:
        raise UserError(f"cannot load checkpoint {checkpoint}: {exc}") from exc
    try:
        if kind == "llava":
            results = evaluate_captioner(model, suite, batch_size=batch_size)
        else:
            results = evaluate(model, suite, batch_size=batch_size, device=device)
    except SuiteError as exc:
        raise UserError(str(exc)) from exc
    output = output or checkpoint.parent / "results.json"
    state = {key: value for key, value in extra.items() if isinstance(value, (bool, int, float, str))}
    write_json_atomic({"checkpoint": str(checkpoint), "checkpoint_state": state, **results}, output)
    click.echo(format_table(results))
    click.echo(f"results: {output}")


def checkpoint_kind(path: Path) -> str:
    """`llava` for a LLaVA checkpoint, else `clip` (a curate CLIP checkpoint or an open_clip weights file).
    Reads only the checkpoint's small entries (the tensors stay memory-mapped), weights-only: a file
    that names any other object is refused (UnsafeCheckpointError) before anything in it runs."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        data = load_torch_file(path, "a curate CLIP or LLaVA checkpoint", mmap=True)
    except UnsafeCheckpointError:
        raise
    except (RuntimeError, ValueError, EOFError):  # not a torch zip file: the CLIP loader
        return "clip"                             # says what is wrong with it
    return "llava" if isinstance(data, dict) and data.get("kind") == "llava" else "clip"


def _load(kind: str, checkpoint: Path, model_name: str | None, device: str):
    """The model to evaluate (a Clip, or a Captioner for LLaVA) and the checkpoint's other contents."""
    if kind == "llava":
        from curate.models.llava.generate import Captioner

        state = load_torch_file(checkpoint, "a LLaVA checkpoint", mmap=True)
        return Captioner.load(checkpoint, device), {k: v for k, v in state.items() if k != "state_dict"}
    from curate.models.clip import load_checkpoint

    return load_checkpoint(checkpoint, model_name=model_name, device=device)


def format_table(results: dict) -> str:
    """A short text table of an evaluate() or evaluate_captioner() result: task, n, main metric (captioning
    tasks add their other metrics), then the aggregate."""
    width = max(len("aggregate"), *(len(name) for name in results["tasks"]))
    lines = [f"{'task':<{width}}  {'n':>6}  {'metric':<10}  {'main':>6}"]
    for name, task in results["tasks"].items():
        lines.append(f"{name:<{width}}  {task['n']:>6}  {task['main_metric']:<10}  {task['main']:>6.4f}")
        if task["kind"] == "captioning":
            lines += [f"{'':<{width}}  {'':>6}  {metric:<10}  {value:>6.4f}"
                      for metric, value in task["metrics"].items() if metric != task["main_metric"]]
    lines.append(f"{'aggregate':<{width}}  {'':>6}  {'mean main':<10}  {results['aggregate']:>6.4f}")
    return "\n".join(lines)
