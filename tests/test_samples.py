"""The seeded choice of rejected and kept samples behind the report's galleries and `curate inspect`:
fixed, per reason, bounded (only the tasks it needs are read) and joined back to the input."""

import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import provenance, samples
from curate.engines.layout import RunLayout


class CountingLayout(RunLayout):
    """A run's real layout that records which tasks' ledger parts are opened."""

    def __init__(self, root):
        super().__init__(root)
        self.tasks_read: set[int] = set()

    def ledger_part(self, pass_index, task):
        self.tasks_read.add(task)
        return super().ledger_part(pass_index, task)


def test_picks_up_to_n_per_reason_seeded_and_fixed(report_run):
    out, stats = report_run
    layout = RunLayout(out)
    tasks = [t.index for t in provenance.input_tasks(provenance.read(out))]
    counts = samples.reason_counts(stats)
    wanted = {key: min(5, n) for key, n in counts.items()}
    picked = samples.pick_rejected(layout, tasks, wanted, seed=0)
    ledger = pq.read_table(out / "rejected.parquet")
    for (stage, reason), n in wanted.items():
        mine = picked.filter(pc.and_(pc.equal(picked["stage"], stage), pc.equal(picked["reason"], reason)))
        assert mine.num_rows == n, (stage, reason)
        theirs = ledger.filter(pc.is_in(ledger["uid"], value_set=mine["uid"]))
        assert sorted(theirs["reason"].to_pylist()) == [reason] * n  # real ledger rows, with their values
        assert sorted(theirs["value"].to_pylist(), key=str) == sorted(mine["value"].to_pylist(), key=str)
    assert samples.pick_rejected(layout, tasks, wanted, seed=0).equals(picked)
    other = samples.pick_rejected(layout, tasks, wanted, seed=1)
    assert set(other["uid"].to_pylist()) != set(picked["uid"].to_pylist())


def test_the_visit_stops_once_every_reason_has_its_samples(report_run):
    out, stats = report_run
    layout = CountingLayout(out)
    tasks = [t.index for t in provenance.input_tasks(provenance.read(out))]
    picked = samples.pick_rejected(layout, tasks, {("caption", "too_few_words"): 1})
    assert picked.num_rows == 1
    assert len(layout.tasks_read) == 1 < len(tasks)  # the first task in seeded order had one
    assert picked["task"].to_pylist() == [samples.task_order(tasks, 0)[0]]


def test_a_rare_reason_reads_only_the_ledger_of_the_task_holding_it(report_run):
    out, stats = report_run
    layout = CountingLayout(out)
    tasks = [t.index for t in provenance.input_tasks(provenance.read(out))]
    rare = ("decode", "missing_image")  # one sample of the report's input
    holding = [t for t in tasks if rare in samples._task_reasons(RunLayout(out), t)]
    assert len(holding) == 1 and samples.task_order(tasks, 0).index(holding[0]) > 0  # not the first visited
    picked = samples.pick_rejected(layout, tasks, {rare: 1})
    assert picked.num_rows == 1 and picked["task"].to_pylist() == holding
    assert layout.tasks_read == set(holding)  # the markers said which; no other task's ledger was read


def test_rejected_samples_are_read_back_from_their_input(report_run, report_input):
    out, stats = report_run
    run = provenance.read(out)
    tasks = provenance.input_tasks(run)
    picked = samples.pick_rejected(RunLayout(out), [t.index for t in tasks], {("image_size", "image_too_small"): 3,
                                                                              ("decode", "missing_image"): 1})
    rows = samples.read_inputs(picked, {t.index: t for t in tasks})
    source = pq.read_table(report_input).to_pylist()
    by_uid = {row["uid"]: row for row in source}
    assert set(rows) == set(picked["uid"].to_pylist())
    for uid, row in rows.items():
        assert (row["text"], row["image"]) == (by_uid[uid]["text"], by_uid[uid]["image"])
    assert rows[f"{1:032x}"]["image"] is None  # the missing image: found, with no image to show


def test_kept_samples_come_from_the_output(report_run):
    out, stats = report_run
    layout = RunLayout(out)
    tasks = [t.index for t in provenance.input_tasks(provenance.read(out))]
    chosen = samples.pick_kept(layout, tasks, 7)
    kept = samples.read_kept(layout, chosen, ["uid", "text", "image"])
    assert kept.num_rows == 7 == len(set(kept["uid"].to_pylist()))
    output = pq.read_table(out / "parquet", columns=["uid", "image"]).to_pylist()
    images = {row["uid"]: row["image"] for row in output}
    assert all(images[row["uid"]] == row["image"] for row in kept.to_pylist())
    assert samples.pick_kept(layout, tasks, 7) == chosen
