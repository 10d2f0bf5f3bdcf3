"""Near-duplicate dedup stage: copies of one image (re-encoded, cropped, recoloured, bordered,
mirrored...) grouped into connected components by the engine's shuffles; each component keeps
its smallest uid. Three methods (`method`):

- `phash`: one 64-bit pHash (imagehash) of the image, within a Hamming `radius` (default 4). The
  default without a descriptor checkpoint.
- `hashes`: a 192-bit code, pHash, dHash and wavelet hash of the image normalised against the
  edits a copy survives (`copy_hashes`: frame trimmed, grey, auto-contrast, mirrored to put more
  ink on the left), within a `radius` of the three Hamming distances summed (default 8: on
  bench/copies.py's planted copies it finds 56% of them where pHash at 4 finds 41%, and merges
  2.7% of distinct drawings where pHash merges 8.7%).
- `descriptor`: a learned copy descriptor (`curate train copydetect`, curate/models/copydetect.py),
  image cosine >= `threshold` (default: the one calibrated when the checkpoint was trained). The
  default when a `checkpoint` is given.

The hash methods search exactly within the radius over narrow rows (uid, node, code words, _row)
and no process holds the pool's codes:

1. Identical codes meet (group by node: the pHash itself, or a 64-bit digest of a longer code):
   each distinct code is one graph node carrying its smallest uid, and emits its pigeonhole chunk
   keys: the code's bits cut into radius+1 chunks (more where a chunk would pass 32 bits) of
   bits // chunks bits each (key = chunk index << 32 | chunk value). Two codes within `radius`
   bits agree on at least one whole chunk, so they share a bucket: no pair is missed.
2. Buckets meet (group by key): every pair of a bucket is verified, the summed popcount of
   a ^ b <= radius, in blocks of about TILE x TILE (small buckets many at a time, padded to a
   power of two; big ones in tiles: memory does not grow with the bucket). The verified pairs
   of a partition are reduced to a spanning forest (one star per local component, rooted at its
   smallest uid), so a partition emits at most one edge per node however dense its buckets.
3. Connected components by min-label propagation over those edges: a node's label starts as
   its own uid; each round (a group by node) a node takes the smallest label among its own and
   the messages sent to it, and a node whose label fell sends the new one to its neighbours.
   Rounds stop when none was sent: about the diameter of the largest component, plus one.
4. A node whose label is not its own uid names the component's kept uid; a last group by node
   over the fit rows and those names rejects every sample but the component's smallest uid, as
   `near_duplicate` with the kept uid as value.

The descriptor method carries each row's descriptor (float16 bytes) in its fit rows and searches
like `embed_dedup`: a pool of up to `cluster_rows` rows is one cluster, searched whole (FAISS,
exact: each vector's `neighbours` nearest at or above the threshold); a larger one is cut by
spherical k-means on a bounded sample, and a pair whose images fall in two clusters is not found
(what it gives up for memory bounded by the largest cluster). Components are those of the pairs
inside each cluster.

Keep rule: connected components, as NeMo Curator and Data-Juicer do. A chain a~b~c merges a and
c even when they are more than the radius apart. It depends only on the codes (or descriptors)
and uids, never on the engine, the workers or the partitioning. A digest collision (two codes,
one node) would merge two images: about n^2 / 2^65 expected pairs, 3e-6 at 10M images.

Cost: a chunk of c bits has 2^c values, so on uniform codes a bucket holds pool / 2^c images,
and each bucket's pairs are all verified. pHash at radius 4 (12-bit chunks, 5 buckets an image)
puts ~2.4k images of a 10M pool in a bucket: ~3M pairs a bucket; the 192-bit code at radius 8
cuts 9 chunks of 21 bits: ~5 images a bucket. Real hashes are
not uniform (flat images share chunks), and the largest bucket bounds a partition's work.
"""

from __future__ import annotations

