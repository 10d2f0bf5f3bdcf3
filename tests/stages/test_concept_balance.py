"""concept_balance on real pool captions: counts, MetaCLIP's sampling rule, the unmatched
parameter, t from a target size, and an end-to-end run with its report section."""

import json
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from curate.engines import LocalEngine
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline
from curate.stages.concept_balance import ConceptBalance, ConceptBalanceConfig
from curate.stages.concept_match import ConceptMatch, ConceptMatchConfig

SEEDS = 400


@pytest.fixture(scope="module")
def matched(pool_table, concept_metadata) -> pa.Table:
    """The real pool with the entries each caption matches."""
    stage = ConceptMatch(ConceptMatchConfig(metadata=str(concept_metadata)))
    stage.setup()
    return stage.process(pool_table.select(["uid", "text"])).table


def balance(metadata, **params) -> ConceptBalance:
    return ConceptBalance(ConceptBalanceConfig(metadata=str(metadata), **params))


def fit(stage: ConceptBalance, table: pa.Table, batch: int = 32):
    """Fit as an engine does: partial per batch, merge, finalize."""
    parts = [stage.partial(table.slice(i, batch)) for i in range(0, table.num_rows, batch)]
    return stage.finalize(stage.merge(parts))


def counts_of(state: dict) -> dict[int, int]:
    """The fitted samples per entry."""
    return dict(zip(state["count_ids"].tolist(), state["count_values"].tolist()))


def kept_counts(stage: ConceptBalance, table: pa.Table, state) -> tuple[Counter, int]:
    """Samples kept per entry, and samples kept, after apply."""
    verdict = stage.apply(table, state)
    kept = [c for c, r in zip(table.column("concepts").to_pylist(), verdict.reasons) if r is None]
    return Counter(e for entries in kept for e in entries), len(kept)


def test_counts_merge_in_any_grouping(matched, concept_metadata):
    stage = balance(concept_metadata, t=5, fit_sample=50)
    expected = Counter(e for entries in matched.column("concepts").to_pylist() for e in entries)
    states = [fit(stage, matched, batch) for batch in (7, 40, matched.num_rows)]
    for state in states:
        assert counts_of(state) == dict(expected)
        assert state["unmatched"] == sum(1 for c in matched.column("concepts").to_pylist() if not c)
    parts = [stage.partial(matched.slice(i, 20)) for i in range(0, matched.num_rows, 20)]
    left = stage.merge([stage.merge(parts[:3]), stage.merge(parts[3:])])
    right = stage.merge([stage.merge(parts[::-1][:2]), stage.merge(parts[::-1][2:])])
    assert left == right == stage.merge(parts)  # associative, order-free: every engine fits the same state
    assert len(left.sample) == 50


def test_entries_at_or_below_t_keep_every_sample(matched, concept_metadata):
    t = 4
    stage = balance(concept_metadata, t=t)
    state = fit(stage, matched)
    tail = {e for e, n in counts_of(state).items() if n <= t}
    assert tail and any(n > t for n in counts_of(state).values())
    for seed in range(20):
        stage = balance(concept_metadata, t=t, seed=seed)
        counts, _ = kept_counts(stage, matched, state)
        assert all(counts[e] == counts_of(state)[e] for e in tail)


def test_single_entry_samples_follow_min_count_t_in_expectation(matched, concept_metadata):
    """Where each sample matches one entry, an entry's kept count has expectation min(count, t)."""
    single = matched.filter(pa.array([len(c) == 1 for c in matched.column("concepts").to_pylist()]))
    t = 1
    state = fit(balance(concept_metadata, t=t), single)
    head = {e: n for e, n in counts_of(state).items() if n > t}
    assert len(head) >= 3, head
    totals = Counter()
    for seed in range(SEEDS):
        counts, _ = kept_counts(balance(concept_metadata, t=t, seed=seed), single, state)
        totals.update(counts)
    for entry, count in counts_of(state).items():
        mean = totals[entry] / SEEDS
        q = min(1.0, t / count)
        sd = math.sqrt(count * q * (1 - q) / SEEDS)
        assert abs(mean - min(count, t)) <= 4.5 * sd + 1e-9, (entry, count, mean)


