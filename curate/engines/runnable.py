"""What an engine runs: a pipeline, as a typed protocol.

curate.pipeline.Pipeline is one. The engines name it by what they read of it, not by its class:
the pipeline layer imports the stage registry, which an engine must not reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from curate.io.readers.contract import ReadLimits
from curate.stage import Stage


@runtime_checkable
class RunSettings(Protocol):
    """The settings an engine reads (curate.pipeline.PipelineSettings)."""

    @property
    def batch_size(self) -> int:
        """Rows per batch handed to a stage."""

    @property
    def partition_rows(self) -> int:
        """Rows per partition of a global stage's shuffle."""

    @property
    def outputs(self) -> Sequence[str]:
        """What the run writes besides the ledger, stats and report (parquet, webdataset, uids)."""

    def read_limits(self) -> ReadLimits:
        """The readers' size caps and what they do with an unreadable row group."""


@runtime_checkable
class StageEntry(Protocol):
    """A pipeline's entry for one stage, as an engine names it (curate.pipeline.StageSpec)."""

    @property
    def name(self) -> str:
        """The stage's registered name."""


@runtime_checkable
class RunPipeline(Protocol):
    """A pipeline as an engine runs it: its name, settings and stage entries, and its stages built
    (a picklable value: it travels to the workers inside each task's job)."""

    @property
    def name(self) -> str:
        """The pipeline's name."""

    @property
    def settings(self) -> RunSettings:
        """Its settings."""

    @property
    def stages(self) -> Sequence[StageEntry]:
        """Its stages' entries, in order (their repr keys a worker's built stages)."""

    def build_stages(self) -> list[Stage]:
        """Its stages, built from their configs."""
