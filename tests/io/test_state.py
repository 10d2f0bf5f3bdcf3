"""A fit's state under _work/ never runs code when a resumed run loads it: arrays come from a .npz
without pickle, values from JSON, so a hostile file written into the output folder is refused."""

from pathlib import Path

import numpy as np
import pytest

from curate.io.state import load_state, save_state


class Touches:
    """Unpickles as `Path(marker).touch()`: a stand-in for os.system in a planted state file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_state_round_trips_and_a_planted_pickle_is_refused_unrun(tmp_path):
    path = tmp_path / "state-pass0.json"
    save_state({"threshold": 0.25, "labels": ["a", "b"], "counts": np.arange(5, dtype=np.int64)}, path)
    state = load_state(path)
    assert state["threshold"] == 0.25 and state["labels"] == ["a", "b"] and state["counts"].tolist() == [0, 1, 2, 3, 4]
    marker = tmp_path / "ran"
    with open(path.with_suffix(".npz"), "wb") as handle:  # what someone who can write the folder could plant
        np.savez(handle, counts=np.array([Touches(marker)], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_state(path)
    assert not marker.exists()
    with np.load(path.with_suffix(".npz"), allow_pickle=True) as planted:  # the threat is real: a pickle load runs it
        planted["counts"]
    assert marker.exists()
    with pytest.raises(TypeError, match="must not hold Python objects"):
        save_state({"counts": np.array([Touches(marker)], dtype=object)}, path)
