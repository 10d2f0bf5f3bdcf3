"""Benchmark: curate on DataComp-shaped metadata at 1M and 10M rows, on every engine, against DuckDB.

Synthetic DataComp-shaped metadata (uid, url, text drawn from the pool's real captions,
original_width, original_height, clip_l14_similarity_score; 10% exact duplicates: the same
url and text under another uid) is written once into data/scale/, several Parquet files with
125k-row row groups (a row group is a task). One pipeline (PIPELINE below: caption rules,
size rules from the metadata, exact_dedup on url+text, top 30% by the score column) runs in a
subprocess per engine (local, a local Ray, Spark local[N]) twice in one engine session: the first
run timed from the process's start, as `curate run` is, the second warm; a poller reads the RSS
and CPU time of every process of the first run every 0.2 s (CPU seconds say more than wall
time on a machine shared with other jobs). DuckDB (its own venv, `make bench-duckdb`)
runs the same steps in SQL on the same files. `--images` adds an image-bearing variant
(200k rows, the pool's JPEGs cycled, decoded by the pipeline) against decode-only loops on
the same images (bench/heuristics.py's limit: JPEGs at 1/8 scale, as curate's decode does where
no stage keeps the pixels, and full decodes).

Prints a table per size and the issue-14 targets, PASS/FAIL:
  local >= 0.5x DuckDB's rows/s at 10M; every process's peak RSS at 10M <= 1.15x its 1M figure
  and <= 2 GiB (judged twice: on RSS, and on RSS less shared pages, since a Ray worker's RSS counts
  the object store pages it maps and any process's counts the Parquet pages it reads); Ray and Spark
  <= 1.5x local's time, cold (a `curate run`) and warm (a second run in the same engine session);
  the image variant >= 0.9x the decode-only loop.
Writes the figures to out/bench/scale.json.

Optional parts of the pipeline that today's curate rejects (image_size without a decode,
clip_score's score_column, the `outputs` setting) are probed on a 1k-row file first and left
out, said so in the output; DuckDB then runs the same subset.

Usage: .venv/bin/python bench/scale.py [--rows 1000000 10000000] [--engines local ray spark duckdb]
                                       [--images [N]] [--timeout S] [--keep-data] [--code DIR]
(--code: the curate of another tree, e.g. a commit: git archive REV | tar -x -C DIR)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from heuristics import bench_decode_limit

from common import ROOT

CURATE = ROOT / ".venv" / "bin" / "curate"
DUCKDB_PYTHON = ROOT / "bench" / ".venv-duckdb" / "bin" / "python"
POOL = ROOT / "data" / "openclipart" / "pool"
DATA = ROOT / "data" / "scale"
RESULTS = ROOT / "out" / "bench" / "scale.json"
WORKERS = 2
SCORE = "clip_l14_similarity_score"
DATA_VERSION = 1  # bump when the generator changes: data/scale is regenerated
ROW_GROUP = {"metadata": 125_000, "images": 5_000}  # rows per task
ROWS_PER_FILE = 1_000_000
TINY_ROWS = 1_000  # the file that probes the pipeline and measures each engine's start-up
POLL_S = 0.2
GIB = 1 << 30
CODE: Path | None = None  # --code: the curate source tree the runs import (default: the installed one)

# The pipeline, in one place. Entries marked optional are probed first and dropped (and
# named in the output) when today's curate rejects them.
MIN_WORDS, MIN_CHARS, MIN_SIDE, MAX_ASPECT, TOP_FRACTION = 2, 6, 200, 3.0, 0.3
PIPELINE = {
    "name": "scale",
    "batch_size": 65536,
    "outputs": ["parquet", "uids"],  # optional: no tars for a metadata run
    "stages": [
        {"stage": "caption", "min_words": MIN_WORDS, "min_chars": MIN_CHARS},
        # optional: from original_width/height
        {"stage": "image_size", "min_side": MIN_SIDE, "max_aspect_ratio": MAX_ASPECT},
        {"stage": "exact_dedup", "key": "url_text"},
        {"stage": "clip_score", "top_fraction": TOP_FRACTION, "score_column": SCORE},  # optional: the score column
    ],
}
OPTIONAL = {"outputs": "setting outputs", "image_size": "stage image_size", "clip_score": "stage clip_score"}
IMAGE_BATCH = 512  # the image variant decodes: smaller batches
LIMITS = {"draft": True, "full": False}  # the image variant's decode-only loops: JPEGs at 1/8 scale, and full


# ---------------------------------------------------------------- data


def pool_captions() -> tuple[pa.Array, pa.Array, pa.Array]:
    """The pool's captions, the words they use, and the words of at most 2 characters."""
    texts = pa.concat_arrays([pq.read_table(p, columns=["text"]).column("text").combine_chunks()
                              for p in sorted(POOL.glob("*.parquet"))])
    texts = pc.filter(texts, pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(texts, ""))), 0))
    words = pc.unique(pc.list_flatten(pc.utf8_split_whitespace(texts)))
    short = pc.filter(words, pc.less_equal(pc.utf8_length(words), 2))
    return texts, words, short


