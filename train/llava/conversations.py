"""Stage-2 conversation data built from the sample pool's metadata, as LLaVA-Instruct JSON.

The pool has no human-written dialogues. What it has is each drawing's caption and its own
metadata: the category folder it was filed in, the artist's title, keywords and description.
Every image becomes one record whose turns ask about these fields, the answer being the
field's value as found (so the answers carry the pool's real noise: other languages, artist
names in keywords). The caption turn asks stage 1's caption prompt, as LLaVA-1.5 mixes caption
data into its instruction set, so a stage-2 model still captions when asked:

    {"id": uid, "image": "images/<uid>.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat category does this drawing belong to?"},
                       {"from": "gpt", "value": "signs and symbols"},
                       {"from": "human", "value": "What is the title of this drawing?"}, ...]}

A turn whose answer is empty is left out; a sample with no answer at all, or without a usable
image, is not written and is listed in `{name}_rejected.parquet` (uid, stage, reason, value),
so every input row is either a record or a rejection. Questions are phrased a few ways, picked
per sample by a hash of its uid (the same input always gives the same file). The same builder
over the held-out eval split with `fields=("category",)` gives the VQA set (`eval.json`).

    python -m train.llava.conversations --pool data/openclipart/pool --out data/openclipart/conversations \\
        [--eval data/openclipart/eval]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from curate.io.readers.contract import InputError
from curate.io.readers.tasks import plan_inputs, read_task
from curate.io.writers import atomic, file_key, image_extension, write_json_atomic, write_table_atomic
from curate.models.llava.config import CAPTION_PROMPT
from curate.schema import LEDGER_SCHEMA
from curate.stage import Verdict

STAGE = "conversations"
FIELDS = ("text", "category", "title", "keywords", "description")
QUESTIONS = {
    "text": (CAPTION_PROMPT,),
    "category": ("What category does this drawing belong to?",
                 "Which category is this clip art filed under?",
                 "What kind of drawing is this?"),
    "title": ("What is the title of this drawing?",
              "What did the artist call this picture?",
              "Give this image its title."),
    "keywords": ("Which keywords describe this drawing?",
                 "List some tags for this image.",
                 "What words would you use to find this clip art?"),
    "description": ("Describe this drawing.",
                    "What does the artist say about this picture?",
                    "Give a short description of this image."),
}
IMAGE_TOKEN = "<image>"


def category_answer(category: str) -> str:
    """A category folder name as an answer: underscores as spaces (`signs_and_symbols` -> `signs and symbols`)."""
    return category.replace("_", " ").strip()


def answer(field: str, row: dict, max_keywords: int) -> str:
    """The answer a field gives for a row ('' when the row has none): the category as words, the first
    `max_keywords` distinct keywords joined by commas, a description only when it is not the title."""
    value = row.get(field)
    if field == "keywords":
        return ", ".join(list(dict.fromkeys(k.strip() for k in value or () if k and k.strip()))[:max_keywords])
    text = " ".join(str(value or "").split())
    if field == "category":
        return category_answer(text)
    if field == "description" and text == " ".join(str(row.get("title") or "").split()):
        return ""
    return text


def question(field: str, uid: str) -> str:
    """One phrasing of a field's question, chosen by a hash of the uid and the field."""
    choices = QUESTIONS[field]
    return choices[int(hashlib.sha1(f"{uid}/{field}".encode()).hexdigest()[:8], 16) % len(choices)]


def conversation(row: dict, fields: tuple[str, ...], max_keywords: int) -> list[dict]:
    """The row's human/gpt turns, one pair per field with an answer; the image placeholder opens the first."""
    turns = []
    for field in fields:
        reply = answer(field, row, max_keywords)
        if reply:
            prefix = f"{IMAGE_TOKEN}\n" if not turns else ""
            turns += [{"from": "human", "value": prefix + question(field, row["uid"])}, {"from": "gpt", "value": reply}]
    return turns


def _check_image(data: bytes | None) -> str | None:
    """The reason an encoded image cannot be used, or None."""
    if not data:
        return "missing_image"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"corrupt_image: {type(exc).__name__}"
    return None


