"""The output layout of a run: where outputs, intermediates, fit data and resume markers live,
claiming the output folder for a run (the run's fingerprint), and committing a task's or a
fit's files before its marker. The run's end is curate.engines.finish."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from curate.engines.lock import LOCK_FILE
from curate.io.card import CARD
from curate.io.manifest import SUCCESS, content_samples, describe, verify
from curate.io.paths import file_stamp, is_url
from curate.io.shards import SIZES_FILE
from curate.io.state import save_state
from curate.io.work import WORK_SUFFIX
from curate.io.writers import remove_temp_files, sync_paths, write_json_atomic
from curate.provenance import curate_version

_PART_TAR = re.compile(rf"part-\d{{5,}}\.tar|{re.escape(SIZES_FILE)}")  # the shards and open_clip's size file
_PART_PARQUET = re.compile(r"part-\d{5,}\.parquet")
_log = logging.getLogger(__name__)


class RunLayout:
    """Where a run's outputs and its resume state live inside the output folder; `webdataset`:
    the run writes shards/ (with `samples_per_shard` samples each, else one per task)."""

    def __init__(self, output: str | Path, webdataset: bool = False, samples_per_shard: int | None = None):
        self.root = Path(output)
        self.webdataset, self.samples_per_shard = webdataset, samples_per_shard
        self.shards = self.root / "shards"
        self.parquet = self.root / "parquet"
        self.rejected = self.root / "rejected.parquet"
        self.stats = self.root / "stats.json"
        self.report = self.root / "report.html"
        self.uids = self.root / "uids.npy"
        self.card = self.root / CARD  # the dataset card (curate.io.card)
        self.work = self.root / "_work"
        self.run_file = self.work / "run.json"
        self.success = self.root / SUCCESS  # the manifest, written last
        self.lock = self.root / LOCK_FILE

    def part_name(self, task: int) -> str:
        return f"part-{task:05d}"

    def kept_parquet(self, task: int) -> Path:
        return self.parquet / f"{self.part_name(task)}.parquet"

    def kept_tar(self, task: int) -> Path:
        """A task's kept samples as a WebDataset tar; the run's end makes shards/ of these
        (curate.engines.finish)."""
        return self.work / "tars" / f"{self.part_name(task)}.tar"

    def intermediate(self, pass_index: int, task: int) -> Path:
        """A task's rows after a stored pass that is not the last, for the next pass (Arrow IPC)."""
        return self.work / f"pass{pass_index}" / f"{self.part_name(task)}{WORK_SUFFIX}"

    def ledger_part(self, pass_index: int, task: int) -> Path:
        """A task's rejections in one pass: the ledger rejected.parquet is the folder of these parts
        (written in place, so finishing a run never copies the ledger)."""
        return self.rejected / f"pass{pass_index}-{self.part_name(task)}.parquet"

    def fit_rows(self, pass_index: int, task: int) -> Path:
        """The narrow rows (uid, the decision's columns, _row) a task gives the fit of its pass's global stage."""
        return self.work / f"fit{pass_index}" / f"{self.part_name(task)}{WORK_SUFFIX}"

    def fit_work(self, pass_index: int) -> Path:
        """Where a fit's distributed operations write their Datasets (shuffle outputs)."""
        return self.work / f"fitwork{pass_index}"

    def decisions(self, pass_index: int) -> Path:
        """The fit's rejected rows, one file per task that has any (`task-NNNNN.arrow`)."""
        return self.work / f"decisions{pass_index}"

    def task_decisions(self, pass_index: int, task: int) -> Path:
        return self.decisions(pass_index) / f"task-{task:05d}{WORK_SUFFIX}"

    def state(self, pass_index: int) -> Path:
        """A fit's state: JSON, with its arrays in a .npz beside it; written last, it marks the fit done."""
        return self.work / f"state-pass{pass_index}.json"

    def fit_stats(self, pass_index: int) -> Path:
        return self.work / f"fit-pass{pass_index}.json"

    def uid_part(self, kind: str, task: int) -> Path:
        """A task's sorted 128-bit uids: `all` (kept and rejected, for the uniqueness check) or
        `pool` (kept input samples, for uids.npy)."""
        return self.work / "uids" / f"{kind}-{self.part_name(task)}.npy"

    def uids_checked(self) -> Path:
        """Marks the input's own uids checked (none empty, none twice), so a resumed run skips the check."""
        return self.work / "done" / "input-uids.json"

    def repeats(self) -> Path:
        """The occurrence numbers of input samples whose made uid repeats an earlier sample's, a
        file per task with any (`task-NNNNN.arrow`); kept with the markers, since the uids in
        the outputs depend on them (curate.engines.occurrences)."""
        return self.work / "done" / "repeats"

    def repeats_counted(self) -> Path:
        """Marks the repeats of made uids counted, so a resumed run reuses the count."""
        return self.work / "done" / "input-repeats.json"

    def marker(self, pass_index: int, task: int) -> Path:
        return self.work / "done" / f"pass{pass_index}-{self.part_name(task)}.json"

    def outputs(self) -> list[Path]:
        """What a run writes in the output folder (the manifest first: removed first, a run
        half-removed is never taken for a finished one)."""
        return [self.success, self.shards, self.parquet, self.rejected, self.stats, self.report, self.card, self.uids,
                self.work,
                self.root / "run.json"]  # run.json: how the output was made (curate.provenance)

    def prepare(self, fingerprint: dict, overwrite: bool, inputs: Iterable[str] = (), checksums: bool = False) -> bool:
        """Claim the output folder for this run; returns True when a finished identical run is there.

        An output folder that is, holds or lies inside one of `inputs` (local input files and
        folders; URLs and patterns are skipped) is refused, overwrite or not. A folder holding
        another run (or unrelated files) is refused unless `overwrite`; the same run, finished or
        interrupted, is reused either way. A finished one is reused only when its files match its
        manifest (sizes; with `checksums`, their bytes too): else it is removed and run again.
        Overwriting removes only what a curate run writes (its part files, ledger, stats, report,
        uids, manifest and _work/): the user's other files stay, and a folder with curate's output
        names but no curate run in it is refused. The caller holds the folder's lock (curate.engines.lock).
        """
        self._refuse_inputs(inputs)
        previous = json.loads(self.run_file.read_text()) if self.run_file.exists() else None
        if previous is not None and previous["fingerprint"] == fingerprint["fingerprint"]:
            if not previous.get("complete"):
                return False
            if not (problems := verify(self.root, checksums, fingerprint["fingerprint"])):
                return True
            more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
            _log.warning(f"{self.root} holds this run, finished, but not as its manifest says ({problems[0]}{more}): "
                         "running it again")
            self._remove_run(True)
            write_json_atomic({**fingerprint, "complete": False}, self.run_file)
            return False
        occupied = self.root.exists() and any(p.name != LOCK_FILE for p in self.root.iterdir())
        if occupied and not overwrite:
            what = "a run of a different pipeline or input" if previous else "files that are not a curate run"
            raise FileExistsError(f"{self.root} holds {what}; pass --overwrite or choose another --output")
        if occupied:
            self._remove_run(previous is not None)
        write_json_atomic({**fingerprint, "complete": False}, self.run_file)
        return False

    def _refuse_inputs(self, inputs: Iterable[str]) -> None:
        """Raise when the output folder is, contains or lies inside a local input path."""
        root = self.root.resolve()
        for raw in inputs:
            if is_url(raw) or not Path(raw).exists():
                continue
            path = Path(raw).resolve()
            if path == root or root in path.parents:
                raise FileExistsError(f"output {self.root} contains input {raw}: choose an --output outside the input")
            if path in root.parents:
                raise FileExistsError(f"output {self.root} is inside input {raw}: choose an --output outside the input")

    def _remove_run(self, is_run: bool) -> None:
        """Remove the files a curate run writes (`is_run`: the folder holds one's run.json); without
        a run there, refuse when any of those names is taken (they are the user's, not curate's)."""
        folders = (self.shards, self.parquet)  # they may hold the user's files too: only curate's parts go
        found = [p for p in self.outputs() if p not in folders and p.exists()] + self.part_files()
        if not is_run and found:
            raise FileExistsError(f"{self.root} is not a curate run (no {self.run_file.relative_to(self.root)}) "
                                  f"but holds {found[0].relative_to(self.root)}: curate removes only what it "
                                  "wrote; move it or choose another --output")
        remove_temp_files(self.root)
        for path in found:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        for folder in folders:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def part_files(self) -> list[Path]:
        """The part files (and shards/'s size file) in shards/ and parquet/, by curate's names."""
        parts = [(self.shards, _PART_TAR), (self.parquet, _PART_PARQUET)]
        return [f for folder, name in parts if folder.is_dir()
                for f in sorted(folder.iterdir()) if name.fullmatch(f.name)]

    def output_files(self) -> list[Path]:
        """Every file a finished run leaves outside _work/ but its manifest: its top-level files,
        curate's part files, and what its other output folders hold (the ledger's parts)."""
        files = self.part_files()
        for path in self.outputs():
            if path in (self.success, self.work, self.shards, self.parquet):
                continue
            files += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        return files

    def commit_task(self, pass_index: int, task: int, marker: dict, final: bool) -> dict:
        """Make a finished task's files durable (fsync: its parts, or its pass's intermediate, ledger
        part, fit rows and uid parts), then write its completion marker (`final`: its pass is the
        run's last); returns the marker."""
        outputs = [self.kept_parquet(task), self.kept_tar(task)] if final else [self.intermediate(pass_index, task)]
        uids = [p for p in (self.uid_part("all", task), self.uid_part("pool", task)) if p.exists()] if final else []
        written = [*outputs, self.ledger_part(pass_index, task), self.fit_rows(pass_index, task), *uids]
        sync_paths([p for p in written if p.exists()])
        marker = {**marker, "files": self._task_files(pass_index, task, final)}
        write_json_atomic(marker, self.marker(pass_index, task))
        return marker

    def _task_files(self, pass_index: int, task: int, final: bool) -> dict[str, dict]:
        """Manifest entries of the output files a task wrote (its ledger part; on the last pass its
        Parquet part and tar, under the name the tar gets in shards/), hashed in the worker that
        wrote them, so finishing a run never reads the whole output in one process."""
        entries = describe(self.root, [self.ledger_part(pass_index, task)])
        if final:
            entries |= describe(self.root, [self.kept_parquet(task)])
            tar = self.kept_tar(task)
            if tar.exists():
                entries |= {f"{self.shards.name}/{tar.name}": describe(tar.parent, [tar])[tar.name]}
        return entries

    def commit_fit(self, pass_index: int, fit_stats: dict, state: dict) -> None:
        """Record a fit: its summary, and its rejections routed to their tasks made durable, then its
        state, which marks the fit done (fsynced)."""
        write_json_atomic(fit_stats, self.fit_stats(pass_index))
        sync_paths([self.fit_stats(pass_index), *self.decisions(pass_index).glob(f"*{WORK_SUFFIX}")])
        save_state(state, self.state(pass_index))


