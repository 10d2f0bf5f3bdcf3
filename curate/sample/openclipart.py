"""The sample pool: Debian's openclipart-svg drawings rendered to JPEG, with captions as found.

Each SVG becomes a sample whose caption is its Dublin Core title followed by its
description (both as written by the artist: empty, terse or not in English is real
noise the filters must face), with the keywords, category folder and declared language
kept as columns. A hash of the file's path puts about `eval_percent`% of the drawings in
a held-out `eval` split that never enters the pool.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from curate.io.writers import write_json_atomic
from curate.schema import make_uid

DEFAULT_SOURCE = Path("/usr/share/openclipart/svg")
NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "cc": "http://web.resource.org/cc/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
POOL_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("image", pa.binary()),
        ("category", pa.string()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("keywords", pa.list_(pa.string())),
        ("source_language", pa.string()),
    ]
)


@dataclass(frozen=True)
class RenderJob:
    path: str
    category: str
    max_side: int


def read_metadata(svg: Path) -> dict:
    """Title, description, keywords and language from the SVG's RDF metadata ('' when absent)."""
    root = ET.parse(svg).getroot()
    work = root.find(".//cc:Work", NS)
    scope = work if work is not None else root

    def text(tag: str) -> str:
        node = scope.find(tag, NS)
        return " ".join((node.text or "").split()) if node is not None else ""

    keywords = [" ".join((li.text or "").split()) for li in scope.findall("dc:subject//rdf:li", NS)]
    return {
        "title": text("dc:title"),
        "description": text("dc:description"),
        "keywords": [k for k in keywords if k],
        "source_language": text("dc:language"),
    }


def render(svg: Path, max_side: int) -> bytes:
    """Rasterize an SVG with cairosvg at its natural size (longer side capped at max_side), on white, as JPEG."""
    import cairosvg
    from PIL import Image

    # a cheap render at 1/16 scale tells the natural size, so huge drawings are rasterized small
    with Image.open(io.BytesIO(cairosvg.svg2png(url=str(svg), scale=1 / 16))) as probe:
        natural_long_side = 16 * max(probe.size)
    scale = min(1.0, max_side / natural_long_side) if natural_long_side else 1.0
    png = cairosvg.svg2png(url=str(svg), scale=scale)
    with Image.open(io.BytesIO(png)) as im:
        im = im.convert("RGBA")
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.LANCZOS)
        canvas = Image.new("RGB", im.size, "white")
        canvas.paste(im, mask=im.getchannel("A"))
        out = io.BytesIO()
        canvas.save(out, format="JPEG", quality=90)
    return out.getvalue()


def _render_one(job: RenderJob) -> dict:
    path = Path(job.path)
    try:
        meta = read_metadata(path)
        image = render(path, job.max_side)
    except Exception as exc:  # noqa: BLE001 - one bad drawing must not stop the pool build
        return {"path": job.path, "error": f"{type(exc).__name__}: {exc}"[:300]}
    description = meta["description"] if meta["description"] != meta["title"] else ""
    caption = " ".join(p for p in (meta["title"], description) if p)
    url = path.absolute().as_uri()  # as found: a symlinked copy is its own sample (a real duplicate)
    return {
        "uid": make_uid(url, caption),
        "url": url,
        "text": caption,
        "image": image,
        "category": job.category,
        **meta,
    }


def split_of(relative_path: str, eval_percent: int) -> str:
    """'eval' for about eval_percent% of drawings, chosen by a hash of their path, else 'pool'."""
    bucket = int(hashlib.sha1(relative_path.encode()).hexdigest()[:8], 16) % 100
    return "eval" if bucket < eval_percent else "pool"


def build_pool(out: Path, source: Path = DEFAULT_SOURCE, workers: int | None = None, limit: int | None = None,
               eval_percent: int = 10, max_side: int = 512, rows_per_file: int = 1000,
               rows_per_group: int = 250, progress: bool = True) -> dict:
    """Render the drawings under `source` into `out/pool` and `out/eval` Parquet files.

    `limit` takes an evenly spread subset (every k-th drawing in path order), for tests.
    Returns a summary (also written to out/summary.json), including render failures.
    """
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no SVG folder; install Debian's openclipart-svg "
                                "(apt-get install openclipart-svg)")
    svgs = sorted(p for p in source.rglob("*.svg") if p.is_file())
    if limit is not None and limit < len(svgs):
        step = len(svgs) / limit
        svgs = [svgs[int(i * step)] for i in range(limit)]
    jobs = [RenderJob(str(p), p.relative_to(source).parts[0] if len(p.relative_to(source).parts) > 1 else "", max_side)
            for p in svgs]
    rows: dict[str, list[dict]] = {"pool": [], "eval": []}
    failures = []
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        results = pool.imap(_render_one, jobs, chunksize=8)
        for job, row in tqdm(zip(jobs, results), total=len(jobs), desc="rendering", unit="svg", disable=not progress):
            if "error" in row:
                failures.append(row)
            else:
                rows[split_of(str(Path(job.path).relative_to(source)), eval_percent)].append(row)
    for split, split_rows in rows.items():
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.parquet"):
            old.unlink()
        for n, start in enumerate(range(0, len(split_rows), rows_per_file)):
            table = pa.Table.from_pylist(split_rows[start : start + rows_per_file], schema=POOL_SCHEMA)
            pq.write_table(table, folder / f"part-{n:05d}.parquet", row_group_size=rows_per_group)
    summary = {
        "source": str(source), "svgs": len(jobs), "rendered": len(jobs) - len(failures),
        "failed": len(failures), "pool": len(rows["pool"]), "eval": len(rows["eval"]),
        "eval_percent": eval_percent, "max_side": max_side, "failures": failures,
    }
    write_json_atomic(summary, out / "summary.json")
    return summary

