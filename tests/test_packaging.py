"""The wheel a user installs (`pip install .`, the Docker image) holds every file the packages load:
model and training configs, not only the .py files an editable install reads from the tree."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_file_of_the_packages(tmp_path):
    """Built from a copy of the tracked files: a checkout's own egg-info lists files a fresh build would miss."""
    tracked = subprocess.run(["git", "ls-files", "curate", "train", "pyproject.toml", "README.md"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "source"
    for path in tracked:
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, source / path)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = [path for path in tracked if path.startswith(("curate/", "train/"))]
    assert any(name.endswith(".json") for name in packaged)  # the check below covers data files
    assert [path for path in packaged if path not in names] == []
