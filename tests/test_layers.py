"""The layers of docs/design.md as a test: an AST pass over every import in curate/ and train/
(lazy ones inside functions too) that fails with file:line where an import runs against them.

- a stage (curate/stages/) never imports an engine (curate/engines/);
- an engine never imports a concrete stage (curate/stages/, its registry included);
- train/ never imports a stage or an engine;
- curation (curate/) never imports the trainers (train/), except the runners the design names
  as what ties curation, training and evaluation together: the CLI and the ablation and
  bootstrap runners. Model inference both sides need lives in curate/models/, which train/
  imports, not the other way.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curate", "train")
RUNNERS = ("curate.cli", "curate.ablate", "curate.bootstrap")


@dataclass(frozen=True)
class Import:
    """One import statement's target module, where it is written."""

    module: str  # the importing module, e.g. curate.stages.decode
    path: Path
    line: int
    target: str  # the imported module, resolved (relative imports made absolute)


def module_name(root: Path, path: Path) -> str:
    """The dotted module name of a source file under `root` (a package's __init__ is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def imports_of(root: Path, path: Path, modules: set[str]) -> list[Import]:
    """Every import in file `path`, at any depth (module level, functions, conditionals), with
    `from X import y` resolved to module X.y where that is one of `modules`, and constant
    `importlib.import_module("...")` calls counted too."""
    module = module_name(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        found += [Import(module, path, node.lineno, target) for target in dict.fromkeys(targets)]
    return found


def violation(item: Import) -> str | None:
    """Why this import runs against the layers, or None when it does not."""
    source, target = item.module, item.target
    if _within(source, "curate.stages") and _within(target, "curate.engines"):
        return "a stage imports an engine"
    if _within(source, "curate.engines") and _within(target, "curate.stages"):
        return "an engine imports a concrete stage"
    if _within(source, "train") and (_within(target, "curate.stages") or _within(target, "curate.engines")):
        return "train/ imports a stage or an engine (it reads shards through curate.io)"
    if (_within(source, "curate") and _within(target, "train")
            and not any(_within(source, runner) for runner in RUNNERS)):
        return "curation imports the trainers (shared model code belongs in curate/models/)"
    return None


def violations(root: Path) -> list[str]:
    """`file:line: import target: why` for every import in the packages under `root` that runs
    against the layers."""
    files = sorted(p for package in PACKAGES for p in (root / package).rglob("*.py"))
    modules = {module_name(root, p) for p in files}
    out = []
    for path in files:
        for item in imports_of(root, path, modules):
            why = violation(item)
            if why:
                out.append(f"{path.relative_to(root)}:{item.line}: import {item.target}: {why}")
    return out


def test_the_tree_keeps_its_layers():
    found = violations(ROOT)
    assert not found, "imports against the layers of docs/design.md:\n" + "\n".join(found)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(("name", "source", "line", "why"), [
    ("curate/stages/s.py", "def setup():\n    from curate.engines import local\n", 2, "a stage imports an engine"),
    ("curate/stages/s.py", "from ..engines.local import LocalEngine\n", 1, "a stage imports an engine"),
    ("curate/engines/e.py", "import curate.stages.decode as d\n", 1, "an engine imports a concrete stage"),
    ("curate/engines/e.py", "from curate.stages import REGISTRY\n", 1, "an engine imports a concrete stage"),
    ("curate/engines/e.py", "from curate import stages\n", 1, "an engine imports a concrete stage"),
    ("train/t.py", "if True:\n    from curate.stages.decode import Decode\n", 2, "train/ imports a stage"),
    ("train/t.py", "import importlib\nimportlib.import_module('curate.engines.local')\n", 2, "train/ imports a stage"),
    ("curate/models/embedder.py", "class A:\n    def f(self):\n        from train.clip.model import load\n", 3,
     "curation imports the trainers"),
])
def test_each_rule_is_caught_with_file_and_line(tmp_path, name, source, line, why):
    """Each rule fails with the file and line of the import, lazy and relative imports included."""
    root = _tree(tmp_path, {"curate/__init__.py": "", "curate/stages/__init__.py": "", "curate/stages/decode.py": "",
                            "curate/engines/__init__.py": "", "curate/engines/local.py": "",
                            "train/__init__.py": "", "train/clip/__init__.py": "", "train/clip/model.py": "",
                            name: source})
    found = violations(root)
    assert len(found) == 1 and found[0].startswith(f"{name}:{line}: ") and why in found[0], found


def test_allowed_arrows_pass(tmp_path):
    """The arrows the design allows: stages and engines on the stage base and IO, train on curate.io
    and curate.models, the runners on everything."""
    root = _tree(tmp_path, {
        "curate/__init__.py": "", "curate/stage.py": "", "curate/io/__init__.py": "", "curate/models/__init__.py": "",
        "curate/stages/__init__.py": "from curate.stages.decode import Decode as Decode\n",
        "curate/stages/decode.py": "from curate.stage import MapStage\nfrom curate.models import clip\n",
        "curate/engines/__init__.py": "from curate.stage import GlobalStage\nfrom curate.io import readers\n",
        "curate/ablate.py": "from train.clip.train import train_clip\nfrom curate.engines import LocalEngine\n",
        "curate/cli.py": "def main():\n    import train.launch\n",
        "train/__init__.py": "", "train/clip.py": "from curate.models.clip import load_checkpoint\nimport curate.io\n",
    })
    assert violations(root) == []