import io
import math
from functools import partial
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from curate.io.embedding_store import EmbeddingStore, sample_keys
from curate.models.embedder import file_fingerprint
from curate.neighbours import FLAT_MAX_ROWS, KMeansConfig, SearchConfig, components, kmeans, similar_pairs
from curate.schema import set_column
from curate.stage import (
    ROW_COLUMN,
    Dataset,
    FitContext,
    Fitted,
    GlobalStage,
    StageConfig,
    Verdict,
    map_rows,
    rejections,
)
from curate.stages.clustered import (
    CLUSTER_COLUMN,
    VECTOR_COLUMN,
    StoredEmbeddingsStage,
    cluster_runs,
    column_vectors,
    splitmix64,
    vector_column,
    with_clusters,
)

HASH_BITS = 64
HASH_WORDS = 3  # the `hashes` code: pHash, dHash and wavelet hash, 64 bits each
NORMAL_SIDE = 64  # the `hashes` method hashes a normalised 64 x 64 grey image
RADIUS = {"phash": 4, "hashes": 8}  # default radius of each hash method (bits of 64, of 192 summed)
CHUNK_BITS_MAX = 32  # a bucket key holds the chunk index above 32 bits of chunk value
TILE = 512  # pairs are verified about TILE x TILE at a time (a bucket up to TILE rows in one block)
EDGE_LIMIT = 1 << 22  # verified pairs a partition holds before it reduces them to a forest
METHODS = ("auto", "phash", "hashes", "descriptor")
DESCRIPTOR_COLUMN = "copy_descriptor"

# The components' rows, shuffled by node (a distinct code): a node's own row (uid set: its
# smallest uid, and its label), an edge (other set), or a message (only a label).
GRAPH_SCHEMA = pa.schema([("node", pa.int64()), ("other", pa.int64()), ("uid", pa.string()), ("label", pa.string())])


def code_names(words: int) -> list[str]:
    """The fit rows' code word columns."""
    return [f"code{i}" for i in range(words)]


def fit_schema(words: int) -> pa.Schema:
    """Fit rows of a hash method: uid, node (the code's id), its `words` int64 code words, _row."""
    return pa.schema([("uid", pa.string()), ("node", pa.int64())] + [(c, pa.int64()) for c in code_names(words)]
                     + [(ROW_COLUMN, pa.int64())])


def chunk_schema(words: int) -> pa.Schema:
    """A node's row in one pigeonhole bucket: key, node, code words, smallest uid."""
    return pa.schema([("key", pa.int64()), ("node", pa.int64())] + [(c, pa.int64()) for c in code_names(words)]
                     + [("uid", pa.string())])


def phash(data: bytes) -> int:
    """64-bit DCT perceptual hash (imagehash.phash) of an encoded image, as an unsigned int; of the
    image upright and in 8 bits (a sideways photo hashes as its upright copy, a 16-bit PNG not as white)."""
    import imagehash
    from PIL import Image

    from curate.images import eight_bit, upright

    with Image.open(io.BytesIO(data)) as im:
        bits = imagehash.phash(eight_bit(upright(im)), hash_size=8).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


