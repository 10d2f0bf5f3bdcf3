"""Concept balance stage (MetaCLIP): flatten the concept distribution by sampling head entries.

Fit: count, over the whole pool, the samples that match each entry (`concepts` from
`concept_match`). Apply: keep a sample with probability 1 - prod over its entries of
(1 - min(1, t / count_e)): a sample with any tail entry (count <= t) is always kept, one with
only head entries is kept with the chance that at least one of them picks it, so every entry
ends near min(count, t) samples. The draw is a hash of (uid, seed), so a sample's fate does
not depend on the engine, the worker count or the order of the data.

`t` is given, or derived from `target_size`: the expected kept size is monotone in t, so the
smallest integer t whose expected kept size reaches the target is found by bisection. The
expectation sums each sample's keep probability over a uniform sample of the pool's entry
sets (the `fit_sample` rows with the smallest hash of uid, which merges in any grouping),
scaled to the pool: exact when the pool is no larger than `fit_sample`.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from curate.metadata import load_metadata, rank_profile
from curate.stage import Dataset, FitContext, Fitted, GlobalStage, StageConfig, Verdict

HEAD_ROWS = 20  # head entries listed in the fit summary (and the report)


def unit_hash(uid: str, salt: str) -> float:
    """A uniform number in [0, 1) from (uid, salt): the same on every machine and engine."""
    digest = hashlib.blake2b(f"{salt}\x00{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def keep_probability(entries: list[int], entry_prob: np.ndarray) -> float:
    """1 - prod over the entries of (1 - p_e), p_e = min(1, t / count_e); 0 for no entry."""
    return 1.0 - math.prod(1.0 - float(entry_prob[e]) for e in entries)


def entry_probabilities(counts: dict[int, int], t: float, size: int) -> np.ndarray:
    """min(1, t / count_e) for every entry id below `size` (1 where an entry has no count)."""
    prob = np.ones(size, np.float64)
    if counts:
        ids = np.fromiter(counts.keys(), np.int64, len(counts))
        prob[ids] = np.minimum(1.0, t / np.fromiter(counts.values(), np.float64, len(counts)))
    return prob


class ConceptBalanceConfig(StageConfig):
    """Parameters of the concept_balance stage; set exactly one of t and target_size."""

    metadata: str = Field(..., description="the entry list concept_match used (ids are checked, head entries named)")
    t: int | None = Field(None, gt=0, description="per-entry cap (MetaCLIP: 20,000 for 400M samples, 170,000 for 2.5B)")
    target_size: int | None = Field(None, gt=0,
                                    description="derive t so that the expected kept size is this many samples")
    unmatched: Literal["drop", "keep"] = Field(
        "drop", description="samples that match no entry: drop them (MetaCLIP) or keep them all")
    seed: int = Field(0, description="seed of the per-sample draw (a hash of uid and seed)")
    fit_sample: int = Field(100_000, gt=0, description="rows whose entry sets estimate the kept size for target_size")

    @model_validator(mode="after")
    def _one_rule(self):
        if (self.t is None) == (self.target_size is None):
            raise ValueError("set exactly one of t and target_size")
        return self


@dataclass
class ConceptCounts:
    """The fit's partial state: samples per entry, pool and unmatched sizes, and a uniform
    sample of entry sets (hash, uid, entries), the `fit_sample` smallest hashes."""

    counts: Counter
    samples: int
    unmatched: int
    sample: list[tuple[float, str, tuple[int, ...]]]


class ConceptBalance(GlobalStage):
    """Balance concepts (MetaCLIP): keep a sample with probability 1 - prod(1 - min(1, t / count)) over its entries."""

    name = "concept_balance"
    Config = ConceptBalanceConfig
    reads = ("uid", "concepts")
    reasons = ("no_concept", "concept_head_sampled")
    fit_columns = ("concepts",)

    @cached_property
    def size(self) -> int:
        """How many entries the metadata has (ids run from 0 to size - 1)."""
        return len(load_metadata(self.config.metadata))

    def _entries(self, table: pa.Table) -> list[list[int]]:
        """Each row's distinct entry ids, sorted; an id outside the metadata is an error naming the sample."""
        rows = [sorted(set(e or ())) for e in table.column("concepts").to_pylist()]
        for uid, entries in zip(table.column("uid").to_pylist(), rows):
            bad = [e for e in entries if not 0 <= e < self.size]
            if bad:
                raise ValueError(f"sample {uid}: concepts {bad} are not entry ids of {self.config.metadata} "
                                 f"({self.size} entries, ids 0..{self.size - 1})")
        return rows

    def partial(self, table: pa.Table) -> ConceptCounts:
        rows = self._entries(table)
        counts = Counter(e for entries in rows for e in entries)
        hashed = ((unit_hash(uid, "fit-sample"), uid, tuple(entries))
                  for uid, entries in zip(table.column("uid").to_pylist(), rows))
        return ConceptCounts(counts, len(rows), sum(1 for e in rows if not e),
                             heapq.nsmallest(self.config.fit_sample, hashed))

    def merge(self, partials: list[ConceptCounts]) -> ConceptCounts:
        counts: Counter = Counter()
        for part in partials:
            counts.update(part.counts)
        sample = heapq.nsmallest(self.config.fit_sample, (s for part in partials for s in part.sample))
        return ConceptCounts(counts, sum(p.samples for p in partials), sum(p.unmatched for p in partials), sample)

    def expected_kept(self, fit: ConceptCounts, t: int) -> float:
        """The pool's expected kept size at `t`: the mean keep probability over the fit's sample of
        entry sets, times the pool size."""
        prob = entry_probabilities(fit.counts, t, self.size)
        unmatched = 1.0 if self.config.unmatched == "keep" else 0.0
        total = sum(keep_probability(entries, prob) if entries else unmatched for _, _, entries in fit.sample)
        return total * fit.samples / len(fit.sample) if fit.sample else 0.0

    def _solve_t(self, fit: ConceptCounts) -> int:
        """The smallest integer t whose expected kept size reaches target_size (the largest
        count, keeping every matched sample, when none does)."""
        low, high = 1, max(fit.counts.values(), default=1)
        if self.expected_kept(fit, high) < self.config.target_size:
            return high
        while low < high:
            middle = (low + high) // 2
            if self.expected_kept(fit, middle) >= self.config.target_size:
                high = middle
            else:
                low = middle + 1
        return low

    def fit(self, data: Dataset, context: FitContext) -> Fitted:
        """Entry counts over the pool (a small associative statistic), then t and each entry's
        keep probability; the draw itself happens in apply."""
        return Fitted(self.finalize(context.aggregate(data, self.partial, self.merge)))

    def finalize(self, fit: ConceptCounts) -> dict:
        """The state apply needs from the merged counts: t, each entry's keep probability, and
        the counts and sizes for the fit summary."""
        t = self.config.t if self.config.t is not None else self._solve_t(fit)
        ids = np.array(sorted(fit.counts), np.int64)
        return {"t": t, "entry_prob": entry_probabilities(fit.counts, t, self.size), "count_ids": ids,
                       "count_values": np.array([fit.counts[e] for e in ids], np.int64), "samples": fit.samples,
                       "unmatched": fit.unmatched, "expected_kept": round(self.expected_kept(fit, t), 3)}

    def apply(self, table: pa.Table, state: dict, rejected: pa.Table | None = None) -> Verdict:
        verdict = Verdict(table)
        for i, (uid, entries) in enumerate(zip(table.column("uid").to_pylist(), self._entries(table))):
            if not entries:
                if self.config.unmatched == "drop":
                    verdict.reject(i, "no_concept")
                continue
            p = keep_probability(entries, state["entry_prob"])
            if unit_hash(uid, str(self.config.seed)) >= p:
                verdict.reject(i, "concept_head_sampled", f"p={p:.6f}")
        return verdict

    def fit_stats(self, state: dict) -> dict:
        """t, pool and unmatched sizes, the rank-count curve before balancing and the head entries."""
        names = load_metadata(self.config.metadata)
        counts = dict(zip(state["count_ids"].tolist(), state["count_values"].tolist()))
        head = sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:HEAD_ROWS]
        t = state["t"]
        return {
            "kind": "concepts", "metadata": self.config.metadata, "entries": len(names), "t": t,
            "target_size": self.config.target_size, "expected_kept": state["expected_kept"],
            "samples": state["samples"],
            "unmatched": state["unmatched"], "unmatched_policy": self.config.unmatched,
            "matched_entries": len(counts), "rank_counts": rank_profile(list(counts.values())),
            "head": [{"id": e, "entry": names[e], "count": n, "p": round(min(1.0, t / n), 6)} for e, n in head],
        }
