"""curate: curate image-text pretraining data and score every data choice end to end.

The Python API, for notebooks and scripts (the command line runs the same code):

    import curate
    pipeline = curate.load_pipeline("pipelines/quickstart.yaml", ["stages[1].min_words=3"])
    stats = curate.run("pipelines/quickstart.yaml", input="data/openclipart/pool", output="out/qs", workers=2)
    stats["kept"], stats["stages"]
"""

from __future__ import annotations

import os

# img2dataset imports albumentations, which otherwise checks the network for updates on import
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def load_pipeline(path, overrides: list[str] = ()):
    """Read and validate a pipeline file, with `key=value` overrides (as `--set`); returns a
    curate.pipeline.Pipeline, or raises curate.config.ConfigError listing every problem."""
    from curate.pipeline import load_pipeline as load

    return load(path, list(overrides))


def run(pipeline, input: str | list[str] | None = None, output: str | None = None, engine="local",
        workers: int | None = None, overrides: list[str] = (), limit: int | None = None, overwrite: bool = False,
        progress: bool = False, address: str | None = None, master: str | None = None,
        staging: str | None = None) -> dict:
    """Run a pipeline as `curate run` does and return its stats (OUTPUT/stats.json's content).

    `pipeline`: a file path or a Pipeline from `load_pipeline`; `input`/`output` default to the
    file's; `engine`: "local", "ray", "spark" or an engine object (then `workers`, `address` and
    `master` are its own); `overrides`: `key=value` strings as `--set`; `limit`: only the input's
    first N samples. A finished identical run in the output is reused, an interrupted one resumes.
    """
    from curate.engines import make_engine
    from curate.runner import run_pipeline

    if not hasattr(pipeline, "stages"):
        pipeline = load_pipeline(pipeline, [*overrides, *([f"limit={limit}"] if limit else [])])
    elif overrides or limit:
        raise ValueError("overrides and limit go with a pipeline file: apply them with load_pipeline(path, overrides)")
    if isinstance(engine, str):
        engine = make_engine(engine, workers, address, master, progress)
    command = f"curate.run({pipeline.source!r}, input={input!r}, output={output!r}, engine={engine.name!r})"
    return run_pipeline(pipeline, engine, input, output, overwrite, staging, command)
