"""Benchmark: rows/s of the text and size map stages' process() on synthetic captions.

Builds N synthetic rows (default 1M; see `synthetic_rows`): captions of 0-30 words in English,
German, French, Spanish, Japanese or Russian, with URLs, blocklisted words, Unicode spaces,
newlines, whitespace-only and null captions, and image bytes of random length; then times each stage's
process() over the rows in batches of --batch-size (the pipeline default, 256) and prints rows/s
(of process CPU time, steadier than wall time on a shared machine). With --baseline REV, the
same stages as committed at git revision REV run too, alternating with the working tree's, and
each pair's verdicts must agree.

Usage: .venv/bin/python bench/map_stages.py [--rows 1000000] [--batch-size 256] [--stages caption,language]
                                            [--baseline HEAD] [--blocklist-size 1000]
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pyarrow as pa

from common import ROOT

VOCABULARY = {  # language: (share of captions, words)
    "en": (0.70, "a the of and drawing picture photo red blue green yellow black white old new small big cat dog bird "
                 "tree house car man woman child flower sun moon star river mountain city street road boat train logo "
                 "icon vector clip art cartoon illustration with on in for by at from colourful happy funny simple "
                 "line shape"),
    "de": (0.08, "ein der die das und mit Hund Katze Baum Haus rot blau grün schön kleine große Straße über"),
    "fr": (0.08, "le la les des et avec chat chien arbre maison rouge bleu vert petit grand école été très café"),
    "es": (0.08, "el los las y con perro gato árbol casa rojo azul niño señor mañana grande pequeño"),
    "ja": (0.03, "東京 猫 犬 花 赤い 青い 家 木 車"),
    "ru": (0.03, "Москва кошка собака дом дерево красный синий"),
}
WORDS = sorted({w for _, words in VOCABULARY.values() for w in words.split()})
URLS = ["http://example.com/x.jpg", "https://img.test/a?b=1", "www.example.org"]
BLOCKLIST = ["spam", "xxx", "casino", "viagra", "porn", "nsfw", "click here", "buy now", "free money", "lottery"]
GAPS = [" "] * 40 + ["  ", "\t", "\n"]
UNICODE_GAPS = ["\u00a0", "\u3000", "\u2009"]


def synthetic_rows(n: int, seed: int = 0) -> pa.Table:
    """`n` rows of uid, text and image: captions of 0-30 words in one language each (70% English),
    some with a URL or a blocklisted word, 2% with Unicode spaces, 3% null, 2% whitespace only;
    image bytes of 0-199 bytes (only their length matters)."""
    rng = np.random.default_rng(seed)
    languages = list(VOCABULARY)
    shares = np.array([VOCABULARY[lang][0] for lang in languages])
    pools = {lang: VOCABULARY[lang][1].split() for lang in languages}
    caption_language = rng.choice(len(languages), n, p=shares / shares.sum())
    counts = rng.integers(0, 31, n)
    extras = rng.random(n)
    texts = []
    for lang, count, extra in zip(caption_language.tolist(), counts.tolist(), extras.tolist()):
        pool = pools[languages[lang]]
        words = [pool[k] for k in rng.integers(0, len(pool), count).tolist()]
        if words and extra < 0.10:
            words[-1] = URLS[int(extra * 30) % 3]
        elif words and extra < 0.13:
            words[0] = BLOCKLIST[int(extra * 1000) % 4]
        gaps = UNICODE_GAPS if 0.98 < extra else GAPS
        spaced = (w + gaps[k % len(gaps)] for w, k in zip(words, rng.integers(0, 400, count).tolist()))
        texts.append("".join(spaced).rstrip(" "))
    shapes = rng.random(n)
    for i in np.flatnonzero(shapes < 0.03).tolist():
        texts[i] = None
    for i in np.flatnonzero((shapes >= 0.03) & (shapes < 0.05)).tolist():
        texts[i] = " \u00a0\t "[: 1 + i % 4]
    sizes = rng.integers(0, 200, n)
    blob = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8).tobytes()
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int32)
    images = pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(blob)])
    return pa.table({"uid": [f"{i:032x}" for i in range(n)], "text": pa.array(texts, pa.string()), "image": images})


STAGES = {  # module, class, config: as the project's pipelines use them
    "caption": ("caption", "Caption", {"min_words": 3, "min_chars": 6, "max_chars": 200}),
    "text_filter": ("text_filter", "TextFilter", {"patterns": [r"https?://", r"^a drawing"], "blocklist": BLOCKLIST}),
    "file_size": ("file_size", "FileSize", {"min_bytes": 50, "max_bytes": 190}),
    "language": ("language", "Language", {"languages": ["en"], "min_score": 0.1}),
    "concept_match": ("concept_match", "ConceptMatch", {}),
}


def build(name: str, metadata: Path, revision: str | None = None, blocklist_size: int = len(BLOCKLIST)):
    """Stage `name`, from the working tree or as committed at git `revision`; text_filter's
    blocklist padded with made-up words to `blocklist_size` words."""
    module_name, class_name, params = STAGES[name]
    if name == "concept_match":
        params = {"metadata": str(metadata)}
    if name == "text_filter" and blocklist_size > len(BLOCKLIST):
        rng = np.random.default_rng(1)
        consonants = list("bcdfghjklmnpqrstvwxz")
        extra = ["".join(rng.choice(consonants, int(rng.integers(4, 10)))) for _ in range(blocklist_size)]
        params = {**params, "blocklist": BLOCKLIST + extra[: blocklist_size - len(BLOCKLIST)]}
    if revision is None:
        module = importlib.import_module(f"curate.stages.{module_name}")
    else:
        source = subprocess.run(["git", "show", f"{revision}:curate/stages/{module_name}.py"], cwd=ROOT,
                                check=True, capture_output=True, text=True).stdout
        module = types.ModuleType(f"baseline_{module_name}")
        exec(compile(source, f"{revision}:{module_name}.py", "exec"), module.__dict__)
    cls = getattr(module, class_name)
    stage = cls(cls.Config(**params))
    stage.setup()
    return stage


def cpu_seconds(stage, batches) -> tuple[float, list]:
    """CPU time of process() over every batch, and the verdicts' (reasons, values)."""
    start = time.process_time()
    verdicts = [stage.process(batch) for batch in batches]
    seconds = time.process_time() - start
    return seconds, [(v.reasons, v.values) for v in verdicts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--baseline", help="git revision whose stages to time as well (e.g. HEAD)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best counts")
    parser.add_argument("--blocklist-size", type=int, default=len(BLOCKLIST), help="text_filter's blocklist words")
    args = parser.parse_args()
    table = synthetic_rows(args.rows)
    batches = [table.slice(i, args.batch_size) for i in range(0, table.num_rows, args.batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        metadata = Path(tmp) / "entries.txt"
        entries = sorted(set(WORDS) | {"clip art", "line shape", "red car"})
        metadata.write_text("\n".join(entries) + "\n", encoding="utf-8")
        print(f"{args.rows:,} rows, batches of {args.batch_size}; rows/s of CPU time, best of {args.repeats}")
        for name in args.stages.split(","):
            runs = {"now": build(name, metadata, blocklist_size=args.blocklist_size)}
            if args.baseline:
                runs[args.baseline] = build(name, metadata, args.baseline, args.blocklist_size)
            best, answers = {}, {}
            for _ in range(args.repeats):
                for label, stage in runs.items():
                    seconds, answers[label] = cpu_seconds(stage, batches)
                    best[label] = min(seconds, best.get(label, seconds))
            if args.baseline and answers[args.baseline] != answers["now"]:
                raise SystemExit(f"{name}: the verdicts differ from {args.baseline}'s")
            rejected = sum(r is not None for reasons, _ in answers["now"] for r in reasons)
            line = "  ".join(f"{label} {args.rows / seconds:11,.0f}" for label, seconds in best.items())
            speedup = f"  x{best[args.baseline] / best['now']:.2f}" if args.baseline else ""
            print(f"{name:14s} {line}{speedup}  ({rejected:,} rejected)", flush=True)


if __name__ == "__main__":
    main()
