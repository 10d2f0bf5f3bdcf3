"""The stage contract held, not only declared: a stage that gives a reason it does not declare in
`reasons`, or adds a column it does not declare in `writes`, fails the batch (the engines' shared
per-batch step); and a stage registers itself by being defined in curate/stages/ and imported there."""

import sys
import types

import numpy as np
import pyarrow as pa
import pytest

from curate.engines.plan import plan_passes, run_pass_on_batch
from curate.schema import set_column
from curate.stage import GlobalStage, MapStage, Stage, StageConfig, Verdict
from curate.stages import REGISTRY, _defined_here, build_registry, contract_errors
from curate.stages.caption import Caption


class Flags(MapStage):
    """A stage that rejects every other row for `reason` and adds the column `column`."""

    name = "flags"
    Config = StageConfig
    writes = {"flag": pa.bool_()}
    reasons = ("flagged",)

    def __init__(self, reason: str = "flagged", column: str = "flag"):
        super().__init__(StageConfig())
        self.reason, self.column = reason, column

    def process(self, table):
        verdict = Verdict(set_column(table, self.column, pa.array(np.ones(table.num_rows, bool))))
        verdict.reject_where(np.arange(table.num_rows) % 2 == 0, self.reason)
        return verdict


class FitsFlags(GlobalStage):
    """A global stage whose fit names rows `fitted_out`."""

    name = "fits_flags"
    Config = StageConfig
    reasons = ("fitted_out",)

    def fit(self, data, context):
        raise NotImplementedError  # the apply step is tested alone: the fit's rejections are given


def run_batch(stages, table, rejected=None):
    passes = plan_passes(stages)
    return run_pass_on_batch(stages, passes[-1], Verdict(table), {}, rejected, read_step=True)


def test_declared_reasons_and_columns_pass(pool_table):
    result = run_batch([Flags()], pool_table.slice(0, 6))
    assert result.kept.column("flag").to_pylist() == [True] * 3
    assert result.stats["0:flags"].reasons == {"flagged": 3}


def test_an_undeclared_reason_fails_the_batch(pool_table):
    with pytest.raises(RuntimeError, match=r"stage 1:flags rejected rows for \['surprise'\], not in Flags.reasons"):
        run_batch([Caption(Caption.Config(min_words=1)), Flags(reason="surprise")], pool_table.slice(0, 6))


def test_an_undeclared_column_fails_the_batch(pool_table):
    with pytest.raises(RuntimeError, match=r"stage 0:flags added columns \['score'\], not in Flags.writes"):
        run_batch([Flags(column="score")], pool_table.slice(0, 6))


def test_a_rewritten_column_is_not_a_new_one(pool_table):
    """Writing over a column the batch already has (resize's image, pii's text) adds nothing to declare."""
    result = run_batch([Flags(column="text")], pool_table.slice(0, 4))
    assert result.kept.column("text").to_pylist() == [True] * 2


def test_a_global_stage_apply_is_held_to_its_reasons(pool_table):
    """The reasons a fit routes back are the stage's too: apply's answer is checked like process's."""
    stages, table = [FitsFlags(StageConfig())], pool_table.slice(0, 4)
    apply_pass = plan_passes(stages)[1]
    routed = pa.table({"position": pa.array([1], pa.int64()), "reason": ["fitted_out"],
                       "value": pa.nulls(1, pa.string())})
    result = run_pass_on_batch(stages, apply_pass, Verdict(table), {}, routed, read_step=False)
    assert result.stats["0:fits_flags"].reasons == {"fitted_out": 1}
    routed = routed.set_column(1, "reason", pa.array(["other"]))
    with pytest.raises(RuntimeError, match=r"stage 0:fits_flags rejected rows for \['other'\], not in FitsFlags"):
        run_pass_on_batch(stages, apply_pass, Verdict(table), {}, routed, read_step=False)


def test_a_verdict_rejecting_named_rows_keeps_each_rows_first_reason():
    """Verdict.rejecting (a reader's failures, a fit's decisions) rejects by position, first reason kept."""
    rejected = pa.table({"position": pa.array([2, 0, 2], pa.int64()), "reason": ["x", "y", "z"],
                         "value": [None, "v", "w"]})
    kept, ledger = Verdict.rejecting(pa.table({"uid": list("abcd")}), rejected).split("s")
    assert kept["uid"].to_pylist() == ["b", "d"]
    assert ledger.select(["uid", "reason", "value"]).to_pylist() == [{"uid": "a", "reason": "y", "value": "v"},
                                                                     {"uid": "c", "reason": "x", "value": None}]


def test_every_registered_stage_declares_its_contract():
    assert REGISTRY and all(not contract_errors(cls) for cls in REGISTRY.values())
    assert list(REGISTRY) == sorted(REGISTRY)


def test_a_stage_registers_by_being_defined_in_the_package():
    """A class that sets its own name in a module of curate.stages is found (no list to edit); one
    defined elsewhere (this test module) and a variant that inherits its name are not."""
    module = types.ModuleType("curate.stages._probe")
    sys.modules[module.__name__] = module
    try:
        exec("from curate.stage import MapStage, StageConfig\n"
             "class Probe(MapStage):\n    '''Probe.'''\n    name = 'probe'\n    Config = StageConfig\n"
             "    def process(self, table):\n        return None\n"
             "class ProbeVariant(Probe):\n    '''A variant.'''\n", module.__dict__)
        found = _defined_here(Stage)
        assert module.Probe in found and module.ProbeVariant not in found and Flags not in found
        assert {cls.name for cls in found} == set(REGISTRY) | {"probe"}
    finally:
        del sys.modules[module.__name__]


def test_a_broken_declaration_or_a_name_taken_twice_is_refused():
    class OneReason(MapStage):
        """Declares a string, not a tuple: ('pii') is 'pii'."""

        name = "one_reason"
        Config = StageConfig
        reasons = ("pii")

    class Again(MapStage):
        """Takes caption's name."""

        name = "caption"
        Config = StageConfig

    with pytest.raises(TypeError) as err:
        build_registry([OneReason, Caption, Again])
    assert "stage 'one_reason'" in str(err.value) and "reasons is 'pii', expected a tuple" in str(err.value)
    assert "stage name 'caption' is taken twice: curate.stages.caption.Caption and" in str(err.value)
