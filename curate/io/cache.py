"""A folder of per-sample results keyed by uid, so long model stages resume mid-task.

Each `put` commits one Parquet shard (uid plus the result columns) under a name that hashes
its uids, written atomically: a rerun, or two workers producing the same rows, never clash,
and a shard is either whole or absent. Results of different settings live apart: the cache
folder holds one subfolder per `key` (e.g. a model fingerprint and its generation settings).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.io.writers import write_table_atomic


class ResultCache:
    """Per-uid results of one stage setting, stored under `root/<key hash>/`."""

    def __init__(self, root: str | Path, key: str):
        self.folder = Path(root) / hashlib.sha256(key.encode()).hexdigest()[:16]
        self._seen: set[str] = set()
        self._rows: dict[str, dict] = {}

    def _refresh(self) -> None:
        for path in sorted(self.folder.glob("*.parquet")):
            if path.name not in self._seen:
                for row in pq.read_table(path).to_pylist():
                    self._rows[row.pop("uid")] = row
                self._seen.add(path.name)

    def get(self, uids: list[str]) -> dict[str, dict]:
        """The stored results of those uids that have one."""
        if any(uid not in self._rows for uid in uids):
            self._refresh()
        return {uid: self._rows[uid] for uid in uids if uid in self._rows}

    def put(self, results: pa.Table) -> None:
        """Commit results (a `uid` column plus result columns) as one shard."""
        if results.num_rows == 0:
            return
        uids = results.column("uid").to_pylist()
        name = hashlib.sha256("\n".join(uids).encode()).hexdigest()[:24]
        self.folder.mkdir(parents=True, exist_ok=True)
        write_table_atomic(results, self.folder / f"{name}.parquet")
        for row in results.to_pylist():
            self._rows[row.pop("uid")] = row
