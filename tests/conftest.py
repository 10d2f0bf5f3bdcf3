"""Shared fixtures: a small real pool rendered from openclipart-svg, and real faulty images."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.sample.openclipart import DEFAULT_SOURCE, build_pool
from tests.copydetect_fixtures import (  # noqa: F401 - fixtures, registered by their import here
    calibrated_copydetect,
    copydetect_checkpoint,
)
from tests.report_fixtures import report_input, report_run  # noqa: F401 - fixtures, registered by their import here

POOL_LIMIT = 160


@pytest.fixture(scope="session")
def pool_root(tmp_path_factory) -> Path:
    """A real pool: POOL_LIMIT drawings rendered by the project's builder, in several tasks."""
    if not DEFAULT_SOURCE.is_dir():
        pytest.fail(f"{DEFAULT_SOURCE} missing: run `make test` (it installs openclipart-svg)")
    out = tmp_path_factory.mktemp("openclipart")
    build_pool(out, limit=POOL_LIMIT, rows_per_file=80, rows_per_group=40, progress=False)
    return out


@pytest.fixture(scope="session")
def pool_table(pool_root) -> pa.Table:
    """The pool split as one table."""
    return pa.concat_tables(pq.read_table(p) for p in sorted((pool_root / "pool").glob("*.parquet")))


@pytest.fixture(scope="session")
def real_jpeg(pool_table) -> bytes:
    """One real rendered pool image."""
    return pool_table.column("image")[0].as_py()


@pytest.fixture(scope="session")
def fault_images(real_jpeg) -> dict[str, bytes | None]:
    """One real example of each image fault class, keyed by the reason decode must give."""
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")  # 144 Mpx in a few kB
    png = io.BytesIO()
    Image.open(io.BytesIO(real_jpeg)).save(png, format="PNG")
    return {
        "missing_image": None,
        "empty_image": b"",
        "corrupt_image": b"<html><body>404 Not Found</body></html>",
        "truncated_image": real_jpeg[: len(real_jpeg) // 2],
        "decompression_bomb": bomb.getvalue(),
        "truncated_png": png.getvalue()[: len(png.getvalue()) * 2 // 3],
    }


@pytest.fixture()
def faulty_input(tmp_path, pool_table, fault_images) -> Path:
    """A Parquet input: the real pool plus one row per fault class (and an empty caption)."""
    faults = [
        {"uid": f"{i:032x}", "url": f"http://example.test/{reason}", "text": f"a drawing with a {reason} fault",
         "image": data}
        for i, (reason, data) in enumerate(fault_images.items(), start=1)
    ]
    faults.append({"uid": f"{99:032x}", "url": "http://example.test/blank", "text": "   ",
                   "image": pool_table.column("image")[1].as_py()})
    biggest = max(pool_table.column("image").to_pylist(), key=len)
    # an exact duplicate pair that passes every filter
    faults += [{"uid": f"{k:032x}", "url": f"http://example.test/copy{k}",
                "text": "a colourful drawing of a friendly cat", "image": biggest} for k in (100, 101)]
    base = pool_table.select(["uid", "url", "text", "image", "category"])
    extra = pa.Table.from_pylist([{**f, "category": "faults"} for f in faults], schema=base.schema)
    folder = tmp_path / "input"
    folder.mkdir()
    pq.write_table(base, folder / "a.parquet", row_group_size=40)
    pq.write_table(extra, folder / "b.parquet")
    return folder


@pytest.fixture(scope="session")
def image_server(pool_table):
    """A real HTTP server on 127.0.0.1: pool images at /img/N.jpg and a fault on every other path."""
    from tests.http_faults import serve

    url, httpd = serve(pool_table.column("image").to_pylist()[:5])
    yield url
    httpd.shutdown()


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory):
    """A clip-tiny checkpoint in the trainer's format (random weights, fixed seed)."""
    import torch

    from curate.models.clip import create_clip, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("scorer") / "last.pt"
    save_checkpoint(path, create_clip("clip-tiny"))
    return path


@pytest.fixture(scope="session")
def llava_checkpoint(tmp_path_factory, pool_table):
    """A tiny LLaVA captioner in the trainer's format: clip-tiny vision, a 2-layer Llama and a BPE
    trained on the pool's captions (random weights, fixed seed)."""
    import torch

    from curate.models.llava.config import LlavaModelConfig
    from curate.models.llava.model import save_checkpoint
    from train.llava.build import build_llava, build_tiny_lm

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("captioner")
    config = LlavaModelConfig(vision="clip-tiny", lm_config="llava-lm-tiny", vocab_size=512, max_grid=1,
                              pixel_shuffle=2)
    lm = build_tiny_lm(config.lm_config, pool_table.column("text").to_pylist(), config.vocab_size, config.max_grid,
                       root / "lm")
    save_checkpoint(root / "last.pt", build_llava(config, lm))
    return root / "last.pt"


@pytest.fixture(scope="session")
def concept_metadata(tmp_path_factory, pool_table) -> Path:
    """A concept metadata file (MetaCLIP style) from the pool captions' frequent uni- and bigrams."""
    from curate.metadata import build_metadata, corpus_ngrams, write_metadata

    unigrams, bigrams = corpus_ngrams(pool_table.column("text").to_pylist(), 2, 2, 4.0)
    path = tmp_path_factory.mktemp("metadata") / "metadata.parquet"
    write_metadata(build_metadata({"corpus_unigram": unigrams, "corpus_bigram": bigrams}), path)
    return path


@pytest.fixture(scope="session")
def embedding_checkpoint(tmp_path_factory):
    """A clip-tiny checkpoint (random weights) whose image embeddings vary from drawing to drawing.

    A randomly initialised ViT's output is dominated by its input-independent class and
    position embeddings: every pool image comes out at cosine ~1 to every other. With those
    two zeroed the embedding is a random function of the bag of image patches: median cosine
    between distinct pool drawings ~0.94, re-encoded copies >= 0.995. It does not separate
    every pair (mostly-white drawings stay close), so tests compare stages against brute force
    on its vectors rather than against what a trained scorer would call a duplicate."""
    import torch

    from curate.models.clip import create_clip, save_checkpoint

    torch.manual_seed(0)
    clip = create_clip("clip-tiny")
    with torch.no_grad():
        clip.model.visual.class_embedding.zero_()
        clip.model.visual.positional_embedding.zero_()
    path = tmp_path_factory.mktemp("embedder") / "last.pt"
    save_checkpoint(path, clip)
    return path
