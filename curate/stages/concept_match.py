"""Concept match stage (MetaCLIP): the metadata entries found in each caption, by Aho-Corasick."""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from curate.metadata import ConceptMatcher, load_metadata
from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict

CONCEPTS_TYPE = pa.list_(pa.int32())


class ConceptMatchConfig(StageConfig):
    """Parameters of the concept_match stage."""

    metadata: str = Field(..., description="entry list from `curate metadata build` (Parquet or text); an id is a row")


class ConceptMatch(MapStage):
    """Find metadata entries in captions (whole tokens, any case; Aho-Corasick); writes their ids to `concepts`."""

    name = "concept_match"
    Config = ConceptMatchConfig
    reads = ("text",)
    writes = {"concepts": CONCEPTS_TYPE}
    # Not a model stage: the automaton builds in about 3 s for the ~150k WordNet entries (12 s
    # for 500k, bench/balance.py, on a busy 2-core machine), and Ray's task workers keep their
    # set-up stages between tasks, so it is built once per worker process either way; an actor
    # pool would only add its start-up to every pass of the pipeline.
    uses_model = False

    def setup(self) -> None:
        self._matcher = ConceptMatcher(load_metadata(self.config.metadata))

    def process(self, table: pa.Table) -> Verdict:
        found = [self._matcher.match(text) for text in table.column("text").to_pylist()]
        return Verdict(set_column(table, "concepts", found, CONCEPTS_TYPE))
