"""The layers of docs/design.md as a test: an AST pass over every import in curate/ and train/
(lazy ones inside functions too) that fails with file:line where an import runs against them.

- a stage (curate/stages/) never imports an engine (curate/engines/);
- an engine never imports a concrete stage (curate/stages/, its registry included);
- train/ never imports a stage or an engine;
- IO (curate/io/) sits below the stage contract: it imports neither the stage base (curate.stage)
  nor a stage (a reader gives a plain batch of a table and its failures, not a Verdict);
- the tie layer (TIE: the CLI package and the experiment runners, which tie curation, training
  and evaluation together) is the only curation code that imports the trainers (train/); model
  inference both sides need lives in curate/models/, which train/ imports, not the other way;
- nothing outside the tie layer imports it (train/ included).
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curate", "train")
TIE = ("curate.cli", "curate.experiments")  # the layer above curation and training: packages, not files


@dataclass(frozen=True)
class Import:
    """One import statement's target module, where it is written."""

    module: str  # the importing module, e.g. curate.stages.decode
    path: Path
    line: int
    target: str  # the imported module, resolved (relative imports made absolute)
    lazy: bool = False  # inside a function: runs when it is called, not when the module loads
    typing_only: bool = False  # under `if TYPE_CHECKING:`: never runs


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
    tree = ast.parse(path.read_text(), str(path))
    lazy, typing_only = _scopes(tree)
    found = []
    for node in ast.walk(tree):
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
        found += [Import(module, path, node.lineno, target, id(node) in lazy, id(node) in typing_only)
                  for target in dict.fromkeys(targets)]
    return found


def _scopes(tree: ast.AST) -> tuple[set[int], set[int]]:
    """The ids of the nodes inside a function, and of those under `if TYPE_CHECKING:`."""
    lazy: set[int] = set()
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lazy |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
        elif isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            typing_only |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return lazy, typing_only


def violation(source: str, target: str) -> str | None:
    """Why module `source` importing `target` runs against the layers, or None when it does not."""
    if _within(source, "curate.stages") and _within(target, "curate.engines"):
        return "a stage imports an engine"
    if _within(source, "curate.engines") and _within(target, "curate.stages"):
        return "an engine imports a concrete stage"
    if _within(source, "curate.io") and (_within(target, "curate.stage") or _within(target, "curate.stages")):
        return "IO imports the stage contract or a stage (it sits below them)"
    if _within(source, "train") and (_within(target, "curate.stages") or _within(target, "curate.engines")):
        return "train/ imports a stage or an engine (it reads shards through curate.io)"
    tie_source, tie_target = (any(_within(module, tie) for tie in TIE) for module in (source, target))
    if _within(source, "curate") and _within(target, "train") and not tie_source:
        return "curation imports the trainers (shared model code belongs in curate/models/)"
    if tie_target and not tie_source:
        return "a module below the tie layer imports it (the CLI and curate.experiments sit on top)"
    return None


def import_graph(root: Path) -> dict[str, list[Import]]:
    """Every module of the packages under `root`, with its imports."""
    files = sorted(p for package in PACKAGES for p in (root / package).rglob("*.py"))
    modules = {module_name(root, p) for p in files}
    return {module_name(root, path): imports_of(root, path, modules) for path in files}


def violations(root: Path) -> list[str]:
    """`file:line: import target: why` for every import in the packages under `root` that runs
    against the layers."""
    return [f"{item.path.relative_to(root)}:{item.line}: import {item.target}: {why}"
            for imports in import_graph(root).values() for item in imports
            if (why := violation(item.module, item.target))]


def _reached(target: str, graph: dict[str, list[Import]]) -> list[tuple[str, bool]]:
    """What importing `target` runs, each with whether all of its imports count: the nearest module
    of the tree (all), then each package above it (only its module-level imports: its functions
    run when they are called)."""
    parts = target.split(".")
    known = [name for name in (".".join(parts[:i]) for i in range(len(parts), 0, -1)) if name in graph]
    return [(name, i == 0) for i, name in enumerate(known)]


def indirect_violations(root: Path) -> list[str]:
    """`file:line: a -> b -> c: why` for every module that reaches, through modules in between, one
    that a rule keeps it from importing (an engine reaching a concrete stage through the report,
    say). Imports that run count: a module's own lazy ones and those of every module it imports
    (it may call them), but of a package entered on the way to its submodule only the module-level
    ones, and none under TYPE_CHECKING. An arrow is named at the first module on it that breaks a
    rule itself (`violations` names the last hop when that is the one)."""
    graph = import_graph(root)
    out = []
    for source in sorted(graph):
        seen: dict[str, bool] = {source: True}
        queue = deque([(source, True, [source], None)])
        while queue:
            module, whole, chain, first = queue.popleft()
            for item in graph[module]:
                if item.typing_only or (item.lazy and not whole):
                    continue
                for reached, full in _reached(item.target, graph):
                    if reached in seen and (seen[reached] or not full):
                        continue
                    seen[reached] = full
                    why = violation(source, reached)
                    if why is None:
                        queue.append((reached, full, chain + [reached], first or item))
                    elif len(chain) > 1 and violation(module, reached) is None:
                        start = first or item
                        out.append(f"{start.path.relative_to(root)}:{start.line}: "
                                   f"{' -> '.join(chain + [reached])}: {why}")
    return out


