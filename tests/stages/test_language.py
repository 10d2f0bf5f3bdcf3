import pyarrow as pa
import pytest

from curate.stages.language import Language, LanguageConfig

CAPTIONS = {
    "a red fox jumping over a wooden fence in the snow": "en",
    "ein kleiner Hund spielt im Garten mit einem Ball": "de",
    "un chat noir dort sur le canapé du salon": "fr",
    "provetta con plasma e sangue per il laboratorio": "it",
}


@pytest.fixture(scope="module")
def english_only():
    stage = Language(LanguageConfig(languages=["en"]))
    stage.setup()
    return stage


def test_real_fasttext_identifies_languages(english_only):
    table = pa.table({"uid": [f"{i:032x}" for i in range(4)], "text": list(CAPTIONS)})
    verdict = english_only.process(table)
    assert verdict.table.column("lang").to_pylist() == list(CAPTIONS.values())
    scores = verdict.table.column("lang_score").to_pylist()
    assert all(0.5 < s <= 1.0 for s in scores)
    assert verdict.reasons.tolist() == [None, "language", "language", "language"]
    assert verdict.values[1].startswith("de:")


def test_min_score_and_tag_only_mode():
    stage = Language(LanguageConfig(languages=None, min_score=0.99))
    stage.setup()
    table = pa.table({"uid": ["a" * 32, "b" * 32], "text": ["a red fox jumping over a wooden fence", "ok"]})
    verdict = stage.process(table)
    assert verdict.table.column("lang").null_count == 0
    assert "language_score" in verdict.reasons  # the short one is not 99% sure of anything
    assert "language" not in verdict.reasons


def test_multiline_and_null_captions_do_not_crash(english_only):
    table = pa.table({"uid": ["a" * 32, "b" * 32], "text": ["two lines\nof english text here", None]})
    verdict = english_only.process(table)
    assert verdict.table.column("lang").to_pylist()[0] == "en"


def test_lid176_labels_are_the_models_own(english_only):
    from curate.stages.language import LID176_LABELS

    seen = set()
    for text in [*CAPTIONS, "你好世界", "Привет, мир", "lingua latina", "ĉu vi parolas esperanton", "x"]:
        labels, _ = english_only._model.predict(text, k=-1, threshold=0.0)
        seen |= {label.removeprefix("__label__") for label in labels}
    assert seen <= LID176_LABELS and len(LID176_LABELS) == 176 and len(seen) >= 170


def test_unknown_language_codes_are_refused_with_a_suggestion():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"unknown language code\(s\) 'eng' \(did you mean 'en'\?\)"):
        LanguageConfig(languages=["eng"])
    assert LanguageConfig(languages=["eng"], model="/models/my-lid.bin").languages == ["eng"]  # its own labels
