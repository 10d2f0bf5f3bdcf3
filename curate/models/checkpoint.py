"""Checkpoint files read without running code: `torch.load(weights_only=True)` only.

A torch file is a pickle, and a pickle can name any callable to run while it loads. Every
checkpoint this project reads goes through `load_torch_file`, which lets the unpickler build
only tensors, dicts, lists, tuples, str, bytes, numbers, None and torch dtypes; the trainers
write only those (the loop keeps NumPy's RNG state as a list of ints). A file that names
anything else is refused before any of it runs.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle names objects a weights-only load refuses (it could run code)."""


def load_torch_file(path: str | Path, expected: str, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """The contents of torch file `path`, loaded with weights_only=True. A pickle that names any
    other object is refused with UnsafeCheckpointError naming the file, the object and `expected`
    (what the caller wanted, e.g. "a curate CLIP checkpoint"); a file that is no pickle at all is a
    ValueError saying so; torch's own errors (RuntimeError, EOFError) pass on otherwise."""
    import torch

    try:
        return torch.load(path, map_location=map_location, mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as exc:
        why = _why(exc)
        if why.startswith("Unsupported global"):
            raise UnsafeCheckpointError(
                f"{path} is not {expected}: it names an object a weights-only load refuses ({why}); a checkpoint "
                f"may hold only tensors, dicts, lists, str and numbers, never objects that run code when "
                f"loaded") from exc
        raise ValueError(f"{path} is not {expected}: not a torch checkpoint file ({why})") from exc


def _why(exc: Exception) -> str:
    """What torch's long weights-only message says the file holds, e.g. "Unsupported global: GLOBAL
    posix.system" (torch's advice to allowlist it left out)."""
    found = re.search(r"Unsupported [^\n]*", str(exc))
    return (found.group(0) if found else type(exc).__name__).split(" was not an allowed global")[0][:300]
