"""Benchmark: copy detection (issue 21). Planted altered copies of held-out pool drawings and of
evaluation drawings, beside distinct drawings of the same pool; recall of the copies and the
false-merge rate of the distinct drawings, per method and threshold, in one run.

The set (curate.calibrate.copy_set, curate.copies): pool drawings of the held-out families
(`curate.copies.heldout`, 30%: `curate train copydetect` never reads them) and evaluation drawings,
each set of the same image counted once, none that is also a training image or one of the drawings
the tests render (tests/conftest.py). `--originals` of the pool ones and `--eval-originals` of the
evaluation ones (at least 64 px) get one copy of each kind in curate.copies.KINDS (crop 2-10% a
side, JPEG 30-90, brightness/contrast +-20%, resize to 50-80%, rotation 2-8 degrees, mirror, a
border, overlaid text, and two or three of these with a JPEG re-encode); every other held-out
drawing is a distinct image, the hard negatives included (variants of one drawing, icon sets).

Two views per method:
- dedup (near_dedup): connected components of the pool's pairs within the threshold; a copy is
  found when it is in its original's component, a distinct drawing falsely merged when its
  component holds another distinct drawing (or a copy of one).
- decontaminate: each pool row's nearest evaluation drawing; a copy of an evaluation drawing is
  found when that is its original, within the threshold; a distinct pool drawing falsely matched
  when any evaluation drawing is within it.

Methods: phash (near_dedup's and decontaminate's method until issue 21: one 64-bit pHash),
hashes (the normalised multi-hash code), descriptor (a `curate train copydetect` checkpoint),
verified (each image's nearest candidates by the descriptor, or by hashes without a checkpoint,
accepted on the RANSAC inliers of their SIFT keypoints: curate.copyverify).

Usage: .venv/bin/python bench/copies.py [--checkpoint runs/copydetect/copydetect.pt] [--originals 300]
       [--eval-originals 200] [--target 0.005] [--methods phash,hashes,descriptor,verified] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT
from curate import calibrate, copies
from curate.sample.openclipart import DEFAULT_SOURCE
from curate.stages.copy_method import INLIERS, RADIUS

OLD_RADIUS = 4  # pHash's radius in near_dedup and decontaminate before issue 21: the baseline


def tested_drawings(source: Path = DEFAULT_SOURCE) -> set[str]:
    """URLs of the drawings the tests render (tests/conftest.py: POOL_LIMIT spread in path order)."""
    from tests.conftest import POOL_LIMIT

    svgs = sorted(p for p in source.rglob("*.svg") if p.is_file())
    step = len(svgs) / POOL_LIMIT
    return {svgs[int(i * step)].absolute().as_uri() for i in range(POOL_LIMIT)}


def benchmark_set(pool: str, eval_split: str, originals: int, eval_originals: int, seed: int) -> copies.CopySet:
    """The planted set: held-out pool drawings and evaluation drawings, away from training and test images."""
    found, evals = copies.read_images([pool]), copies.read_images([eval_split])
    tested = tested_drawings()
    held = copies.heldout([copies.family(url, uid) for uid, url in zip(found["uid"], found["url"])])
    untested = np.array([url not in tested for url in found["url"]])
    pool_images = [d for d, h, u in zip(found["image"], held, untested) if h and u]
    others = [d for d, h, u in zip(found["image"], held, untested) if not (h and u)]
    eval_images = [d for d, url in zip(evals["image"], evals["url"]) if url not in tested]
    others += [d for d, url in zip(evals["image"], evals["url"]) if url in tested]
    return calibrate.copy_set(pool_images, originals, seed, eval_images, eval_originals, others)


def rows_to_show(result: copies.Sweep, chosen: int | None, limit: int = 10) -> list[int]:
    """Thresholds worth a row: those with under 20% false merges (at most `limit`, evenly), and the chosen one."""
    useful = np.flatnonzero(result.false_merge <= 0.2)
    shown = set(useful[np.linspace(0, len(useful) - 1, min(limit, len(useful))).astype(int)].tolist()) if len(
        useful) else set()
    return sorted(shown | ({chosen} if chosen is not None else set()))


def print_method(method: str, view: str, result: copies.Sweep, target: float) -> None:
    """A method's sweep as a Markdown table, the chosen threshold marked."""
    chosen = copies.at_false_merge(result, target)
    kinds = list(result.recall_by_kind)
    unit = {"descriptor": "cosine >=", "verified": "inliers >="}.get(method, "radius")
    print(f"\n{view} / {method}\n\n| {unit} | recall | false merges | " + " | ".join(kinds) + " |")
    print("|---" * (3 + len(kinds)) + "|")
    for i in rows_to_show(result, chosen):
        mark = " **(chosen)**" if i == chosen else ""
        print(f"| {calibrate.as_threshold(method, result.thresholds[i])}{mark} | {result.recall[i]:.3f} | "
              f"{result.false_merge[i]:.4f} | "
              + " | ".join(f"{result.recall_by_kind[k][i]:.2f}" for k in kinds) + " |")