def test_all_samples_follow_metaclip_rule_in_expectation(matched, concept_metadata):
    """Kept count of an entry: expectation sum over its samples of 1 - prod(1 - min(1, t/count_e)),
    which is never below min(count, t); the per-sample rate matches that probability."""
    t = 3
    state = fit(balance(concept_metadata, t=t), matched)
    rows = matched.column("concepts").to_pylist()
    probs = [1 - math.prod(1 - min(1.0, t / counts_of(state)[e]) for e in entries) if entries else 0.0
             for entries in rows]
    expected, variance = Counter(), Counter()
    for entries, p in zip(rows, probs):
        for e in entries:
            expected[e] += p
            variance[e] += p * (1 - p)
    totals, kept_total = Counter(), 0
    for seed in range(SEEDS):
        counts, kept = kept_counts(balance(concept_metadata, t=t, seed=seed), matched, state)
        totals.update(counts)
        kept_total += kept
    for entry, count in counts_of(state).items():
        assert expected[entry] >= min(count, t) - 1e-9
        mean, sd = totals[entry] / SEEDS, math.sqrt(variance[entry] / SEEDS)
        assert abs(mean - expected[entry]) <= 4.5 * sd + 1e-9, (entry, count, mean, expected[entry])
    assert abs(kept_total / SEEDS - sum(probs)) <= 4.5 * math.sqrt(sum(p * (1 - p) for p in probs) / SEEDS)
    assert sum(probs) < len(rows) - state["unmatched"]  # balancing cut something


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_samples_matching_nothing_follow_the_parameter(matched, concept_metadata, policy):
    stage = balance(concept_metadata, t=1, unmatched=policy)
    state = fit(stage, matched)
    verdict = stage.apply(matched, state)
    rows = matched.column("concepts").to_pylist()
    empty = [i for i, c in enumerate(rows) if not c]
    assert empty
    if policy == "drop":
        assert all(verdict.reasons[i] == "no_concept" for i in empty)
    else:
        assert all(verdict.reasons[i] is None for i in empty)
    assert {verdict.reasons[i] for i, c in enumerate(rows) if c} <= {None, "concept_head_sampled"}
    assert "concept_head_sampled" in verdict.reasons


def test_draw_depends_only_on_uid_and_seed(matched, concept_metadata):
    stage = balance(concept_metadata, t=2, seed=7)
    state = fit(stage, matched)
    verdict = stage.apply(matched, state)
    order = np.random.default_rng(0).permutation(matched.num_rows)
    shuffled = matched.take(pa.array(order))
    again = [r for i in range(0, shuffled.num_rows, 13) for r in stage.apply(shuffled.slice(i, 13), state).reasons]
    assert dict(zip(shuffled.column("uid").to_pylist(), again)) == dict(zip(matched.column("uid").to_pylist(),
                                                                            verdict.reasons))
    other = balance(concept_metadata, t=2, seed=8).apply(matched, state)
    assert other.reasons.tolist() != verdict.reasons.tolist()


def test_t_from_target_size(matched, concept_metadata):
    matched_rows = sum(1 for c in matched.column("concepts").to_pylist() if c)
    target = matched_rows // 2
    stage = balance(concept_metadata, target_size=target)
    fit_state = stage.merge([stage.partial(matched)])
    state = stage.finalize(fit_state)
    assert state['expected_kept'] >= target
    assert state['t'] == 1 or stage.expected_kept(fit_state, state['t'] - 1) < target  # the smallest such t
    sizes = [kept_counts(balance(concept_metadata, target_size=target, seed=s), matched, state)[1] for s in range(50)]
    assert abs(np.mean(sizes) - state['expected_kept']) < 3 * np.std(sizes) / math.sqrt(50) + 0.5
    unreachable = balance(concept_metadata, target_size=matched.num_rows * 10)
    fitted = unreachable.finalize(unreachable.merge([unreachable.partial(matched)]))
    assert fitted["t"] == max(counts_of(state).values())


def test_exactly_one_of_t_and_target(concept_metadata):
    with pytest.raises(ValueError, match="exactly one of t and target_size"):
        ConceptBalanceConfig(metadata=str(concept_metadata))
    with pytest.raises(ValueError, match="exactly one of t and target_size"):
        ConceptBalanceConfig(metadata=str(concept_metadata), t=3, target_size=10)


def test_ids_outside_the_metadata_name_the_sample(concept_metadata):
    stage = balance(concept_metadata, t=3)
    table = pa.table({"uid": ["a", "b"], "concepts": pa.array([[0], [10**6]], pa.list_(pa.int32()))})
    with pytest.raises(ValueError, match=r"sample b: concepts \[1000000\] are not entry ids of"):
        stage.partial(table)


def test_pipeline_run_reports_concepts(pool_root, concept_metadata, tmp_path):
    stages = [{"stage": "concept_match", "metadata": str(concept_metadata)},
              {"stage": "concept_balance", "metadata": str(concept_metadata), "t": 2}]
    pipeline = parse_pipeline({"name": "balance", "batch_size": 32, "stages": stages}, "<test>")
    stats = run_pipeline(pipeline, LocalEngine(workers=2, progress=False), [str(pool_root / "pool")], tmp_path / "out")
    fit_stats = stats["fits"]["1:concept_balance"]
    assert fit_stats["t"] == 2 and fit_stats["samples"] == stats["input"]
    assert fit_stats["head"][0]["count"] >= fit_stats["head"][-1]["count"] > 2
    reasons = stats["stages"][-1]["reasons"]
    assert reasons["no_concept"] == fit_stats["unmatched"] and reasons["concept_head_sampled"] > 0
    assert stats["kept"] + stats["rejected"] == stats["input"]
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["fits"] == stats["fits"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Concepts (MetaCLIP balancing)" in report and fit_stats["head"][0]["entry"] in report
