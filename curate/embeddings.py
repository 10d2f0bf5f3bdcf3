"""CLIP embeddings computed once: an on-disk store keyed by uid, and the embedder that fills it.

A store is a folder: `meta.json` names the model (a fingerprint of the checkpoint file and
the architecture) and the embedding size; each shard is a pair of files, `NAME.npy`
(float16 rows: the image embedding, then the text embedding, both unit-norm) and
`NAME.parquet` (uid, image and text digests, and the image-text cosine computed in float32
before storage). A shard is named by a hash of what it holds, written atomically, vectors
first and the Parquet last (it commits the shard), so reruns and concurrent workers never
clash: two writers of the same rows write the same file. An entry counts only while its
digests match the sample's image bytes and caption, so a resized image or a rewritten
caption is embedded again. Vectors are read through memory maps, opened per read;
`EmbeddingStore.compact` merges the shards into one.

The global stages on vectors (StoredEmbeddingsStage) carry each row's vector in their fit rows
and cluster them (k-means on a bounded sample, nearest centroid per row), so every decision is
a map or a per-cluster group that the engines distribute.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from curate.images import open_rgb
from curate.io.readers import plan_inputs, read_task
from curate.io.writers import atomic, write_json_atomic
from curate.neighbours import KMeansConfig, kmeans, nearest_centroid
from curate.schema import uid_pairs
from curate.stage import ROW_COLUMN, Dataset, FitContext, GlobalStage, StageConfig, Verdict, map_rows

STORE_VERSION = 1
COPY_ROWS = 65_536  # rows copied out of a shard at once
READ_ATTEMPTS = 3  # a read that finds its shards compacted away re-indexes and tries again
_SHARD_SCHEMA = pa.schema([("uid", pa.string()), ("image_digest", pa.int64()), ("text_digest", pa.int64()),
                           ("clip_score", pa.float32())])


Key = tuple[str, int, int]  # uid, image digest, text digest: what a store entry is looked up by
KEYED_BY_SAMPLE, KEYED_BY_UID = "sample", "uid"  # a store's entries: per (uid, image, caption), or per uid (imported)


def digest(data: bytes | str | None) -> int:
    """A 64-bit content hash (blake2b) of image bytes or a caption, as a signed int."""
    raw = data.encode("utf-8") if isinstance(data, str) else (data or b"")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little", signed=True)


def sample_keys(table: pa.Table) -> list[Key]:
    """Store keys of a batch's rows."""
    images, texts = table["image"].to_pylist(), table["text"].to_pylist()
    return [(uid, digest(i), digest(t)) for uid, i, t in zip(table["uid"].to_pylist(), images, texts)]


