"""Engines: where batches run. Each engine runs the same stage code and writes the same layout."""

from curate.engines.local import LocalEngine

ENGINES = {"local": LocalEngine}