def pool_images() -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray]:
    """The pool's JPEG bytes, their captions, and their widths and heights (read from the headers)."""
    import io

    from PIL import Image

    table = pa.concat_tables(pq.read_table(p, columns=["text", "image"]) for p in sorted(POOL.glob("*.parquet")))
    images, texts = table.column("image").combine_chunks(), pc.fill_null(table.column("text"), "").combine_chunks()
    sizes = np.array([Image.open(io.BytesIO(b)).size for b in images.to_pylist()], np.int32)
    return images, texts, sizes[:, 0], sizes[:, 1]


def hex_uids(rng: np.random.Generator, n: int) -> pa.Array:
    """n random 128-bit uids as 32 lowercase hex characters, built as one buffer."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    nibbles = np.empty((n, 32), np.uint8)
    nibbles[:, 0::2], nibbles[:, 1::2] = raw >> 4, raw & 15
    chars = np.frombuffer(b"0123456789abcdef", np.uint8)[nibbles]
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


@dataclass
class Plan:
    """Which unique sample each row is, and each unique sample's properties (a duplicate shares them)."""

    source: np.ndarray  # row -> unique sample
    caption: np.ndarray  # unique sample -> caption index
    kind: np.ndarray  # 0 caption, 1 caption + word, 2 one word, 3 blank, 4 two short words
    word: np.ndarray
    word2: np.ndarray
    width: np.ndarray
    height: np.ndarray
    score: np.ndarray


def make_plan(rng: np.random.Generator, rows: int, captions: int, words: int, short: int,
              sizes: tuple[np.ndarray, np.ndarray] | None) -> Plan:
    """90% unique samples and 10% exact copies of random ones, shuffled so copies cross tasks.
    Captions are the pool's, a word appended to 35% (so not all are identical), with 10% that
    fail the caption rules; sizes are DataComp-like (log-normal) or, with images, the image's."""
    unique = rows - rows // 10
    source = np.concatenate([np.arange(unique), rng.integers(0, unique, rows - unique)])
    rng.shuffle(source)
    kind = rng.choice(5, size=unique, p=[0.55, 0.35, 0.05, 0.03, 0.02]).astype(np.int8)
    if sizes is None:
        caption = rng.integers(0, captions, unique)
        short_side = np.exp(rng.normal(6.0, 0.7, unique))
        aspect = np.exp(np.abs(rng.normal(0.0, 0.5, unique)))
        landscape = rng.random(unique) < 0.6
        long_side = short_side * aspect
        width = np.clip(np.where(landscape, long_side, short_side), 1, 20000).astype(np.int32)
        height = np.clip(np.where(landscape, short_side, long_side), 1, 20000).astype(np.int32)
    else:  # the image's own caption and size: the pool's images, cycled
        caption = np.arange(unique) % captions
        width, height = sizes[0][caption], sizes[1][caption]
    score = np.clip(rng.normal(0.27, 0.05, unique), -1, 1).astype(np.float32)
    return Plan(source, caption, kind, rng.integers(0, words, unique), rng.integers(0, short, unique),
                width, height, score)


def make_table(plan: Plan, rows: slice, rng: np.random.Generator, captions: pa.Array, words: pa.Array,
               short: pa.Array, images: pa.Array | None) -> pa.Table:
    """The rows `rows` of the plan as a DataComp-shaped table (with an image column for the image variant)."""
    ids = plan.source[rows]
    n = len(ids)
    caption = captions.take(pa.array(plan.caption[ids]))
    word = words.take(pa.array(plan.word[ids]))
    tiny = short.take(pa.array(plan.word2[ids]))
    text = pc.choose(pa.array(plan.kind[ids]), caption, pc.binary_join_element_wise(caption, word, " "), word,
                     pa.array(np.where(ids % 2 == 0, "", "  "), pa.string()),
                     pc.binary_join_element_wise(tiny, short.take(pa.array((plan.word2[ids] + 1) % len(short))), " "))
    ident = pc.cast(pa.array(ids), pa.string())
    host = pc.cast(pa.array(ids % 64), pa.string())
    url = pc.binary_join_element_wise("https://cdn", host, ".example.com/img/", ident, ".jpg", "")
    columns = {
        "uid": hex_uids(rng, n),
        "url": url,
        "text": text,
        "original_width": pa.array(plan.width[ids], pa.int64()),
        "original_height": pa.array(plan.height[ids], pa.int64()),
        SCORE: pa.array(plan.score[ids], pa.float32()),
    }
    if images is not None:
        columns["image"] = images.take(pa.array(plan.caption[ids]))
    return pa.table(columns)