def build_conversations(pool_dir: str | Path, out_dir: str | Path, *, name: str = "train",
                        fields: tuple[str, ...] = FIELDS, max_keywords: int = 10, progress: bool = True) -> Path:
    """Write `out_dir/{name}.json` (LLaVA-Instruct records, one per usable sample of `pool_dir`, images
    under `out_dir/images/`), `{name}_rejected.parquet` and `{name}_summary.json`; returns the JSON's path.

    `pool_dir` is anything curate reads (the pool's Parquet folder, a curated output, tars) with the
    metadata columns in `fields`; a missing column is an InputError naming the file.
    """
    unknown = [f for f in fields if f not in QUESTIONS]
    if unknown or not fields:
        raise ValueError(f"fields must be a non-empty subset of {list(QUESTIONS)}, got {list(fields)}")
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    tasks = plan_inputs([str(pool_dir)])
    records, ledgers, turns_per_field, inputs = [], [], Counter(), 0
    for task in tqdm(tasks, desc="conversations", unit="task", disable=not progress):
        for batch in read_task(task, 1024):
            verdict = Verdict.rejecting(batch.table, batch.failures)
            missing = [f for f in fields if f not in verdict.table.column_names]
            if missing:
                raise InputError(f"{task.describe()}: no column(s) {missing} to ask about (asked for fields "
                                 f"{list(fields)}; found {verdict.table.column_names})")
            inputs += verdict.table.num_rows
            for i, row in enumerate(verdict.table.to_pylist()):
                if verdict.reasons[i] is not None:
                    continue  # the reader could not read it whole: already a rejection
                problem = _check_image(row["image"])
                turns = conversation(row, fields, max_keywords) if problem is None else []
                if problem is None and not turns:
                    problem = "no_answers"
                if problem is not None:
                    reason, _, value = problem.partition(": ")
                    verdict.reject(i, reason, value or None)
                    continue
                relative = f"images/{file_key(row['uid'])}.{image_extension(row['image'])}"
                with atomic(out_dir / relative) as tmp:
                    tmp.write_bytes(row["image"])
                records.append({"id": row["uid"], "image": relative, "conversations": turns})
                turns_per_field.update(f for f in fields if answer(f, row, max_keywords))
            ledgers.append(verdict.split(STAGE)[1])
    rejected = pa.concat_tables([LEDGER_SCHEMA.empty_table(), *ledgers])
    write_table_atomic(rejected, out_dir / f"{name}_rejected.parquet")
    write_json_atomic({"input": str(pool_dir), "inputs": inputs, "records": len(records),
                       "turns": sum(turns_per_field.values()), "turns_per_field": dict(turns_per_field),
                       "rejected": dict(Counter(rejected.column("reason").to_pylist())), "fields": list(fields),
                       "built_from": "the pool's captions and metadata (category, title, keywords, description), "
                                     "not human dialogues"},
                      out_dir / f"{name}_summary.json")
    path = out_dir / f"{name}.json"
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    if inputs != len(records) + rejected.num_rows:
        raise AssertionError(f"{inputs} input rows but {len(records)} records + {rejected.num_rows} rejections")
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI: build the stage-2 set from a pool, and optionally the held-out VQA set from an eval split."""
    parser = argparse.ArgumentParser(prog="python -m train.llava.conversations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", required=True,
                        help="the pool (Parquet folder or curated output) to build train.json from")
    parser.add_argument("--out", required=True, help="output folder: train.json, images/, ledgers and summaries")
    parser.add_argument("--eval", default=None, help="held-out eval split: also write eval.json (category questions)")
    parser.add_argument("--max-keywords", type=int, default=10, help="keywords per answer at most")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        built = [build_conversations(args.pool, args.out, max_keywords=args.max_keywords, progress=not args.quiet)]
        if args.eval:
            built.append(build_conversations(args.eval, args.out, name="eval", fields=("category",),
                                             progress=not args.quiet))
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in built:
        summary = json.loads(path.with_name(f"{path.stem}_summary.json").read_text())
        print(f"{path}: {summary['records']} records, {summary['turns']} turns {summary['turns_per_field']}, "
              f"rejected {summary['rejected'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