def copy_hashes(data: bytes) -> list[int]:
    """The `hashes` method's code of an encoded image: pHash, dHash and wavelet hash (imagehash,
    64 bits each, as unsigned ints) of the image normalised against the edits a copy survives: its
    uniform frame trimmed (borders, margins), grey, auto-contrast (brightness and contrast),
    squashed to 64 x 64, and mirrored when its right half holds more ink (so a mirrored copy
    hashes as its original; a drawing and its mirror image hash alike)."""
    import imagehash
    from PIL import Image, ImageOps

    from curate.copies import open_trimmed

    grey = ImageOps.autocontrast(open_trimmed(data, 4 * NORMAL_SIDE).convert("L"), cutoff=1)
    grey = grey.resize((NORMAL_SIDE, NORMAL_SIDE), Image.LANCZOS)
    ink = 255 - np.asarray(grey, np.float32)
    if ink[:, NORMAL_SIDE // 2:].sum() > ink[:, : NORMAL_SIDE // 2].sum():
        grey = ImageOps.mirror(grey)
    return [int(np.packbits(h(grey).hash.flatten()).view(">u8")[0])
            for h in (imagehash.phash, imagehash.dhash, imagehash.whash)]


def chunk_layout(bits: int, radius: int) -> tuple[int, int]:
    """(chunks, bits per chunk) of a `bits`-bit code searched within `radius`: at least radius+1
    chunks (pigeonhole), more where a chunk would pass CHUNK_BITS_MAX bits."""
    chunks = max(radius + 1, math.ceil(bits / CHUNK_BITS_MAX))
    return chunks, bits // chunks


def as_codes(hashes: np.ndarray) -> np.ndarray:
    """64-bit hashes (n, or n x words) as FAISS binary codes (8 bytes a word, the words in order)."""
    words = hashes.reshape(len(hashes), -1)
    return np.ascontiguousarray(words.astype(np.uint64).astype(">u8").view(np.uint8).reshape(len(hashes), -1))


def hamming_index(codes: np.ndarray, radius: int):
    """A FAISS multi-hash binary index over `codes` (bytes, n x 8 words), exact for searches within
    `radius` bits: the bits are cut into chunks as `chunk_layout` cuts them, so by pigeonhole any
    pair within `radius` shares a chunk and none is missed."""
    import faiss

    bits = codes.shape[1] * 8
    chunks, chunk_bits = chunk_layout(bits, radius)
    index = faiss.IndexBinaryMultiHash(bits, chunks, chunk_bits)
    index.add(codes)
    return index


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between int64 hashes `a` and `b` (broadcast): XOR and popcount
    (np.bitwise_count on NumPy 2, a byte table before)."""
    xor = np.bitwise_xor(a, b).view(np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(xor)
    return _BYTE_BITS[xor.view(np.uint8)].reshape(*xor.shape, 8).sum(axis=-1, dtype=np.uint8)


def code_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between codes `a` and `b` (int64 words on the last axis, broadcast), summed over the words."""
    return hamming(a, b).sum(axis=-1, dtype=np.int32)


def node_ids(codes: np.ndarray) -> np.ndarray:
    """A code's graph node (int64): a one-word code itself, a longer one a 64-bit digest of its words
    (splitmix64 chained over them)."""
    if codes.shape[1] == 1:
        return codes[:, 0].astype(np.int64)
    node = splitmix64(codes[:, 0].view(np.uint64))
    for word in codes[:, 1:].T:
        node = splitmix64(node ^ word.view(np.uint64))
    return node.view(np.int64)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A partition's rows as `schema` (engines may hand strings back as large strings)."""
    return table.select(schema.names).cast(schema)


def _codes(table: pa.Table, words: int) -> np.ndarray:
    """The code words of rows (n x words int64)."""
    return np.stack([table.column(c).to_numpy() for c in code_names(words)], axis=1).reshape(table.num_rows, words)


def hash_chunks(radius: int, words: int, table: pa.Table) -> pa.Table:
    """Fit rows grouped by node -> each distinct code with its smallest uid, once per pigeonhole
    chunk (chunk_schema)."""
    names = code_names(words)
    nodes = _conform(table, fit_schema(words)).group_by("node").aggregate(
        [("uid", "min")] + [(c, "min") for c in names])
    codes = np.stack([nodes.column(f"{c}_min").to_numpy() for c in names], axis=1).view(np.uint64)
    chunks, bits = chunk_layout(HASH_BITS * words, radius)
    keys = np.empty((nodes.num_rows, chunks), np.uint64)
    for chunk in range(chunks):  # the chunk's bits: the top `bits` of the 64 that start at its offset
        word, shift = divmod(chunk * bits, HASH_BITS)
        window = codes[:, word] << np.uint64(shift)
        if shift and word + 1 < words:
            window |= codes[:, word + 1] >> np.uint64(HASH_BITS - shift)
        keys[:, chunk] = (np.uint64(chunk) << np.uint64(32)) | (window >> np.uint64(HASH_BITS - bits))
    rows = pa.array(np.repeat(np.arange(nodes.num_rows), chunks))
    return pa.Table.from_arrays([pa.array(keys.view(np.int64).ravel()), nodes.column("node").take(rows)]
                                + [nodes.column(f"{c}_min").take(rows) for c in names]
                                + [nodes.column("uid_min").take(rows)], schema=chunk_schema(words))


def _pairs_within(radius: int, keys: np.ndarray, codes: np.ndarray, nodes: np.ndarray):
    """Node pairs within `radius` bits among rows sorted by key (whole buckets), yielded in
    pieces of about TILE x TILE verified pairs: buckets up to TILE rows many at a time, padded to
    the next power of two; bigger ones in TILE x TILE blocks."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    sizes = np.r_[starts[1:], len(keys)] - starts
    width = np.left_shift(1, np.ceil(np.log2(np.maximum(sizes, 2))).astype(np.int64))
    for size in np.unique(width[(sizes > 1) & (sizes <= TILE)]):
        buckets = np.flatnonzero((width == size) & (sizes > 1))
        upper = np.triu(np.ones((size, size), bool), k=1)
        step = max(1, TILE * TILE // (size * size))
        for first in range(0, len(buckets), step):
            chosen = buckets[first:first + step]
            rows = np.minimum(starts[chosen, None] + np.arange(size), len(keys) - 1)
            block = codes[rows]
            close = (code_distance(block[:, :, None], block[:, None, :]) <= radius) & upper
            close &= (np.arange(size) < sizes[chosen, None])[:, None, :]  # i < j < the bucket's size
            found, i, j = np.unravel_index(np.flatnonzero(close), close.shape)
            yield nodes[rows[found, i]], nodes[rows[found, j]]
    for start, size in zip(starts[sizes > TILE], sizes[sizes > TILE]):
        for i in range(start, start + size, TILE):
            for j in range(i, start + size, TILE):
                left, right = codes[i:min(i + TILE, start + size)], codes[j:min(j + TILE, start + size)]
                a, b = np.unravel_index(np.flatnonzero(code_distance(left[:, None], right[None, :]) <= radius),
                                        (len(left), len(right)))
                a, b = (a, b) if i != j else (a[a < b], b[a < b])
                yield nodes[i + a], nodes[j + b]


def _forest(rank: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A spanning forest of the graph on nodes 0..n-1 with edges (a, b): one star per connected
    component, rooted at its node of smallest `rank`, as (root, member) edges."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(rank)
    _, component = connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)), directed=False)
    best = np.full(component.max(initial=-1) + 1, n, np.int64)
    np.minimum.at(best, component, rank)
    roots = np.argsort(rank)[best[component]]
    members = np.flatnonzero(roots != np.arange(n))
    return roots[members], members


def bucket_edges(radius: int, words: int, table: pa.Table) -> pa.Table:
    """Chunk rows grouped by key -> the first rows of the components (GRAPH_SCHEMA): a spanning
    forest of the partition's verified pairs, each star edge both ways, every node's own row
    (labelled with its own uid) and the root's uid sent to each member."""
    table = _conform(table, chunk_schema(words)).sort_by([("key", "ascending")])
    distinct, first, nodes = np.unique(table.column("node").to_numpy(), return_index=True, return_inverse=True)
    uids = table.column("uid").take(pa.array(first))
    rank = np.empty(len(distinct), np.int64)
    rank[pc.sort_indices(uids).to_numpy()] = np.arange(len(distinct))
    roots, members = np.zeros(0, np.int64), np.zeros(0, np.int64)
    found_a, found_b, found = [], [], 0
    for a, b in _pairs_within(radius, table.column("key").to_numpy(), _codes(table, words), nodes):
        found_a.append(a)
        found_b.append(b)
        found += len(a)
        if found > EDGE_LIMIT:  # keep the forest so far and forget the pairs
            roots, members = _forest(rank, np.concatenate([roots, *found_a]), np.concatenate([members, *found_b]))
            found_a, found_b, found = [], [], 0
    roots, members = _forest(rank, np.concatenate([roots, *found_a]), np.concatenate([members, *found_b]))
    linked = np.unique(np.concatenate([roots, members]))
    return pa.concat_tables([
        _graph_rows(distinct[linked], None, uids.take(pa.array(linked)), uids.take(pa.array(linked))),
        _graph_rows(distinct[roots], distinct[members], None, None),
        _graph_rows(distinct[members], distinct[roots], None, None),
        _graph_rows(distinct[members], None, None, uids.take(pa.array(roots))),
    ])


def _graph_rows(node, other, uid, label) -> pa.Table:
    """GRAPH_SCHEMA rows; a None column is all nulls."""
    n = len(node)
    columns = [node, other, uid, label]
    arrays = [pa.nulls(n, f.type) if c is None else pa.array(c, f.type) if isinstance(c, np.ndarray) else c.cast(f.type)
              for c, f in zip(columns, GRAPH_SCHEMA)]
    return pa.Table.from_arrays(arrays, schema=GRAPH_SCHEMA)


def propagate(table: pa.Table) -> pa.Table:
    """One round of min-label propagation over graph rows grouped by node: each node's label
    becomes the smallest of its own and the messages sent to it; a node whose label fell sends
    the new one along its edges."""
    table = _conform(table, GRAPH_SCHEMA)
    own_row, edge_row = table.column("uid").is_valid(), table.column("other").is_valid()
    own = table.filter(own_row).group_by("node").aggregate([("uid", "min"), ("label", "min")])
    sent = (table.filter(pc.invert(pc.or_(own_row, edge_row))).group_by("node").aggregate([("label", "min")])
            .rename_columns(["node", "sent"]))
    labels = own.join(sent, "node", join_type="left outer")
    fell = pc.fill_null(pc.less(labels.column("sent"), labels.column("label_min")), False)
    label = pc.min_element_wise(labels.column("label_min"), labels.column("sent"))
    edges = table.filter(edge_row).group_by(["node", "other"]).aggregate([])
    changed = pa.table({"node": labels.column("node").filter(fell), "label": label.filter(fell)})
    messages = edges.join(changed, "node", join_type="inner")
    return pa.concat_tables([
        _graph_rows(labels.column("node"), None, labels.column("uid_min"), label),
        _graph_rows(edges.column("node"), edges.column("other"), None, None),
        _graph_rows(messages.column("other"), None, None, messages.column("label")),
    ])


def count_messages(table: pa.Table) -> int:
    """How many graph rows are messages (neither a node's own row nor an edge): the work left."""
    return table.num_rows - pc.sum(pc.or_(table.column("uid").is_valid(), table.column("other").is_valid()),
                                   min_count=0).as_py()


def kept_names(words: int, table: pa.Table) -> pa.Table:
    """Final graph rows -> for each node whose label (its component's smallest uid) is not its
    own uid, a fit row naming that kept uid (code words 0, no `_row`: -1)."""
    own = table.filter(table.column("uid").is_valid())
    named = own.filter(pc.not_equal(own.column("label"), own.column("uid")))
    zeros = pa.array(np.zeros(named.num_rows, np.int64))
    return pa.Table.from_arrays([named.column("label"), named.column("node")] + [zeros] * words
                                + [pa.array(np.full(named.num_rows, -1, np.int64))], schema=fit_schema(words))


def reject_members(words: int, table: pa.Table) -> pa.Table:
    """Fit rows and kept-uid names grouped by node -> every sample's keep decision: the named
    uid (its component's smallest) or else the code's smallest uid is kept, the others rejected."""
    table = _conform(table, fit_schema(words)).select(["uid", "node", ROW_COLUMN])
    member = pc.greater_equal(table.column(ROW_COLUMN), 0)
    members = table.filter(member)
    named = table.filter(pc.invert(member)).select(["node", "uid"]).rename_columns(["node", "named"])
    kept = members.group_by("node").aggregate([("uid", "min")]).join(named, "node", join_type="left outer")
    kept = pa.table({"node": kept.column("node"), "kept": pc.coalesce(kept.column("named"), kept.column("uid_min"))})
    decided = members.join(kept, "node")
    dropped = decided.filter(pc.not_equal(decided.column("uid"), decided.column("kept")))
    return rejections(dropped.column(ROW_COLUMN), "near_duplicate", dropped.column("kept"))


def descriptor_duplicates(threshold: float, search: SearchConfig, table: pa.Table) -> pa.Table:
    """Descriptor fit rows grouped by cluster -> in each whole cluster, the connected components of
    the pairs at or above the cosine `threshold` (each vector looks at its `neighbours` nearest);
    each keeps its smallest uid and the others name it."""
    table, runs = cluster_runs(table)
    vectors = column_vectors(table.column(VECTOR_COLUMN))
    dropped, keepers = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start, end in runs:
        if end - start < 2:
            continue
        group = components(end - start, *similar_pairs(vectors[start:end], threshold, search))
        first = np.full(group.max() + 1, end - start, np.int64)
        np.minimum.at(first, group, np.arange(end - start))  # rows are in uid order: the first is the smallest uid
        lost = np.flatnonzero(first[group] != np.arange(end - start))
        dropped.append(start + lost)
        keepers.append(start + first[group[lost]])
    dropped, keepers = np.concatenate(dropped), np.concatenate(keepers)
    return rejections(table.column(ROW_COLUMN).take(pa.array(dropped)), "near_duplicate",
                      table.column("uid").take(pa.array(keepers)))


class CopyConfig(StageConfig):
    """How images are compared as copies: the method and its radius or descriptor (near_dedup, decontaminate)."""

    method: Literal["auto", "phash", "hashes", "descriptor"] = Field(
        "auto", description="phash: one 64-bit pHash; hashes: pHash, dHash and wavelet hash of the normalised "
                            "image (192 bits); descriptor: a `curate train copydetect` checkpoint; auto: descriptor "
                            "when a checkpoint is given, else phash")
    radius: int | None = Field(None, ge=0, le=95, description="hash methods: Hamming distance (summed over the "
                                                              f"hashes) at or below which images are copies; "
                                                              f"default {RADIUS['phash']} for phash (of 64 bits), "
                                                              f"{RADIUS['hashes']} for hashes (of 192)")
    checkpoint: str | None = Field(None, description="descriptor: copydetect.pt from `curate train copydetect` "
                                                     "(its .json beside it)")
    threshold: float | None = Field(None, ge=-1, le=1, description="descriptor: image cosine at or above which "
                                                                   "images are copies (default: the checkpoint's "
                                                                   "calibrated threshold)")
    store: str | None = Field(None, description="descriptor: an embedding store folder that keeps the descriptors "
                                                "(computed once, reused by later stages and runs)")

    @property
    def chosen(self) -> str:
        """The method used: `method`, with auto resolved."""
        return self.method if self.method != "auto" else "descriptor" if self.checkpoint else "phash"

    @property
    def hash_radius(self) -> int:
        """The hash methods' radius: given, or the method's default."""
        return self.radius if self.radius is not None else RADIUS[self.chosen]

    @model_validator(mode="after")
    def _settings_of_the_method(self):
        chosen = self.chosen
        if chosen == "descriptor":
            if not self.checkpoint:
                raise ValueError("method descriptor needs checkpoint: a copydetect.pt from `curate train copydetect`")
            if self.radius is not None:
                raise ValueError("radius is for the hash methods; method descriptor takes threshold (a cosine)")
        else:
            wrong = [k for k in ("checkpoint", "threshold", "store") if getattr(self, k) is not None]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} are for method descriptor, not {chosen}")
            if chosen == "phash" and self.radius is not None and self.radius > 31:
                raise ValueError(f"radius {self.radius} is over phash's 31 (of 64 bits)")
        return self

    def descriptor_reads(self) -> tuple[str, ...]:
        """The columns the descriptor needs: the image, and the caption too when a store keys it."""
        return ("uid", "image", "text") if self.store else ("uid", "image")