def write_data(kind: str, rows: int, seed: int = 0) -> Path:
    """data/scale/<kind>-<rows>/: the synthetic set, reused when a finished one of this version is there."""
    folder = DATA / f"{kind}-{rows}"
    marker = folder / "_complete.json"
    expected = {"kind": kind, "rows": rows, "seed": seed, "version": DATA_VERSION}
    if marker.exists() and json.loads(marker.read_text()) == expected:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    captions, words, short = pool_captions()
    images = sizes = None
    if kind == "images":
        images, captions, width, height = pool_images()
        sizes = (width, height)
    plan = make_plan(rng, rows, len(captions), len(words), len(short), sizes)
    files = max(1, math.ceil(rows / ROWS_PER_FILE)) if kind == "metadata" else max(1, math.ceil(rows / 50_000))
    if kind == "metadata" and rows >= 4 * ROW_GROUP["metadata"]:
        files = max(files, 4)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        table = make_table(plan, slice(lo, hi), rng, captions, words, short, images)
        pq.write_table(table, folder / f"part-{i:05d}.parquet", row_group_size=ROW_GROUP[kind],
                       compression={c: "none" if c == "image" else "zstd" for c in table.column_names})
    marker.write_text(json.dumps(expected))
    size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    print(f"wrote {folder.relative_to(ROOT)}: {rows:,} rows in {files} files, {size / 2**20:,.0f} MiB, "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    return folder


def tasks_of(folder: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_row_groups for p in folder.glob("*.parquet"))


# ---------------------------------------------------------------- measuring a process tree


@dataclass
class Measured:
    """One subprocess run: wall time, exit, and the peak RSS of each kind of process in its tree."""

    seconds: float
    returncode: int | None
    timed_out: bool
    cpu_s: float = 0.0  # user + system seconds of every process of the run (each as last sampled)
    driver_rss: int = 0
    worker_rss: int = 0  # the largest Python process other than the driver (and Ray's own helpers)
    other_rss: int = 0  # the largest JVM, raylet, gcs_server or Ray helper
    other_name: str = ""
    # the same peaks less shared pages (RSS - RssFile - RssShmem: a worker's mapped Parquet pages,
    # libraries and Ray's object store, which the OS shares and reclaims): what a process holds itself
    driver_anon: int = 0
    worker_anon: int = 0
    other_anon: int = 0
    worker_name: str = ""  # the largest worker's process name (a Ray worker's names its task or actor)
    processes: int = 0
    leftovers: int = 0  # processes of the run still alive after it ended, killed by the poller
    output: str = field(default="", repr=False)


def _role(proc: psutil.Process) -> tuple[str, str]:
    """("worker" | "other", a short name) for a process of the run other than the driver."""
    name = proc.name()
    cmdline = " ".join(proc.cmdline())
    if name.startswith("ray::"):  # a Ray worker names itself after its task or actor
        return "worker", name
    if name in ("java", "raylet", "gcs_server") or "java" in name:
        return "other", "jvm" if "java" in name else name
    helpers = ("dashboard", "log_monitor", "monitor.py", "runtime_env", "agent")
    if "ray" in cmdline and any(h in cmdline for h in helpers):
        return "other", "ray helper"
    if "python" in name or "python" in cmdline.split(" ", 1)[0]:
        return "worker", "python"
    return "other", name


def measure(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path = ROOT,
            until: bytes | None = None) -> Measured:
    """Run `cmd`, polling its process tree's RSS every POLL_S; killed (each process by its pid) past `timeout`.
    With `until`, the figures stop at the first output line that starts with it (the command goes on
    to the end, timed and checked): a session's first run, measured as a `curate run` alone would be."""
    log = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
    root = psutil.Process(proc.pid)
    seen: dict[tuple[int, float], psutil.Process] = {}
    peaks: dict[tuple[int, float], tuple[int, str, str]] = {}
    anon: dict[tuple[int, float], int] = {}
    cpu: dict[tuple[int, float], float] = {}
    driver = driver_anon = 0
    timed_out = frozen = False
    while proc.poll() is None:
        if time.perf_counter() - start > timeout:
            timed_out = True
            break
        if until and not frozen:
            log.seek(0)
            frozen = any(line.startswith(until) for line in log.read().splitlines())
        if frozen:
            time.sleep(POLL_S)
            continue
        try:
            memory = root.memory_info()
            driver, driver_anon = max(driver, memory.rss), max(driver_anon, memory.rss - memory.shared)
            times = root.cpu_times()
            cpu[(root.pid, 0.0)] = times.user + times.system
            children = root.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            try:
                key = (child.pid, child.create_time())
                seen.setdefault(key, child)
                times = child.cpu_times()
                cpu[key] = times.user + times.system
                memory = child.memory_info()
                if memory.rss > peaks.get(key, (0,))[0]:
                    peaks[key] = (memory.rss, *_role(child))
                anon[key] = max(anon.get(key, 0), memory.rss - memory.shared)
            except psutil.Error:
                continue
        time.sleep(POLL_S)
    if timed_out:
        _kill(proc, list(seen.values()))
    seconds = time.perf_counter() - start
    proc.wait()
    leftovers = _reap(list(seen.values()))
    log.seek(0)
    output = log.read().decode("utf-8", "replace")
    workers = [k for k, p in peaks.items() if p[1] == "worker"]
    others = [k for k, p in peaks.items() if p[1] == "other"]
    biggest = max(others, key=lambda k: peaks[k][0], default=None)
    largest = max(workers, key=lambda k: peaks[k][0], default=None)
    return Measured(seconds, None if timed_out else proc.returncode, timed_out, sum(cpu.values()), driver,
                    max((peaks[k][0] for k in workers), default=0), peaks[biggest][0] if biggest else 0,
                    peaks[biggest][2] if biggest else "", driver_anon, max((anon[k] for k in workers), default=0),
                    max((anon[k] for k in others), default=0), peaks[largest][2] if largest else "", len(seen) + 1,
                    leftovers, output)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill(proc: subprocess.Popen, children: list[psutil.Process]) -> None:
    """SIGKILL the run's process group, then any process of the run that left it (Ray starts its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for child in children:
        if _alive(child):
            child.kill()


def _reap(children: list[psutil.Process], grace: float = 10.0) -> int:
    """Processes of a finished run still alive after `grace` seconds (a Ray that did not shut down) are killed."""
    deadline = time.perf_counter() + grace
    while any(_alive(c) for c in children) and time.perf_counter() < deadline:
        time.sleep(0.2)
    left = [c for c in children if _alive(c)]
    for child in left:
        child.kill()
    return len(left)


# ---------------------------------------------------------------- curate


def pipeline_dict(kind: str, features: set[str]) -> dict:
    """PIPELINE with the optional entries today's curate accepts; the image variant decodes and writes tars."""
    raw = {k: v for k, v in PIPELINE.items() if k != "outputs" or ("outputs" in features and kind == "metadata")}
    if kind == "images":  # image_size reads the decoded sizes
        features = features | {"image_size"}
    raw["stages"] = [s for s in PIPELINE["stages"] if s["stage"] not in OPTIONAL or s["stage"] in features]
    if kind == "images":
        raw["batch_size"] = IMAGE_BATCH
        raw["stages"] = [{"stage": "decode"}] + raw["stages"]
    return raw


def pipeline_file(raw: dict, scratch: Path) -> Path:
    path = scratch / f"{raw['name']}-{abs(hash(json.dumps(raw, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def curate_command(raw: dict, source: Path, out: Path, engine: str, scratch: Path, workers: int = WORKERS) -> list[str]:
    return [str(CURATE), "run", str(pipeline_file(raw, scratch)), "--input", str(source), "--output", str(out),
            "--engine", engine, "--workers", str(workers), "--overwrite", "--quiet"]


def run_curate(raw: dict, source: Path, engine: str, scratch: Path, timeout: float, workers: int = WORKERS) -> dict:
    """One `curate run` subprocess in a fresh output folder; its figures and the run's stats."""
    out = ROOT / "out" / "scale" / f"{source.name}-{engine}"
    shutil.rmtree(out, ignore_errors=True)  # a finished identical run would be reused, not redone
    measured = measure(curate_command(raw, source, out, engine, scratch, workers), timeout, _env(), CODE or ROOT)
    stats = json.loads((out / "stats.json").read_text()) if measured.returncode == 0 else None
    shutil.rmtree(out, ignore_errors=True)
    return _figures(measured, stats and {k: stats[k] for k in ("input", "kept", "rejected")})


def _env() -> dict | None:
    return {**os.environ, "PYTHONPATH": str(CODE)} if CODE else None  # Ray's and Spark's workers inherit it


# Two runs in one engine session (a Ray or Spark started once, as a cluster that is up): the
# first from the process's start, as `curate run` (imports, the engine's start-up and first
# workers), the second warm. The local engine has no session to keep: its pool is forked per run.
SESSION_SCRIPT = r"""
import json, sys, time
from contextlib import nullcontext
start = time.perf_counter()
import curate
from curate.engines import make_engine
pipeline, source, out, name, workers = sys.argv[1:6]
engine = make_engine(name, int(workers), progress=False)
seconds, counts = [], []
with nullcontext() if name == "local" else engine.session():
    for run in (1, 2):
        began = start if run == 1 else time.perf_counter()
        stats = curate.run(pipeline, input=source, output=f"{out}-{run}", engine=engine, overwrite=True)
        seconds.append(time.perf_counter() - began)
        counts.append({k: stats[k] for k in ("input", "kept", "rejected")})
        print("SESSION_RUN " + json.dumps({"run": run, "seconds": seconds[-1]}), flush=True)
print("SESSION_RESULT " + json.dumps({"seconds": seconds, "counts": counts}), flush=True)
"""


def run_session(raw: dict, source: Path, engine: str, scratch: Path, timeout: float) -> dict:
    """SESSION_SCRIPT in a subprocess: the figures of its first run (as `curate run`'s, memory
    included), its second run's seconds as `warm_s`; the two runs must keep the same counts."""
    out = ROOT / "out" / "scale" / f"{source.name}-{engine}"
    script = scratch / "session_run.py"
    script.write_text(SESSION_SCRIPT)
    measured = measure([str(CURATE.parent / "python"), str(script), str(pipeline_file(raw, scratch)), str(source),
                        str(out), engine, str(WORKERS)], timeout, _env(), CODE or ROOT, until=b"SESSION_RUN ")
    for run in (1, 2):
        shutil.rmtree(f"{out}-{run}", ignore_errors=True)
    line = next((text for text in measured.output.splitlines() if text.startswith("SESSION_RESULT ")), None)
    result = json.loads(line.split(" ", 1)[1]) if measured.returncode == 0 and line else None
    if result and result["counts"][0] != result["counts"][1]:
        raise SystemExit(f"{engine}: the warm run's counts {result['counts'][1]} differ from the first's")
    if result:
        measured.seconds = result["seconds"][0]
    figures = _figures(measured, result and result["counts"][0])
    figures["warm_s"] = result and result["seconds"][1]
    return figures


def _figures(measured: Measured, counts: dict | None) -> dict:
    figures = asdict(measured)
    figures["output_tail"] = figures.pop("output")[-3000:] if measured.returncode != 0 else ""
    figures["counts"] = counts
    return figures


def probe_features(tiny: Path, scratch: Path) -> tuple[set[str], dict[str, str]]:
    """Which optional entries today's curate runs on metadata: each tried alone after the caption
    stage on the tiny file; the reason (curate's last output line) for each one that fails."""
    features, skipped = set(), {}
    for feature in OPTIONAL:
        raw = pipeline_dict("metadata", {feature})
        if feature != "outputs":
            raw.pop("outputs", None)
        raw["stages"] = [s for s in raw["stages"] if s["stage"] in ("caption", feature)]
        result = run_curate(raw, tiny, "local", scratch, timeout=120, workers=1)
        if result["returncode"] == 0:
            features.add(feature)
        else:
            lines = [text for text in result["output_tail"].splitlines() if text.strip()]
            skipped[feature] = lines[-1] if lines else f"exit code {result['returncode']}"
    return features, skipped


# ---------------------------------------------------------------- DuckDB

DUCKDB_SCRIPT = r"""
import json, math, sys, time
import duckdb
source, out, threads, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
start = time.perf_counter()
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
where = []
if "caption" in steps:  # curate: Python's str.strip() / str.split(); here ASCII spaces and RE2's \s
    where += [f"length(trim(text)) >= {steps['caption']['min_chars']}",
              f"len(string_split_regex(trim(text), '\\s+')) >= {steps['caption']['min_words']}"]
if "size" in steps:
    s = steps["size"]
    where += [f"least(original_width, original_height) >= {s['min_side']}",
              f"greatest(original_width, original_height) <= "
              f"{s['max_aspect_ratio']} * least(original_width, original_height)"]
con.execute(f"CREATE TEMP TABLE kept AS SELECT * FROM read_parquet('{source}/*.parquet') "
            f"WHERE {' AND '.join(where) or 'true'} "
            f"QUALIFY row_number() OVER (PARTITION BY url, text ORDER BY uid) = 1")
n = con.execute("SELECT count(*) FROM kept").fetchone()[0]
condition = "true"
if "top" in steps and n:
    score, k = steps["top"]["column"], math.ceil(steps["top"]["fraction"] * n)
    cut = con.execute(f"SELECT {score} FROM kept ORDER BY {score} DESC LIMIT 1 OFFSET {k - 1}").fetchone()[0]
    condition = f"{score} >= {cut!r}::FLOAT"
con.execute(f"COPY (SELECT * FROM kept WHERE {condition}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
kept = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
print("DUCKDB_RESULT " + json.dumps({"seconds": time.perf_counter() - start, "kept": kept,
                                      "version": duckdb.__version__}))
"""


def run_duckdb(source: Path, features: set[str], scratch: Path, timeout: float) -> dict:
    """The SQL-expressible steps curate ran, on the same files: one process, WORKERS threads."""
    steps = {"caption": {"min_words": MIN_WORDS, "min_chars": MIN_CHARS}}
    if "image_size" in features:
        steps["size"] = {"min_side": MIN_SIDE, "max_aspect_ratio": MAX_ASPECT}
    if "clip_score" in features:
        steps["top"] = {"column": SCORE, "fraction": TOP_FRACTION}
    script = scratch / "duckdb_scale.py"
    script.write_text(DUCKDB_SCRIPT)
    out = scratch / "duckdb-kept.parquet"
    measured = measure([str(DUCKDB_PYTHON), str(script), str(source), str(out), str(WORKERS), json.dumps(steps)],
                       timeout)
    line = next((text for text in measured.output.splitlines() if text.startswith("DUCKDB_RESULT ")), None)
    result = json.loads(line.split(" ", 1)[1]) if measured.returncode == 0 and line else None
    out.unlink(missing_ok=True)
    figures = _figures(measured, result and {"kept": result["kept"]})
    figures["version"] = result and result["version"]
    return figures


# ---------------------------------------------------------------- report


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f}" if n else "-"