def row(label: str, method: str, result: copies.Sweep, index: int) -> dict:
    """One summary row: a method's figures at the sweep's threshold `index`."""
    return {"row": label, "method": method, "threshold": calibrate.as_threshold(method, result.thresholds[index]),
            "recall": round(float(result.recall[index]), 4), "false_merge": round(float(result.false_merge[index]), 4),
            "recall_by_kind": {k: round(float(v[index]), 4) for k, v in result.recall_by_kind.items()}}


def default_index(method: str, stage: str, result: copies.Sweep, checkpoint: str) -> int:
    """The sweep's index of the stage's default threshold for the method: the calibrated radius or
    inlier count (curate.stages.copy_method.RADIUS, INLIERS) or the checkpoint's calibrated cosine."""
    if method == "verified":
        return int(np.flatnonzero(result.thresholds == -INLIERS[stage])[0])
    if method == "descriptor":
        from curate.models.copydetect import read_config

        cosine = read_config(checkpoint)["threshold"]
        return int(np.flatnonzero(result.thresholds <= 1 - cosine + 1e-9).max())
    return int(np.flatnonzero(result.thresholds == RADIUS[stage][method])[0])


def summary_rows(method: str, stage: str, result: copies.Sweep, target: float, checkpoint: str) -> list[dict]:
    """A method's summary rows for one view: pHash at radius 4 (its default before issue 21, the
    issue's baseline), the stage's default, and the best threshold holding `target` (or where none
    holds it, the one with the fewest false merges)."""
    rows = [row(f"{method}, {stage}'s default", method, result, default_index(method, stage, result, checkpoint))]
    if method == "phash":
        rows.insert(0, row("phash at radius 4 (the baseline)", method, result,
                           int(np.flatnonzero(result.thresholds == OLD_RADIUS)[0])))
    best = copies.at_false_merge(result, target)
    if best is None:
        rows.append(row(f"{method}, fewest false merges (none holds {target:.1%})", method, result,
                        int(np.argmin(result.false_merge))))
    else:
        rows.append(row(f"{method}, best at <= {target:.1%} false merges", method, result, best))
    return rows


def print_summary(view: str, rows: list[dict]) -> None:
    """The summary rows of one view as a Markdown table, recall by kind included."""
    if not rows:
        return
    kinds = list(rows[0]["recall_by_kind"])
    print(f"\n{view}: each method beside pHash at radius 4\n\n| | threshold | recall | false merges | "
          + " | ".join(kinds) + " |\n" + "|---" * (4 + len(kinds)) + "|")
    for r in rows:
        print(f"| {r['row']} | {r['threshold']} | {r['recall']:.3f} | {r['false_merge']:.4f} | "
              + " | ".join(f"{r['recall_by_kind'][k]:.2f}" for k in kinds) + " |")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=str(ROOT / "data/openclipart/pool"))
    parser.add_argument("--eval", dest="eval_split", default=str(ROOT / "data/openclipart/eval"))
    parser.add_argument("--checkpoint", default=str(ROOT / "runs/copydetect/copydetect.pt"),
                        help="copy descriptor (skipped, with a note, when it does not exist)")
    parser.add_argument("--originals", type=int, default=300, help="held-out pool drawings copied")
    parser.add_argument("--eval-originals", type=int, default=200, help="evaluation drawings copied")
    parser.add_argument("--target", type=float, default=0.005, help="false-merge rate a threshold must hold")
    parser.add_argument("--methods", default=",".join(calibrate.METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    started = time.time()
    planted = benchmark_set(args.pool, args.eval_split, args.originals, args.eval_originals, args.seed)
    distinct = int((planted.kind == "original").sum())
    print(f"{distinct} distinct pool drawings, {len(planted.images) - distinct} copies ({len(copies.KINDS)} kinds), "
          f"{len(planted.eval_images)} evaluation drawings; built in {time.time() - started:.0f} s")
    figures = {"distinct": distinct, "copies": len(planted.images) - distinct, "eval": len(planted.eval_images),
               "target": args.target, "methods": {}}
    results_by_method: dict[str, dict[str, copies.Sweep]] = {}
    for method in args.methods.split(","):
        if method == "descriptor" and not Path(args.checkpoint).exists():
            print(f"\ndescriptor: skipped, no checkpoint at {args.checkpoint} (`curate train copydetect` makes one)")
            continue
        started = time.time()
        checkpoint = args.checkpoint if method == "descriptor" or (method == "verified" and Path(
            args.checkpoint).exists()) else None
        results = calibrate.sweep(method, planted, checkpoint)
        seconds = time.time() - started
        figures["methods"][method] = {view: calibrate.summary(method, r, args.target) for view, r in results.items()}
        figures["methods"][method]["seconds"] = round(seconds, 1)
        results_by_method[method] = results
        for view, result in results.items():
            print_method(method, view, result, args.target)
    for view, stage in (("dedup", "near_dedup"), ("decontaminate", "decontaminate")):
        figures[view] = [r for method, results in results_by_method.items() if view in results
                         for r in summary_rows(method, stage, results[view], args.target, args.checkpoint)]
        print_summary(view, figures[view])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