def file_fingerprint(path: str | Path, model: str | None) -> str:
    """What identifies a scorer: the sha256 of its weights file and the architecture named with it."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return f"{sha.hexdigest()}:{model or ''}"


@dataclass
class Embedded:
    """Embeddings of a batch's rows: `rows` are the rows that have them (the others are in
    `failures`, with why), and `image`, `text` (float32, unit-norm) and `score` follow `rows`."""

    rows: np.ndarray
    image: np.ndarray
    text: np.ndarray
    score: np.ndarray
    failures: dict[int, str]

    @classmethod
    def none(cls, rows: np.ndarray, failures: dict[int, str]) -> Embedded:
        """No embeddings: nothing was asked, or every image failed."""
        empty = np.zeros((0, 0), np.float32)
        return cls(rows, empty, empty, np.zeros(0, np.float32), failures)


class EmbeddingStore:
    """A folder of float16 CLIP embeddings keyed by uid (see the module docstring).

    A store filled by a scorer is keyed by uid and the digests of the image and the caption
    (`keyed_by` "sample"); one imported from precomputed vectors (`curate embeddings import`:
    DataComp's .npz files) is keyed by uid alone ("uid"), since its vectors describe the source's
    own images whatever bytes a run holds (none, in a metadata run)."""

    def __init__(self, root: str | Path, fingerprint: str, keyed_by: str = KEYED_BY_SAMPLE, index: bool = True):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.keyed_by = keyed_by
        self.indexing = index  # False: a writer that never reads (an importer), so its memory stays one shard's
        self.dim: int | None = None
        self._forget()
        self.refresh()

    @classmethod
    def existing(cls, root: str | Path) -> EmbeddingStore:
        """A store read as it is, whatever filled it (no scorer to check it against or to embed
        what it lacks): an imported one, or a scorer's read back without that scorer."""
        meta_path = Path(root) / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"embedding store {root} has no meta.json: fill it first (`curate embeddings "
                                    "import` of precomputed vectors, or an `embed` stage with a checkpoint)")
        meta = json.loads(meta_path.read_text())
        return cls(root, meta.get("model"), meta.get("keyed_by", KEYED_BY_SAMPLE))

    def keys(self, table: pa.Table) -> list[Key]:
        """The store keys of a batch's rows: (uid, image digest, caption digest), or (uid, 0, 0)
        in a store keyed by uid."""
        if self.keyed_by == KEYED_BY_UID:
            return [(uid, 0, 0) for uid in table["uid"].to_pylist()]
        return sample_keys(table)

    def _forget(self) -> None:
        self._loaded: set[str] = set()  # stems of the live shards indexed
        self._shards: list[Path] = []  # the .npy file of each shard number (a compacted one stays unreferenced)
        self._where: dict[Key, tuple[int, int, float]] = {}  # (uid, image digest, text digest) -> shard, row, score

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    @property
    def shard_count(self) -> int:
        """How many shards this store object has indexed and not compacted away."""
        return len(self._loaded)

    def _check_meta(self) -> None:
        meta = json.loads(self.meta_path.read_text())
        if meta.get("version") != STORE_VERSION or meta.get("model") != self.fingerprint:
            raise ValueError(f"embedding store {self.root} holds embeddings of another model "
                             f"({meta.get('model')}); this stage's scorer is {self.fingerprint}: use another store "
                             "folder")
        if meta.get("keyed_by", KEYED_BY_SAMPLE) != self.keyed_by:
            raise ValueError(f"embedding store {self.root} is keyed by {meta.get('keyed_by', KEYED_BY_SAMPLE)}, "
                             f"expected {self.keyed_by}")
        self.dim = meta["dim"]

    def refresh(self) -> None:
        """Index the shards other workers have committed since the last look."""
        if not self.meta_path.exists():
            return
        if self.dim is None:
            self._check_meta()
        if not self.indexing:
            return
        for path in sorted(self.root.glob("*.parquet")):
            if path.stem not in self._loaded:
                self._index(path)

    def _index(self, path: Path) -> None:
        if not path.with_suffix(".npy").exists():  # compacted away (or half-deleted): its rows are in the merged shard
            return
        try:
            table = pq.read_table(path)
        except FileNotFoundError:
            return
        shard = len(self._shards)
        self._shards.append(path.with_suffix(".npy"))
        rows = zip(table["uid"].to_pylist(), table["image_digest"].to_pylist(), table["text_digest"].to_pylist(),
                   table["clip_score"].to_pylist())
        for row, (uid, image_digest, text_digest, score) in enumerate(rows):
            self._where[(uid, image_digest, text_digest)] = (shard, row, score)
        self._loaded.add(path.stem)

    def __len__(self) -> int:
        return len(self._where)

    def find(self, keys: list[Key]) -> np.ndarray:
        """Which of these samples have an entry (same uid, image and caption)."""
        found = np.array([key in self._where for key in keys], bool)
        if not found.all():
            self.refresh()
            found = np.array([key in self._where for key in keys], bool)
        return found

    def get(self, keys: list[Key]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image and text embeddings (float32, n x dim each) and image-text cosines of stored samples."""
        both, scores = self._read(keys, slice(None))
        return both[:, : self.dim], both[:, self.dim :], scores

    def images(self, keys: list[Key]) -> np.ndarray:
        """Image embeddings only (float32, n x dim): half the memory of `get`."""
        return self._read(keys, slice(0, self.dim))[0]

    def _read(self, keys: list[Key], columns: slice) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(keys), len(range(2 * (self.dim or 0))[columns])), np.float32)
        return out, self._gather(keys, columns, out)

    def _gather(self, keys: list[Key], columns: slice, out: np.ndarray) -> np.ndarray:
        """Copy the stored vectors of `keys` into `out` (row i for key i); returns their cosines."""
        if not self.find(keys).all():
            missing = [key[0] for key in keys if key not in self._where]
            raise KeyError(f"embedding store {self.root}: {len(missing)} sample(s) not embedded (e.g. uids "
                           f"{missing[:3]}); a stage that embeds them must run first with the same store")
        for _ in range(READ_ATTEMPTS - 1):
            try:
                return self._copy(keys, columns, out)
            except FileNotFoundError:  # another process is compacting the store: index it afresh
                self._forget()
                self.refresh()
        return self._copy(keys, columns, out)

    def _copy(self, keys: list[Key], columns: slice, out: np.ndarray) -> np.ndarray:
        entries = [self._where[key] for key in keys]
        shards = np.array([e[0] for e in entries], np.int64)
        rows = np.array([e[1] for e in entries], np.int64)
        for shard in np.unique(shards):
            # mapped per read, not held open: a store can have more shards than a process may open files
            vectors = np.load(self._shards[shard], mmap_mode="r")
            at = np.flatnonzero(shards == shard)
            for start in range(0, len(at), COPY_ROWS):  # in chunks: a compacted shard is the whole store
                chunk = at[start : start + COPY_ROWS]
                out[chunk] = vectors[rows[chunk], columns]
        return np.array([e[2] for e in entries], np.float32)

    def put(self, keys: list[Key], image: np.ndarray, text: np.ndarray, scores: np.ndarray) -> None:
        """Commit embeddings of new samples as one shard."""
        if not keys:
            return
        if self.dim is None:
            self.root.mkdir(parents=True, exist_ok=True)
            if not self.meta_path.exists():
                write_json_atomic({"version": STORE_VERSION, "model": self.fingerprint, "dim": int(image.shape[1]),
                                   "keyed_by": self.keyed_by}, self.meta_path)
            self._check_meta()
        vectors = np.ascontiguousarray(np.concatenate([image, text], axis=1).astype(np.float16))

        def save(tmp: Path) -> np.ndarray:
            with open(tmp, "wb") as handle:
                np.save(handle, vectors)
            return np.asarray(scores, np.float32)

        self._commit(keys, save)

    def _commit(self, keys: list[Key], write_vectors) -> Path:
        """Write a shard: `write_vectors(tmp_path)` writes the .npy rows of `keys` and returns their
        cosines; the Parquet, written last, commits it. Returns the shard's .npy path."""
        uids, image_digests, text_digests = (list(column) for column in zip(*keys))
        name = hashlib.sha256(json.dumps([uids, image_digests, text_digests]).encode()).hexdigest()[:32]
        path = self.root / f"{name}.parquet"
        with atomic(path.with_suffix(".npy")) as tmp:
            scores = write_vectors(tmp)
        table = pa.Table.from_arrays([pa.array(uids, pa.string()), pa.array(image_digests, pa.int64()),
                                      pa.array(text_digests, pa.int64()), pa.array(scores, pa.float32())],
                                     schema=_SHARD_SCHEMA)
        with atomic(path) as tmp:
            pq.write_table(table, tmp)
        if self.indexing and path.stem not in self._loaded:
            self._index(path)
        return path.with_suffix(".npy")

    def compact(self, at_least: int = 64) -> bool:
        """Merge every shard into one when the store has at least `at_least` (there is one per
        batch otherwise: many small files to list and open). Copies shard by shard, so memory
        stays at one shard's size. Readers elsewhere re-index when a shard they knew is gone; a
        shard committed meanwhile is left as it is. Returns whether it merged."""
        self.refresh()
        if self.shard_count < at_least:
            return False
        keys = sorted(self._where)
        old = list(self._shards)

        def merge(tmp: Path) -> np.ndarray:
            merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(keys), 2 * self.dim))
            scores = self._gather(keys, slice(None), merged)
            merged.flush()
            return scores

        kept = self._commit(keys, merge)  # indexes the merged shard: every key now points at it
        orphans = [p.with_suffix(".npy") for p in self.root.glob("*.parquet") if not p.with_suffix(".npy").exists()]
        removed = {npy for npy in old + orphans if npy != kept}
        for npy in removed:
            npy.with_suffix(".parquet").unlink(missing_ok=True)  # the Parquet first: it commits a shard
            npy.unlink(missing_ok=True)
        self._loaded -= {npy.stem for npy in removed}
        return True


