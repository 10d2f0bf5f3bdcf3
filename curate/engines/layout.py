"""The output layout of a run: where outputs, intermediates, fit data and resume markers live,
the run's fingerprint, and the final assembly (ledger, uids.npy, stats, the accounting check)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from curate.engines.lock import LOCK_FILE
from curate.engines.plan import Pass, StageStats, merge_stats, stage_key
from curate.io.assembly import merge_uids, repeated_uids, uid_count
from curate.io.card import CARD
from curate.io.manifest import SUCCESS, content_samples, describe, verify, write_manifest
from curate.io.paths import file_stamp, is_url
from curate.io.readers.contract import READ_STAGE, InputError
from curate.io.shards import SIZES_FILE, place_task_tars, reshard
from curate.io.state import save_state
from curate.io.writers import remove_temp_files, sync_paths, write_json_atomic
from curate.provenance import curate_version
from curate.stage import Stage

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
        """A task's kept samples as a WebDataset tar; `finish` makes shards/ of these."""
        return self.work / "tars" / f"{self.part_name(task)}.tar"

    def intermediate(self, pass_index: int, task: int) -> Path:
        return self.work / f"pass{pass_index}" / f"{self.part_name(task)}.parquet"

    def ledger_part(self, pass_index: int, task: int) -> Path:
        """A task's rejections in one pass: the ledger rejected.parquet is the folder of these parts
        (written in place, so finishing a run never copies the ledger)."""
        return self.rejected / f"pass{pass_index}-{self.part_name(task)}.parquet"

    def fit_rows(self, pass_index: int, task: int) -> Path:
        """The narrow rows (uid, the decision's columns, _row) a task gives the fit of its pass's global stage."""
        return self.work / f"fit{pass_index}" / f"{self.part_name(task)}.parquet"

    def fit_work(self, pass_index: int) -> Path:
        """Where a fit's distributed operations write their Datasets (shuffle outputs)."""
        return self.work / f"fitwork{pass_index}"

    def decisions(self, pass_index: int) -> Path:
        """The fit's rejected rows, one file per task that has any (`task-NNNNN.parquet`)."""
        return self.work / f"decisions{pass_index}"

    def task_decisions(self, pass_index: int, task: int) -> Path:
        return self.decisions(pass_index) / f"task-{task:05d}.parquet"

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
        file per task with any (`task-NNNNN.parquet`); kept with the markers, since the uids in
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
        found = [p for p in self.outputs() if p not in folders and p.exists()] + self._part_files()
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

    def _part_files(self) -> list[Path]:
        """The part files (and shards/'s size file) in shards/ and parquet/, by curate's names."""
        parts = [(self.shards, _PART_TAR), (self.parquet, _PART_PARQUET)]
        return [f for folder, name in parts if folder.is_dir()
                for f in sorted(folder.iterdir()) if name.fullmatch(f.name)]

    def _output_files(self) -> list[Path]:
        """Every file a finished run leaves outside _work/ but its manifest: its top-level files,
        curate's part files, and what its other output folders hold (the ledger's parts)."""
        files = self._part_files()
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
        sync_paths([self.fit_stats(pass_index), *self.decisions(pass_index).glob("*.parquet")])
        save_state(state, self.state(pass_index))

    def finish(self, stages: list[Stage], task_stats: list[dict[str, StageStats]], input_rows: int,
               tasks: list[int], passes: list[Pass], extra: dict, write_uids: bool = True,
               check_uids: bool = True) -> dict:
        """Assemble uids.npy (unless not `write_uids`) and stats.json, check kept + rejected ==
        input and (with `check_uids`: the tasks wrote their `all` uid parts) that no uid occurs
        twice, all streaming: uids are merged from sorted parts."""
        ledger_parts = [p for k in range(len(passes)) for t in tasks if (p := self.ledger_part(k, t)).exists()]
        rejected = sum(pq.ParquetFile(p).metadata.num_rows for p in ledger_parts)
        kept = sum(pq.ParquetFile(self.kept_parquet(t)).metadata.num_rows for t in tasks)
        repeats, examples = repeated_uids([self.uid_part("all", t) for t in tasks]) if check_uids else (0, [])
        if repeats:
            raise InputError(f"{repeats} uid(s) occur more than once among the samples (e.g. {examples[0]}, as its "
                             "128-bit hex id): uids must be unique, and one the input gives may equal one curate "
                             "made for another sample; give every sample its own uid, or none to have curate make "
                             "them all")
        pool_parts = [self.uid_part("pool", t) for t in tasks]
        pool = merge_uids(pool_parts, self.uids) if write_uids else uid_count(pool_parts)
        if self.webdataset:
            self._assemble_shards(tasks)
        totals = merge_stats(task_stats)
        derived = sum(s.derived for s in totals.values())  # samples stages made from input samples
        if kept + rejected != input_rows + derived:
            raise RuntimeError(f"accounting error: {kept} kept + {rejected} rejected != "
                               f"{input_rows} input rows + {derived} derived samples")
        order = [READ_STAGE] + [k for i, s in enumerate(stages) for k in (stage_key(i, s) + ":fit", stage_key(i, s))]
        stage_rows = []
        for key in order:
            if key not in totals:
                continue
            entry = totals[key].to_dict()
            entry["key"] = key
            stage_rows.append(entry)
        fit_files = {stage_key(p.fit, stages[p.fit]): self.fit_stats(p.index) for p in passes if p.fit is not None}
        fits = {key: fit for key, path in fit_files.items() if path.exists() and (fit := json.loads(path.read_text()))}
        stats = {"input": input_rows, "kept": kept, "rejected": rejected, "derived": derived,
                 "kept_fraction": round(pool / input_rows, 6) if input_rows else 0.0,
                 "stages": stage_rows, **({"fits": fits} if fits else {}), **extra}
        write_json_atomic(stats, self.stats)
        return stats

    def _assemble_shards(self, tasks: list[int]) -> None:
        """shards/ and its sizes.json from the tasks' tars: moved as they are, or resharded into
        `samples_per_shard` samples each (resuming a resharding cut short)."""
        tars = [self.kept_tar(t) for t in tasks]
        if self.samples_per_shard is None:
            place_task_tars(tars, self.shards, [pq.ParquetFile(self.kept_parquet(t)).metadata.num_rows for t in tasks])
        else:
            for _ in reshard(tars, self.shards, self.samples_per_shard, self.work / "tars" / "reshard.json"):
                pass  # it commits a shard at a time

    def mark_complete(self) -> None:
        """Record the run as finished: drop intermediates (markers and fit states stay, for reruns),
        fsync every output file and folder, mark run.json complete, then write the manifest
        (_SUCCESS: every output file with its size and checksum), last."""
        for sub in self.work.iterdir():
            if sub.is_dir() and sub.name != "done":
                shutil.rmtree(sub, ignore_errors=True)
        files = self._output_files()
        sync_paths(files)
        run = json.loads(self.run_file.read_text())
        write_json_atomic({**run, "complete": True}, self.run_file, durable=True)
        write_manifest(self.root, run, self._manifest_entries(files))

    def _manifest_entries(self, files: list[Path]) -> dict[str, dict]:
        """Every output file's entry: the one its task hashed (when the file is still the bytes the
        task wrote: same name and size, and no resharding renamed shards), else hashed here (the
        small files of the run's end, and resharded shards)."""
        hashed: dict[str, dict] = {}
        for marker in sorted((self.work / "done").glob("pass*.json")):
            hashed |= json.loads(marker.read_text()).get("files", {})
        entries, left = {}, []
        for path in files:
            name = path.relative_to(self.root).as_posix()
            entry = hashed.get(name)
            resharded = self.samples_per_shard is not None and name.startswith(f"{self.shards.name}/")
            if entry is not None and not resharded and entry["size"] == path.stat().st_size:
                entries[name] = entry
            else:
                left.append(path)
        return entries | describe(self.root, left)


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