class Descriptors:
    """A stage's copy descriptors: from the store when it has them, else computed (and stored)."""

    def __init__(self, config: CopyConfig):
        from curate.models.copydetect import CopyDescriptor

        self.model = CopyDescriptor.shared(config.checkpoint)
        self.store = EmbeddingStore(config.store, file_fingerprint(config.checkpoint, "copydetect")) \
            if config.store else None
        self.threshold = config.threshold if config.threshold is not None else self.model.threshold
        if self.threshold is None:
            raise ValueError(f"copy descriptor {config.checkpoint} has no calibrated threshold (trained without "
                             "calibration): set threshold, or run `curate calibrate near_dedup`")

    def for_table(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(rows described, their unit descriptors as float16 values in float32, failures by row)."""
        images = table.column("image").to_pylist()
        if self.store is None:
            rows, vectors, failures = self.model.embed(images)
            return rows, vectors.astype(np.float16).astype(np.float32), failures
        keys = sample_keys(table)
        todo = np.flatnonzero(~self.store.find(keys))
        rows, vectors, failures = self.model.embed([images[i] for i in todo])
        failures = {int(todo[i]): message for i, message in failures.items()}
        fresh = todo[rows]
        self.store.put([keys[i] for i in fresh], vectors, np.zeros_like(vectors), np.full(len(fresh), np.nan))
        rows = np.array([i for i in range(len(keys)) if i not in failures], np.int64)
        return rows, self.store.images([keys[i] for i in rows]), failures


class NearDedupConfig(CopyConfig, SearchConfig, KMeansConfig):
    """Parameters of the near_dedup stage."""

    hash_column: str | None = Field(
        None, description="phash: read 64-bit pHashes (int64) from this input column instead of hashing the images: "
                          "a metadata run, or hashes computed once before; a null hash is phash_failed")
    cluster_rows: int = Field(
        FLAT_MAX_ROWS, gt=1, description="descriptor: rows per cluster searched together: a pool of up to this many "
                                         "is searched whole; a larger one is split by k-means into "
                                         "ceil(rows / cluster_rows) clusters, and pairs across two are not found")

    @model_validator(mode="after")
    def _hash_column_is_a_phash(self):
        if self.hash_column and self.chosen != "phash":
            raise ValueError(f"hash_column holds pHashes: it is for method phash, not {self.chosen}")
        return self

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """A hash column needs no image: the stage runs on metadata."""
        if self.hash_column:
            return [("uid", self.hash_column)]
        return [self.descriptor_reads()] if self.chosen == "descriptor" else [("uid", "image")]


class NearDedup(GlobalStage):
    """Drop near-duplicates (copies): pHash, a normalised multi-hash or a learned copy descriptor,
    grouped transitively (connected components); each group keeps its smallest uid."""

    name = "near_dedup"
    Config = NearDedupConfig
    reads = ("uid", "image")
    writes = {"phash": pa.int64(), "copy_hashes": pa.list_(pa.int64()), DESCRIPTOR_COLUMN: pa.binary()}
    reasons = ("phash_failed", "hash_failed", "descriptor_failed", "near_duplicate")
    _descriptors: Descriptors | None = None

    @property
    def uses_model(self) -> bool:
        """A descriptor is a model: engines run the stage in long-lived workers."""
        return self.config.chosen == "descriptor"

    @property
    def words(self) -> int:
        """Code words of the hash method (1: pHash, 3: the multi-hash)."""
        return HASH_WORDS if self.config.chosen == "hashes" else 1

    @property
    def descriptors(self) -> Descriptors:
        """The descriptor model and store, made on first use (in workers by `setup`)."""
        if self._descriptors is None:
            self._descriptors = Descriptors(self.config)
        return self._descriptors

    def setup(self) -> None:
        if self.config.chosen == "descriptor":
            self.descriptors  # noqa: B018 - loads the checkpoint's config and opens the store

    def process(self, table: pa.Table) -> Verdict:
        chosen = self.config.chosen
        if self.config.hash_column:
            return self._read_hashes(table)
        if chosen == "descriptor":
            return self._describe(table)
        fn, column, reason = (phash, "phash", "phash_failed") if chosen == "phash" else (copy_hashes, "copy_hashes",
                                                                                        "hash_failed")
        hashes, failures = map_rows(table.column("image").to_pylist(), fn)
        signed = [None if h is None else np.array(h, np.uint64).view(np.int64).tolist() for h in hashes]
        verdict = Verdict(set_column(table, column, signed, self.writes[column]))
        for i, message in failures.items():
            verdict.reject(i, reason, message)
        return verdict

    def _describe(self, table: pa.Table) -> Verdict:
        """Each image's descriptor (float16 bytes; null where it failed)."""
        rows, vectors, failures = self.descriptors.for_table(table)
        values = pa.nulls(table.num_rows, pa.binary())
        if len(rows):
            mask = np.zeros(table.num_rows, bool)
            mask[rows] = True
            values = pc.replace_with_mask(values, pa.array(mask), vector_column(vectors))
        verdict = Verdict(set_column(table, DESCRIPTOR_COLUMN, values))
        for i, message in failures.items():
            verdict.reject(i, "descriptor_failed", message)
        return verdict

    def _read_hashes(self, table: pa.Table) -> Verdict:
        """pHashes from the input's column (as int64: the 64 bits as they are)."""
        column = self.config.hash_column
        if column not in table.column_names:
            raise ValueError(f"near_dedup: hash_column {column!r} is not a column of the input "
                             f"(columns: {table.column_names})")
        hashes = table.column(column)
        if not pa.types.is_integer(hashes.type):
            raise ValueError(f"near_dedup: hash_column {column!r} holds {hashes.type}, expected 64-bit integers")
        hashes = pc.cast(hashes, pa.uint64()).cast(pa.int64(), safe=False) if pa.types.is_unsigned_integer(
            hashes.type) else pc.cast(hashes, pa.int64())
        verdict = Verdict(set_column(table, "phash", hashes))
        verdict.reject_where(pc.is_null(hashes), "phash_failed", [f"no {column}"] * table.num_rows)
        return verdict

    def fit_rows(self, table: pa.Table) -> pa.Table:
        """uid, node, code words and _row of each hashed row; uid, descriptor and _row for the descriptor."""
        if self.config.chosen == "descriptor":
            return pa.table({"uid": table.column("uid"), VECTOR_COLUMN: table.column(DESCRIPTOR_COLUMN).cast(
                pa.binary()), ROW_COLUMN: table.column(ROW_COLUMN)})
        if self.words == 1:
            codes = table.column("phash").to_numpy().reshape(-1, 1)
        else:
            flat = pc.list_flatten(table.column("copy_hashes")).to_numpy()
            codes = flat.reshape(table.num_rows, self.words)
        columns = [table.column("uid"), pa.array(node_ids(codes))] + [pa.array(codes[:, i]) for i in range(self.words)]
        return pa.Table.from_arrays(columns + [table.column(ROW_COLUMN)], schema=fit_schema(self.words))

    def fit(self, data: Dataset, context: FitContext) -> Fitted:
        if self.config.chosen == "descriptor":
            return self._fit_descriptors(data, context)
        named, radius, words = Dataset((), 0), self.config.hash_radius, self.words
        if radius:
            chunks = context.group(data, ["node"], partial(hash_chunks, radius, words), "chunks")
            graph = context.group(chunks, ["key"], partial(bucket_edges, radius, words), "edges")
            while graph.rows and context.aggregate(graph, count_messages, sum):
                graph = context.group(graph, ["node"], propagate, "labels")
            named = context.map(graph, partial(kept_names, words), "kept")
        rows = Dataset(data.files + named.files, data.rows + named.rows)
        return Fitted(rejected=context.group(rows, ["node"], partial(reject_members, words), "near_duplicates"))

    def _fit_descriptors(self, data: Dataset, context: FitContext) -> Fitted:
        """Clusters of about `cluster_rows` rows (one, without k-means, for a pool that small), each
        searched and grouped by `descriptor_duplicates` in the engine's group."""
        if not data.rows:
            return Fitted()
        clusters, centroids = math.ceil(data.rows / self.config.cluster_rows), None
        if clusters > 1:  # k-means on a bounded uniform sample, as the embedding stages fit theirs
            sample = StoredEmbeddingsStage.sample(self, data, context, self.config.sample_rows(clusters))
            centroids, _ = kmeans(column_vectors(sample.column(VECTOR_COLUMN)), clusters, self.config.seed,
                                  self.config.niter, spherical=True)
        assigned = context.map(data, partial(with_clusters, centroids), "clusters")
        threshold = self.descriptors.threshold
        search = SearchConfig(index="flat", neighbours=self.config.neighbours)
        rejected = context.group(assigned, [CLUSTER_COLUMN], partial(descriptor_duplicates, threshold, search),
                                 "near_duplicates")
        return Fitted({"clusters": 1 if centroids is None else len(centroids), "threshold": threshold}, rejected)

    def fit_stats(self, state: dict) -> dict:
        """The descriptor fit's clusters and threshold."""
        if "clusters" not in state:
            return {}
        return {"kind": "copy_descriptor", "clusters": state["clusters"], "threshold": state["threshold"]}
