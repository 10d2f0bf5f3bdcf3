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


def test_datacomps_line_and_gcld3():
    """line: newlines gives the model DataComp's text.replace("\\n", " ") (a no-break space stays
    inside a word), the default the caption's words joined by spaces; backend: gcld3 asks CLD3 as
    DataComp's LAION-2B rule does (NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000))."""
    import fasttext
    import gcld3

    from curate.stages.language import default_model_path

    texts = ["bonjour\u00a0le\u00a0monde et merci", "a photo\nof a dog", "ein\u00a0Hund\tim Park", ""]
    table = pa.table({"uid": [str(i) for i in range(len(texts))], "text": texts})
    model = fasttext.load_model(str(default_model_path()))
    scores = {}
    for line, prepare in (("words", lambda t: " ".join(t.split())), ("newlines", lambda t: t.replace("\n", " "))):
        stage = Language(LanguageConfig(languages=None, line=line))
        stage.setup()
        out = stage.process(table).table
        expected = [model.predict(prepare(t), k=1) for t in texts]
        assert out["lang"].to_pylist() == [e[0][0].removeprefix("__label__") for e in expected]
        assert out["lang_score"].to_pylist() == pytest.approx([min(e[1][0], 1.0) for e in expected], abs=1e-6)
        scores[line] = out["lang_score"].to_pylist()
    assert scores["words"][0] != pytest.approx(scores["newlines"][0], abs=1e-3)  # the no-break spaces count
    stage = Language(LanguageConfig(languages=["en"], backend="gcld3", line="newlines"))
    stage.setup()
    verdict = stage.process(table)
    cld3 = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    assert verdict.table["lang"].to_pylist() == [cld3.FindLanguage(text=t.replace("\n", " ")).language for t in texts]
    assert verdict.reasons.tolist()[1] is None and verdict.reasons.tolist()[0] == "language"
    assert LanguageConfig(languages=["iw", "fil"], backend="gcld3").languages == ["iw", "fil"]  # CLD3's own codes
