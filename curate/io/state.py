"""A global stage's fitted state on disk: JSON values in a .json file, NumPy arrays in a .npz
beside it, loaded without pickle (anyone who can write a run's folder must not be able to run
code on resume)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from curate.io.writers import atomic, write_json_atomic


def _arrays_path(path: Path) -> Path:
    return path.with_suffix(".npz")


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write `state` (str keys; NumPy arrays or JSON values); the JSON, written last, commits it
    (both fsynced: a committed state survives a power loss)."""
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    if any(a.dtype.hasobject for a in arrays.values()):
        objects = [k for k, a in arrays.items() if a.dtype.hasobject]
        raise TypeError(f"state arrays must not hold Python objects: {objects}")
    if arrays:
        with atomic(_arrays_path(path), durable=True) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    values = {k: v for k, v in state.items() if k not in arrays}
    write_json_atomic({"values": values, "arrays": sorted(arrays)}, path, durable=True)


def load_state(path: Path) -> dict[str, Any]:
    """Read a state written by `save_state`."""
    saved = json.loads(Path(path).read_text())
    state = dict(saved["values"])
    if saved["arrays"]:
        with np.load(_arrays_path(Path(path)), allow_pickle=False) as arrays:
            state.update({k: arrays[k] for k in saved["arrays"]})
    return state
