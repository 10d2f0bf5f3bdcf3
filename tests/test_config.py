"""YAML configs: hostile files (alias bombs, recursion, deep nesting) are refused in bounded time
and memory, error messages never hold a whole value, and unknown keys get a suggestion."""

import resource
import subprocess
import sys
import time

import pytest

from curate.config import MAX_YAML_VALUES, ConfigError, apply_override, load_yaml, short_repr
from curate.pipeline import load_pipeline


def alias_bomb(levels: int = 9) -> str:
    """The billion-laughs document: each level a list of nine aliases of the level before (9^9
    strings from a few hundred bytes), hung under the pipeline's own keys."""
    lines = ['name: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnop"
    for previous, level in zip(names, names[1:levels]):
        lines.append(f"{level}: &{level} [" + ",".join([f"*{previous}"] * 9) + "]")
    lines.append(f"stages: *{names[levels - 1]}")
    return "\n".join(lines) + "\n"


def _cap_memory() -> None:
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_alias_bomb_is_refused_in_bounded_time_and_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert len(path.read_bytes()) < 600
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "curate.cli", "validate", str(path)], capture_output=True,
                            text=True, timeout=60, preexec_fn=_cap_memory)  # 1 GiB of address space
    assert time.monotonic() - started < 30
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{path}: the YAML stands for more than {MAX_YAML_VALUES:,} values" in result.stderr
    assert "alias" in result.stderr and "Traceback" not in result.stderr and len(result.stderr) < 500


def test_ordinary_aliases_still_load(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: t\nstages:\n  - stage: caption\n    min_words: &n 3\n    min_chars: *n\n"
                    "  - &lang {stage: language, languages: [en, de]}\n  - *lang\n")
    pipeline = load_pipeline(path)
    assert pipeline.stages[0].config.min_chars == 3
    assert pipeline.stages[2].config.languages == ["en", "de"]


def test_recursive_anchor_and_deep_nesting_are_config_errors(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: &x [a, *x]\nstages: []\n")
    with pytest.raises(ConfigError, match="recursive anchor"):
        load_yaml(path)
    path.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)


def test_an_override_is_bounded_too(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: t\nstages: [{stage: decode}]\n")
    levels = ["&a [x,x,x,x,x,x,x,x,x,x]"] + [f"&{b} [" + ",".join([f"*{a}"] * 10) + "]" for a, b in zip("abcd", "bcde")]
    with pytest.raises(ConfigError, match="--set name: the YAML stands for more than"):
        apply_override(load_yaml(path), "name=[" + ", ".join(levels) + ", [" + ",".join(["*e"] * 10) + "]]", str(path))


def test_error_messages_never_hold_a_whole_value(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: [" + ", ".join(str(i) for i in range(50_000)) + "]\nstages: [{stage: decode}]\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert f"{path}: name: Input should be a valid string (got [0, 1, 2, 3, 4, 5, ...])" == str(err.value)
    path.write_text("name: t\nstages: " + "x" * 100_000 + "\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert "stages: expected a non-empty list" in str(err.value) and len(str(err.value)) < 400
    assert len(short_repr({"k": "v" * 10_000, "l": list(range(10_000))})) <= 200


def test_unknown_keys_and_stages_get_a_suggestion(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: t\nbatch_sise: 5\nstages:\n  - stage: caption\n    min_wrods: 3\n  - stage: langauge\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    lines = str(err.value).splitlines()
    assert lines == [
        f"{path}: batch_sise: Extra inputs are not permitted (did you mean 'batch_size'?)",
        f"{path}: stages[0].min_wrods: Extra inputs are not permitted (did you mean 'min_words'?) [stage caption]",
        f"{path}: stages[1].stage: unknown stage 'langauge'; did you mean 'language'? known stages: "
        + ", ".join(sorted(__import__("curate.stages", fromlist=["REGISTRY"]).REGISTRY)),
    ]


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: t\nbatch_size: -1\nstages:\n  - stage: caption\n    min_words: three\n"
                    "  - stage: language\n    languages: [en, eng, fra]\n  - stage: image_size\n    min_side: -5\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    message = str(err.value)
    assert len(message.splitlines()) == 4
    for part in ("batch_size: Input should be greater than 0", "stages[0].min_words: Input should be a valid integer",
                 "unknown language code(s) 'eng' (did you mean 'en'?), 'fra' (did you mean 'fr'?)",
                 "stages[2].min_side: Input should be greater than or equal to 0"):
        assert part in message, part


@pytest.mark.parametrize("recipe, loader, what, command", [
    ("pipelines/ablation_small.yaml", "curate.pipeline:load_pipeline", "an ablation file", "curate ablate"),
    ("pipelines/bootstrap_small.yaml", "curate.pipeline:load_pipeline", "a bootstrap file", "curate bootstrap"),
    ("train/configs/eval_default.yaml", "curate.pipeline:load_pipeline", "an evaluation suite", "curate eval"),
    ("train/configs/clip_tiny.yaml", "curate.pipeline:load_pipeline", "a training config", "curate train clip"),
    ("pipelines/quickstart.yaml", "curate.experiments.ablate:load_ablation", "a pipeline file", "curate run"),
    ("pipelines/quickstart.yaml", "curate.experiments.bootstrap:load_bootstrap", "a pipeline file", "curate run"),
    ("pipelines/ablation_small.yaml", "train.clip.config:load_clip_config", "an ablation file", "curate ablate"),
])
def test_a_file_given_to_the_wrong_command_names_the_right_one(recipe, loader, what, command):
    import importlib

    module, name = loader.split(":")
    with pytest.raises(ConfigError) as err:
        getattr(importlib.import_module(module), name)(recipe)
    assert str(err.value).startswith(f"{recipe}: this is {what} ")
    assert f"use {command}" in str(err.value)