def test_the_tree_keeps_its_layers():
    found = violations(ROOT)
    assert not found, "imports against the layers of docs/design.md:\n" + "\n".join(found)


def test_no_module_reaches_across_the_layers_through_others():
    found = indirect_violations(ROOT)
    assert not found, "imports that reach across the layers of docs/design.md:\n" + "\n".join(found)


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
    ("curate/report.py", "import train.clip.model\n", 1, "curation imports the trainers"),
    ("curate/io/readers.py", "from curate.stage import Verdict\n", 1, "IO imports the stage contract"),
    ("curate/io/card.py", "def f():\n    from curate.stages.decode import Decode\n", 2, "IO imports the stage"),
    ("train/t.py", "from curate.experiments.ablate import training_runs\n", 1, "below the tie layer imports it"),
    ("curate/stages/s.py", "from curate.cli.errors import UserError\n", 1, "below the tie layer imports it"),
])
def test_each_rule_is_caught_with_file_and_line(tmp_path, name, source, line, why):
    """Each rule fails with the file and line of the import, lazy and relative imports included."""
    root = _tree(tmp_path, {"curate/__init__.py": "", "curate/stages/__init__.py": "", "curate/stages/decode.py": "",
                            "curate/engines/__init__.py": "", "curate/engines/local.py": "",
                            "curate/cli/__init__.py": "", "curate/cli/errors.py": "",
                            "curate/experiments/__init__.py": "", "curate/experiments/ablate.py": "",
                            "train/__init__.py": "", "train/clip/__init__.py": "", "train/clip/model.py": "",
                            name: source})
    found = violations(root)
    assert len(found) == 1 and found[0].startswith(f"{name}:{line}: ") and why in found[0], found


def test_allowed_arrows_pass(tmp_path):
    """The arrows the design allows: stages and engines on the stage base and IO, train on curate.io
    and curate.models, the tie layer (curate.cli, curate.experiments) on everything, itself included."""
    root = _tree(tmp_path, {
        "curate/__init__.py": "", "curate/stage.py": "", "curate/io/__init__.py": "", "curate/models/__init__.py": "",
        "curate/stages/__init__.py": "from curate.stages.decode import Decode as Decode\n",
        "curate/stages/decode.py": "from curate.stage import MapStage\nfrom curate.models import clip\n",
        "curate/engines/__init__.py": "from curate.stage import GlobalStage\nfrom curate.io import readers\n",
        "curate/experiments/ablate.py": "from train.clip.train import train_clip\n"
                                        "from curate.engines import LocalEngine\n",
        "curate/experiments/bootstrap.py": "from curate.experiments.ablate import training_runs\n",
        "curate/cli/__init__.py": "from curate.cli import train\n",
        "curate/cli/train.py": "from curate.experiments.ablate import training_runs\n"
                               "def main():\n    import train.launch\n",
        "train/__init__.py": "", "train/clip.py": "from curate.models.clip import load_checkpoint\nimport curate.io\n",
    })
    assert violations(root) == []


def test_an_arrow_through_other_modules_is_caught_with_its_path(tmp_path):
    """The indirect check follows what runs: a lazy import of a module imported (the card calls the
    report, which builds a stage), not a package's functions when only a submodule is imported, nor
    TYPE_CHECKING imports."""
    root = _tree(tmp_path, {
        "curate/__init__.py": "def run():\n    from curate.engines import local\n",  # the notebook API: lazy
        "curate/stage.py": "", "curate/io/__init__.py": "",
        "curate/io/card.py": "from typing import TYPE_CHECKING\n"
                             "if TYPE_CHECKING:\n    from curate.engines import local\n"
                             "def body():\n    from curate.report import fold\n",
        "curate/report.py": "def languages():\n    from curate.stages import REGISTRY\n",
        "curate/stages/__init__.py": "from curate.stages.decode import Decode\n",
        "curate/stages/decode.py": "from curate.stage import MapStage\nfrom curate.io import card\n",
        "curate/engines/__init__.py": "", "curate/engines/local.py": "from curate.stage import GlobalStage\n",
        "curate/engines/layout.py": "from curate.io.card import body\n",
        "train/__init__.py": "", "train/data.py": "import curate.io\n",
    })
    assert violations(root) == []
    assert indirect_violations(root) == [
        "curate/engines/layout.py:1: curate.engines.layout -> curate.io.card -> curate.report -> curate.stages: "
        "an engine imports a concrete stage",
        "curate/io/card.py:5: curate.io.card -> curate.report -> curate.stages: IO imports the stage contract or a "
        "stage (it sits below them)"]