def _named_paths(value) -> list[Path]:
    """Existing files or folders named by strings in a config value (a blocklist, eval data...)."""
    if isinstance(value, str):
        try:
            return [Path(value)] if Path(value).exists() else []
        except (OSError, ValueError):  # a regular expression or caption text, not a path
            return []
    if isinstance(value, dict):
        return [p for v in value.values() for p in _named_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _named_paths(v)]
    return []


def fingerprint(pipeline_raw: dict, tasks: list, written: list[str] = ()) -> dict:
    """A hash of everything that determines a run's output, to detect reuse of a folder: curate's
    version, the pipeline, every input file, and the files its stages read (named in their configs;
    paths the stages write, `written`, are not inputs), each by size and version (mtime; an object's
    ETag) and, for a local file, a hash of its first and last MiB."""
    inputs = [[task.path, task.row_group] for task in tasks]
    named = set(_named_paths(pipeline_raw.get("stages", []))) - {Path(p) for p in written}
    paths = {task.path for task in tasks} | {str(p) for p in named}  # strings: Path would mangle s3://
    stamps = [stamp for path in sorted(paths, key=lambda p: p.split("/")) for stamp in file_stamp(path)]
    samples = content_samples([stamp[0] for stamp in stamps if not is_url(stamp[0])])
    blob = json.dumps({"curate": curate_version(), "pipeline": pipeline_raw, "inputs": inputs, "files": stamps,
                       "content": samples}, sort_keys=True, default=str)
    return {"fingerprint": hashlib.sha256(blob.encode()).hexdigest(), "pipeline": pipeline_raw.get("name")}