def verdict(ok: bool | None) -> str:
    return "n/a " if ok is None else "PASS" if ok else "FAIL"


def print_size(rows: int, tasks: int, results: dict, startup: dict) -> None:
    print(f"\n{rows:,} rows ({tasks} tasks), {WORKERS} workers")
    print("(MiB: peak RSS / peak RSS less shared pages)")
    print(f"{'engine':8} {'wall s':>8} {'warm s':>7} {'rows/s':>10} {'CPU s':>7} {'kept':>10} {'driver MiB':>11} "
          f"{'worker MiB':>11} {'other MiB':>11}  other  {'start-up s':>10}")
    for engine, r in results.items():
        wall = f">{r['seconds']:.0f} T/O" if r["timed_out"] else f"{r['seconds']:.1f}"
        ok = r["returncode"] == 0
        rate = f"{rows / r['seconds']:,.0f}" if ok else ("timed out" if r["timed_out"] else f"exit {r['returncode']}")
        kept = f"{r['counts']['kept']:,}" if r["counts"] else "-"
        up = startup.get(engine)
        memory = [f"{mib(r[f'{kind}_rss'])}/{mib(r.get(f'{kind}_anon', 0))}" for kind in ("driver", "worker", "other")]
        warm = f"{r['warm_s']:.1f}" if r.get("warm_s") else "-"
        print(f"{engine:8} {wall:>8} {warm:>7} {rate:>10} {r['cpu_s']:>7.0f} {kept:>10} {memory[0]:>11} "
              f"{memory[1]:>11} {memory[2]:>11}  {r['other_name'] or '-':6} {f'{up:.1f}' if up else '-':>10}")
    for engine, r in results.items():
        if r.get("worker_name", "python") not in ("", "python"):
            print(f"  {engine}: the largest worker was {r['worker_name']}")
    kept = {engine: r["counts"]["kept"] for engine, r in results.items() if r["counts"]}
    if len(set(kept.values())) > 1:
        print(f"KEPT COUNTS DIFFER: {kept}")


