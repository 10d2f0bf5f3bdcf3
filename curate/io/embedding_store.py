"""The embedding store: CLIP embeddings computed once, in an on-disk folder keyed by uid.

A store is a folder: `meta.json` names the model (a fingerprint of the checkpoint file and
the architecture) and the embedding size; each shard is a pair of files, `NAME.npy`
(float16 rows: the image embedding, then the text embedding, both unit-norm) and
`NAME.parquet` (uid, image and text digests, and the image-text cosine computed in float32
before storage). A shard is named by a hash of what it holds, written atomically, vectors
first and the Parquet last (it commits the shard), so reruns and concurrent workers never
clash: two writers of the same rows write the same file. An entry counts only while its
digests match the sample's image bytes and caption, so a resized image or a rewritten
caption is embedded again. Vectors are read through memory maps, opened per read;
`EmbeddingStore.compact` merges the shards into one. The embedder that fills it is
curate.models.embedder; the stages' access to both is curate.stages.embeddings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.io.writers import atomic, write_json_atomic

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
