"""Engines: where tasks run. Each engine runs the same stage code and writes the same layout."""

from curate.engines.local import LocalEngine
from curate.engines.ray import RayEngine
from curate.engines.spark import SparkEngine

ENGINES = {"local": LocalEngine, "ray": RayEngine, "spark": SparkEngine}
