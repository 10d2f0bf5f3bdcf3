"""Engines: where tasks run. Each engine runs the same stage code and writes the same layout."""

from curate.engines.local import LocalEngine
from curate.engines.ray import RayEngine
from curate.engines.spark import SparkEngine

ENGINES = {"local": LocalEngine, "ray": RayEngine, "spark": SparkEngine}


def make_engine(name: str = "local", workers: int | None = None, address: str | None = None,
                master: str | None = None, progress: bool = True):
    """An engine by name: `local` (`workers` processes, default this machine's cores), `ray` (a local
    Ray, or the cluster at `address`) or `spark` (local[workers], or the `master` URL)."""
    import os

    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
    if address and name != "ray" or master and name != "spark":
        raise ValueError("address goes with the ray engine, master with spark")
    if name == "ray":
        return RayEngine(workers, address, progress)
    if name == "spark":
        return SparkEngine(workers, master, progress)
    return LocalEngine(workers or os.cpu_count() or 1, progress)