class ClipEmbedder:
    """A CLIP scorer that embeds images and captions in batches; the model loads on first use,
    on the GPU when torch sees one. `images_embedded` counts the images it has encoded."""

    _shared: dict[tuple, ClipEmbedder] = {}

    def __init__(self, checkpoint: str, model: str | None = None, batch_size: int = 64):
        self.checkpoint, self.model_name, self.batch_size = checkpoint, model, batch_size
        self.fingerprint = file_fingerprint(checkpoint, model)
        self.images_embedded = 0
        self._clip = None

    @classmethod
    def shared(cls, checkpoint: str, model: str | None = None, batch_size: int = 64) -> ClipEmbedder:
        """One embedder per scorer in a worker process, whichever stages use it."""
        key = (str(checkpoint), model, batch_size)
        if key not in cls._shared:
            cls._shared[key] = cls(str(checkpoint), model, batch_size)
        return cls._shared[key]

    def _load(self):
        import torch

        from curate.models.clip import load_checkpoint

        if self._clip is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self._clip, _ = load_checkpoint(self.checkpoint, self.model_name, device=self.device)
            self._clip.model.eval()
        return self._clip

    def _preprocess(self, data: bytes):
        return self._clip.preprocess(open_rgb(data))

    def embed(self, images: list[bytes | None], texts: list[str | None]) -> Embedded:
        """Unit-norm image and text embeddings and their cosine; undecodable images are failures."""
        import torch

        if not images:  # every row of the batch is stored already: no model to load
            return Embedded.none(np.zeros(0, np.int64), {})
        clip = self._load()
        tensors, failures = map_rows(images, self._preprocess)
        rows = np.array([i for i in range(len(images)) if i not in failures], np.int64)
        image_out, text_out = [], []
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                image_batch = torch.stack([tensors[i] for i in chunk]).to(self.device)
                text_batch = clip.tokenizer([texts[i] or "" for i in chunk]).to(self.device)
                image_out.append(self._encode(clip.model.encode_image, image_batch))
                text_out.append(self._encode(clip.model.encode_text, text_batch))
                self.images_embedded += len(chunk)
        if not image_out:
            return Embedded.none(rows, failures)
        image, text = np.concatenate(image_out), np.concatenate(text_out)
        return Embedded(rows, image, text, (image * text).sum(1, dtype=np.float32), failures)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings (float32, n x dim) of captions alone (e.g. synthetic ones)."""
        import torch

        clip = self._load()
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = clip.tokenizer(texts[start : start + self.batch_size]).to(self.device)
                out.append(self._encode(clip.model.encode_text, tokens))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    @staticmethod
    def _encode(encoder, batch) -> np.ndarray:
        import torch

        return torch.nn.functional.normalize(encoder(batch).float(), dim=-1).cpu().numpy()


class EmbeddingConfig(StageConfig):
    """Where a stage's embeddings come from: the scorer, and the store that keeps them; without a
    scorer, the store alone (vectors imported by `curate embeddings import`, e.g. DataComp's)."""

    checkpoint: str | None = Field(None, description="a CLIP checkpoint from `curate train clip`, or an open_clip "
                                                     "weights file; null: read the store only (imported vectors)")
    model: str | None = Field(None, description="open_clip architecture of a plain open_clip weights file")
    store: str | None = Field(None, description="embedding store folder: embeddings computed once, reused by later "
                                                "stages")
    batch_size: int = Field(64, gt=0, description="images per model call")

    def embedding_reads(self) -> list[tuple[str, ...]]:
        """What the embeddings need: a scorer reads the image and caption; a store read without
        one, the uid alone (so a metadata run, with no image bytes, works from imported vectors)."""
        return [("uid", "image", "text")] if self.checkpoint else [("uid",)]

    def check_source(self) -> None:
        """Raise unless the config names a scorer or a store to read."""
        if self.checkpoint is None and self.store is None:
            raise ValueError("set checkpoint (a scorer), store (vectors imported by `curate embeddings import`), "
                             "or both")

    def written_paths(self) -> list[str]:
        return [self.store] if self.store and self.checkpoint else []


class StoredEmbeddingConfig(EmbeddingConfig):
    """An embedding config whose store is required: stages that read vectors back from it."""

    store: str = Field(..., description="embedding store folder, shared by embed, clip_score and the stages that "
                                        "read vectors from it")

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """uid, image and caption with a scorer; uid alone from a store without one."""
        return self.embedding_reads()


class Embeddings:
    """A stage's access to embeddings: stored ones are read, missing ones computed and stored
    (without a scorer, missing ones are failures)."""

    def __init__(self, config: EmbeddingConfig):
        config.check_source()
        if config.checkpoint is None:
            self.embedder = None
            self.store = EmbeddingStore.existing(config.store)
            return
        self.embedder = ClipEmbedder.shared(config.checkpoint, config.model, config.batch_size)
        self.store = EmbeddingStore(config.store, self.embedder.fingerprint) if config.store else None

    def for_table(self, table: pa.Table) -> Embedded:
        """Embeddings of a batch's rows; only those not in the store reach the model."""
        if self.embedder is None:
            return self._stored_only(table)
        keys = sample_keys(table)
        found = self.store.find(keys) if self.store is not None else np.zeros(len(keys), bool)
        todo = np.flatnonzero(~found)
        images, texts = table["image"].to_pylist(), table["text"].to_pylist()
        fresh = self.embedder.embed([images[i] for i in todo], [texts[i] for i in todo])
        failures = {int(todo[i]): message for i, message in fresh.failures.items()}
        if self.store is None:  # vectors as a store would give them back
            as_stored = [v.astype(np.float16).astype(np.float32) for v in (fresh.image, fresh.text)]
            return Embedded(todo[fresh.rows], *as_stored, fresh.score, failures)
        self.store.put([keys[i] for i in todo[fresh.rows]], fresh.image, fresh.text, fresh.score)
        rows = np.array([i for i in range(len(keys)) if i not in failures], np.int64)
        return Embedded(rows, *self.store.get([keys[i] for i in rows]), failures)

    def _stored_only(self, table: pa.Table) -> Embedded:
        """The stored rows of a batch; a row the store lacks is a failure (there is no scorer)."""
        keys = self.store.keys(table)
        found = self.store.find(keys)
        rows = np.flatnonzero(found)
        failures = {int(i): f"not in embedding store {self.store.root} (no checkpoint to embed it)"
                    for i in np.flatnonzero(~found)}
        if not len(rows):
            return Embedded.none(rows, failures)
        return Embedded(rows, *self.store.get([keys[i] for i in rows]), failures)


def embed_paths(paths: list[str], embeddings: Embeddings, batch_size: int = 256) -> tuple[list[str], np.ndarray]:
    """Image embeddings of every decodable image in data sets given by path (an eval split, a
    target set); returns their uids and vectors (n x dim)."""
    uids, vectors = [], []
    for task in plan_inputs(paths):
        for verdict in read_task(task, batch_size):
            embedded = embeddings.for_table(verdict.table)
            uids += [verdict.table["uid"][int(i)].as_py() for i in embedded.rows]
            vectors.append(embedded.image)
    vectors = [v for v in vectors if len(v)]
    return uids, (np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32))