def rate(results: dict, rows: int, engine: str) -> float | None:
    r = results.get(engine)
    return rows / r["seconds"] if r and r["returncode"] == 0 else None


def targets(all_results: dict, images: dict | None) -> list[dict]:
    """The issue's targets, each with its figure and PASS/FAIL (None where a run is missing)."""
    out = []
    sizes = sorted(all_results)
    for rows in sizes:
        res = all_results[rows]
        local, duck = rate(res, rows, "local"), rate(res, rows, "duckdb")
        ratio = local / duck if local and duck else None
        out.append({"target": f"{rows:,} rows: local / DuckDB rows/s >= 0.5", "value": ratio,
                    "pass": None if ratio is None else ratio >= 0.5})
        for engine in ("ray", "spark"):
            e = rate(res, rows, engine)
            cold = local / e if e and local else None
            out.append({"target": f"{rows:,} rows: {engine} / local time <= 1.5 (cold: with start-up)", "value": cold,
                        "pass": None if cold is None else cold <= 1.5})
            if cold is not None and res[engine].get("warm_s") and res["local"].get("warm_s"):
                warm = res[engine]["warm_s"] / res["local"]["warm_s"]
                out.append({"target": f"{rows:,} rows: {engine} / local time <= 1.5 (warm: a second run in the "
                                      "session)", "value": warm, "pass": warm <= 1.5})
    if len(sizes) >= 2:
        small, big = sizes[0], sizes[-1]
        for engine in ("local", "ray", "spark"):  # curate's processes; DuckDB's figure is in the table
            a, b = all_results[small].get(engine), all_results[big].get(engine)
            if not a or not b:
                continue
            for kind in ("driver_rss", "worker_rss", "other_rss", "driver_anon", "worker_anon", "other_anon"):
                if not a.get(kind) or not b.get(kind):
                    continue
                grew = b[kind] / a[kind]
                role, measure_ = kind.split("_")
                name = role + (f" ({b['other_name']})" if role == "other" else "")
                what = "peak RSS" if measure_ == "rss" else "peak RSS less shared pages"
                ok = grew <= 1.15 and b[kind] <= 2 * GIB
                done = b["returncode"] == 0  # an unfinished run's peak is a lower bound: it can fail, not pass
                out.append({"target": f"{engine} {name} {what} {big:,} / {small:,} rows <= 1.15 and <= 2 GiB"
                                      + ("" if done else " (the big run did not finish)"),
                            "value": grew, "rss_big": b[kind], "pass": ok if done else (False if not ok else None)})
    for kind in LIMITS if images else ():
        limit = images[kind]
        value = images["curate_rows_s"] / limit["decode_rows_s"] if images.get("curate_rows_s") else None
        judged = "" if kind == "draft" else " (not the target's: a full decode is more than curate does)"
        out.append({"target": f"{images['rows']:,} image rows: curate / decode-only ({kind}) >= 0.9{judged}",
                    "value": value, "pass": None if value is None else value >= 0.9})
        cpu = limit["cpu_ratio"]
        out.append({"target": f"{images['rows']:,} image rows: decode-only ({kind}) / curate CPU seconds >= 0.9"
                              f"{judged}", "value": cpu, "pass": None if cpu is None else cpu >= 0.9})
    return out


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000],
                        help="metadata sizes (none: only --images)")
    parser.add_argument("--engines", nargs="+", choices=["local", "ray", "spark", "duckdb"],
                        default=["local", "ray", "spark", "duckdb"])
    parser.add_argument("--images", type=int, nargs="?", const=200_000, default=None,
                        help="also the image-bearing variant with this many rows (200k), on the local engine")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds before a run is killed and reported as timed out")
    parser.add_argument("--keep-data", action="store_true", help="keep data/scale (it is reused by the next run)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--code", type=Path, help="run curate from this source tree instead of the installed one, e.g. "
                        "an earlier commit: git archive REV | tar -x -C DIR")
    args = parser.parse_args()
    global CODE
    CODE = args.code and args.code.resolve()
    if not (POOL.parent / "summary.json").exists():
        raise SystemExit(f"no sample pool at {POOL}: run `make pool` first")
    if "duckdb" in args.engines and not DUCKDB_PYTHON.exists():
        raise SystemExit(f"DuckDB venv missing at {DUCKDB_PYTHON}: run `make bench-duckdb` first")
    curate_engines = [e for e in args.engines if e != "duckdb"]
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "workers": WORKERS,
                    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                             cwd=ROOT).stdout.strip(),
                    "code": str(CODE or ROOT), "load_average": os.getloadavg(),
                    "sizes": {}, "startup_s": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp)
            tiny = write_data("metadata", TINY_ROWS)
            features, skipped = probe_features(tiny, scratch)
            raw = pipeline_dict("metadata", features)
            report.update(pipeline=raw, skipped=skipped)
            print(f"pipeline: {' -> '.join(s['stage'] for s in raw['stages'])}"
                  + (f"; outputs {raw['outputs']}" if "outputs" in raw else "; default outputs (parquet + tars)"))
            for feature, reason in skipped.items():
                print(f"  left out, today's curate rejects {OPTIONAL[feature]}: {reason}")
            startup = report["startup_s"]
            for engine in curate_engines:  # each engine's start-up and end: the whole run on 1k rows
                r = run_curate(raw, tiny, engine, scratch, timeout=300)
                if r["returncode"] != 0:
                    raise SystemExit(f"the pipeline fails on {tiny} with --engine {engine}:\n{r['output_tail']}")
                startup[engine] = r["seconds"]
            for rows in args.rows:
                source = write_data("metadata", rows)
                results = {}
                for engine in args.engines:
                    print(f"{rows:,} rows, {engine} ...", flush=True)
                    results[engine] = (run_duckdb(source, features, scratch, args.timeout) if engine == "duckdb"
                                       else run_session(raw, source, engine, scratch, args.timeout))
                    r = results[engine]
                    if r["returncode"] not in (0, None):
                        print(f"  failed (exit {r['returncode']}):\n{r['output_tail']}", flush=True)
                report["sizes"][rows] = {"tasks": tasks_of(source), "results": results}
                print_size(rows, tasks_of(source), results, startup)
            images = None
            if args.images:
                source = write_data("images", args.images)
                image_raw = pipeline_dict("images", features)
                print(f"{args.images:,} image rows, local: {' -> '.join(s['stage'] for s in image_raw['stages'])}, "
                      "default outputs ...", flush=True)
                # the loops run before and after curate, and the faster counts: a shared machine's load
                # moves within minutes; CPU seconds (curate's whole process tree) move less. Two loops:
                # full decodes, and JPEGs at 1/8 scale (as curate's decode does where no stage keeps
                # the pixels: the least work that checks every byte), which the target is judged by
                before = {kind: bench_decode_limit(source, WORKERS, draft) for kind, draft in LIMITS.items()}
                r = run_curate(image_raw, source, "local", scratch, args.timeout)
                images = {"rows": args.images, "tasks": tasks_of(source), "pipeline": image_raw, "curate": r,
                          "curate_rows_s": args.images / r["seconds"] if r["returncode"] == 0 else None}
                for kind, draft in LIMITS.items():
                    decode_s, decoded, decode_cpu = min(before[kind], bench_decode_limit(source, WORKERS, draft))
                    cpu_ratio = decode_cpu / r["cpu_s"] if r["returncode"] == 0 and r["cpu_s"] else None
                    images[kind] = {"decode_s": decode_s, "decode_rows_s": decoded / decode_s,
                                    "decode_cpu_s": decode_cpu, "cpu_ratio": cpu_ratio}
                report["images"] = images
                print(f"\n{args.images:,} image rows ({images['tasks']} tasks), {WORKERS} cores: curate "
                      f"{r['seconds']:.1f} s, {r['cpu_s']:.1f} CPU s ({images['curate_rows_s'] or 0:,.0f} rows/s, "
                      f"kept {r['counts'] and r['counts']['kept']}, driver {mib(r['driver_rss'])} MiB, worker "
                      f"{mib(r['worker_rss'])} MiB)")
                for kind in LIMITS:
                    limit = images[kind]
                    print(f"  decode-only ({kind}) {limit['decode_s']:.1f} s, {limit['decode_cpu_s']:.1f} CPU s "
                          f"({limit['decode_rows_s']:,.0f} rows/s)")
    finally:
        if not args.keep_data:
            shutil.rmtree(DATA, ignore_errors=True)
    report["load_average_after"] = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) before: {report['load_average'][0]:.1f} {report['load_average'][1]:.1f} "
          f"{report['load_average'][2]:.1f}, after: {' '.join(f'{x:.1f}' for x in report['load_average_after'])}")
    report["targets"] = targets({rows: s["results"] for rows, s in report["sizes"].items()}, report.get("images"))
    print("\ntargets (issue 14):")
    for t in report["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.2f}x"
        extra = f" ({mib(t['rss_big'])} MiB)" if "rss_big" in t else ""
        print(f"  {verdict(t['pass'])}  {t['target']}: {value}{extra}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nfigures in {args.json}")


if __name__ == "__main__":
    main()