# a fit row's image embedding: its float16 bytes (binary: Spark reads it, half a list<float>)
VECTOR_COLUMN = "image_vector"
CLUSTER_COLUMN = "cluster"  # a fit row's nearest centroid, the key of the per-cluster decisions
SAMPLE_SIGMAS = 6.0  # room in the k-means sample's hash bound, in standard deviations of the count under it
_HASH_COLUMN = "_hash"


def vector_column(vectors: np.ndarray) -> pa.Array:
    """Vectors (n x dim) as a binary column of their float16 bytes, one value per row."""
    data = np.ascontiguousarray(vectors, np.float16)
    width = 2 * data.shape[1] if data.ndim == 2 else 0
    offsets = np.arange(len(data) + 1, dtype=np.int64) * width
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{len(data)} vectors of {width} bytes exceed one binary column's 2 GiB: use smaller batches")
    return pa.Array.from_buffers(pa.binary(), len(data), [None, pa.py_buffer(offsets.astype(np.int32)),
                                                          pa.py_buffer(data)])


def column_vectors(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The vectors (float32, n x dim) of a column made by `vector_column` (binary or large_binary, any chunks)."""
    parts = []
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if not len(chunk):
            continue
        offsets = np.frombuffer(chunk.buffers()[1], np.int64 if pa.types.is_large_binary(chunk.type) else np.int32)
        offsets = offsets[chunk.offset : chunk.offset + len(chunk) + 1]
        widths = np.diff(offsets)
        if chunk.null_count or widths[0] % 2 or widths[0] == 0 or (widths != widths[0]).any():
            raise ValueError(f"{VECTOR_COLUMN}: expected non-null float16 vectors of one size, got values of "
                             f"{sorted(set(widths.tolist()))[:5]} bytes ({chunk.null_count} null)")
        data = np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        parts.append(data.view(np.float16).reshape(len(chunk), -1))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 that spreads nearby inputs uniformly."""
    x = values.astype(np.uint64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uid_hash(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A uniform 64-bit hash (uint64) of each uid, a function of the uid alone (its DataComp uid
    pair, mixed): sequential uids spread like random ones."""
    pairs = uid_pairs(uids)
    return _mix(pairs["f0"] ^ _mix(pairs["f1"]))


def sample_cutoff(rows: int, size: int, attempt: int) -> int | None:
    """A bound under which about `size` of `rows` uniform 64-bit hashes fall, with SAMPLE_SIGMAS
    standard deviations of room, doubled per `attempt`; None when the sample is every row."""
    expected = (size + SAMPLE_SIGMAS * math.sqrt(size)) * 2**attempt
    return None if expected >= rows else int(expected / rows * 2**64)


def _smallest(size: int, table: pa.Table) -> pa.Table:
    return table.sort_by([(_HASH_COLUMN, "ascending"), ("uid", "ascending")]).slice(0, size)


def sample_partial(size: int, cutoff: int | None, table: pa.Table) -> pa.Table:
    """A batch's fit rows (uid, vector) whose uid hash is under `cutoff` (None: any), at most the
    `size` smallest, with their hash."""
    hashes = uid_hash(table.column("uid"))
    keep = np.arange(len(hashes)) if cutoff is None else np.flatnonzero(hashes < np.uint64(cutoff))
    rows = table.select(["uid", VECTOR_COLUMN]).take(pa.array(keep, pa.int64()))
    return _smallest(size, rows.append_column(_HASH_COLUMN, pa.array(hashes[keep], pa.uint64())))


def sample_merge(size: int, parts: list[pa.Table | None]) -> pa.Table | None:
    """The `size` rows with the smallest hashes of partial samples (None when there are none)."""
    parts = [p for p in parts if p is not None]
    return _smallest(size, pa.concat_tables(parts)) if parts else None


def with_clusters(centroids: np.ndarray | None, table: pa.Table) -> pa.Table:
    """Fit rows with the nearest centroid of each (FAISS), or all in cluster 0 without centroids."""
    clusters = (np.zeros(table.num_rows, np.int64) if centroids is None
                else nearest_centroid(column_vectors(table.column(VECTOR_COLUMN)), centroids))
    return table.append_column(CLUSTER_COLUMN, pa.array(clusters, pa.int64()))


def cluster_runs(table: pa.Table) -> tuple[pa.Table, list[tuple[int, int]]]:
    """A partition's fit rows sorted by cluster, then uid (so a decision does not depend on how
    the rows arrived), and the [start, end) rows of each cluster."""
    table = table.sort_by([(CLUSTER_COLUMN, "ascending"), ("uid", "ascending")])
    clusters = table.column(CLUSTER_COLUMN).to_numpy()
    starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]]) if len(clusters) else np.zeros(0, np.int64)
    return table, list(zip(starts.tolist(), np.r_[starts[1:], len(clusters)].tolist()))


class StoredEmbeddingsStage(GlobalStage):
    """A global stage that decides on image embeddings, clustered.

    Fit pass: `process` makes sure every row is in the store; its fit rows are uid, clip_score
    (NaN where no earlier stage wrote one), the image vector read back from the store (float16
    bytes in VECTOR_COLUMN) and _row. Fit: spherical k-means on a bounded uniform sample, on the
    driver (`fit_centroids`); every row's nearest centroid in a map (`with_clusters`); then a
    decision per cluster in the engine's group, or per row in a map. The operations ship module
    functions with the centroids and the config, never the stage or its model; the driver opens
    the store only to embed something itself (the image-based filter's target set). A subclass's
    config is a KMeansConfig."""

    reads = ("uid", "image", "text")
    reasons: ClassVar[tuple[str, ...]] = ("unembeddable_image",)
    uses_model = True
    _embeddings: Embeddings | None = None

    @property
    def embeddings(self) -> Embeddings:
        """The stage's embedder and store, made on first use (in workers by `setup`)."""
        if self._embeddings is None:
            self._embeddings = Embeddings(self.config)
        return self._embeddings

    def setup(self) -> None:
        self.embeddings  # noqa: B018 - opens the store and shares the worker's embedder

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        for i, message in self.embeddings.for_table(table).failures.items():
            verdict.reject(i, "unembeddable_image", message)
        return verdict

    def fit_rows(self, table: pa.Table) -> pa.Table:
        """uid, clip_score, the stored image vector and _row of each row `process` kept (and stored)."""
        if "clip_score" in table.column_names:
            scores = pc.fill_null(pc.cast(table.column("clip_score"), pa.float32()), math.nan)
        else:
            scores = pa.array(np.full(table.num_rows, math.nan, np.float32))
        store = self.embeddings.store
        vectors = store.images(store.keys(table)) if table.num_rows else np.zeros((0, 0), np.float32)
        return pa.table({"uid": table.column("uid"), "clip_score": scores, VECTOR_COLUMN: vector_column(vectors),
                         ROW_COLUMN: table.column(ROW_COLUMN)})

    def sample(self, data: Dataset, context: FitContext, size: int) -> pa.Table:
        """The fit rows (uid, vector) with the `size` smallest uid hashes, sorted by uid: a uniform
        sample, the same however the rows are partitioned. Batches send only rows under a hash
        bound set for about `size` rows in all (doubled on the rare pass that finds fewer), so the
        driver holds one sample, not one per batch. `data` must have rows."""
        for attempt in itertools.count():
            cutoff = sample_cutoff(data.rows, size, attempt)
            found = context.aggregate(data, partial(sample_partial, size, cutoff), partial(sample_merge, size))
            if cutoff is None or (found is not None and found.num_rows >= size):
                return found.sort_by("uid")

    def fit_centroids(self, data: Dataset, context: FitContext, clusters: int,
                      spherical: bool = True) -> tuple[np.ndarray, int]:
        """Centroids of k-means (seeded, one thread; spherical: unit-norm centroids, else L2) with
        `clusters` clusters (fewer if the sample is smaller), fitted on the driver on the `sample`
        of `config.sample_rows(clusters)` rows; and the sample's size."""
        config: KMeansConfig = self.config
        sample = self.sample(data, context, config.sample_rows(clusters))
        vectors = column_vectors(sample.column(VECTOR_COLUMN))
        centroids, _ = kmeans(vectors, clusters, config.seed, config.niter, spherical)
        return centroids, sample.num_rows

    def fit_stats(self, state: dict) -> dict:
        """How many clusters the fit made and how many rows k-means saw."""
        if "clusters" not in state:
            return {}
        return {"kind": "embedding_clusters", "clusters": state["clusters"], "sample_rows": state["sample_rows"]}
