"""Near-duplicate dedup stage: perceptual hashes (pHash) within a Hamming radius, grouped into
connected components by the engine's shuffles; each component keeps its smallest uid.

The fit works on narrow rows (uid, phash, _row), and no process holds the pool's hashes:

1. Identical pHashes meet (group by phash): each distinct hash is one graph node carrying its
   smallest uid, and emits its radius+1 pigeonhole chunk keys (the 64 bits cut as
   `hamming_index` cuts them, into chunks of 64 // (radius+1) bits; key = chunk index << 32 |
   chunk value). Two hashes within `radius` bits agree on at least one whole chunk, so they
   share a bucket: no pair is missed.
2. Buckets meet (group by key): every pair of a bucket is verified, popcount(a ^ b) <= radius,
   in blocks of about TILE x TILE (small buckets many at a time, padded to a power of two; big
   ones in tiles: memory does not grow with the bucket). The verified pairs of a partition are
   reduced to a spanning forest (one star per local component, rooted at its smallest uid), so
   a partition emits at most one edge per node however dense its buckets, and the graph has at
   most radius+1 edges a node.
3. Connected components by min-label propagation over those edges: a node's label starts as
   its own uid; each round (a group by node) a node takes the smallest label among its own and
   the messages sent to it, and a node whose label fell sends the new one to its neighbours.
   Rounds stop when none was sent: about the diameter of the largest component (in forest
   edges), plus one.
4. A node whose label is not its own uid names the component's kept uid; a last group by
   phash over the fit rows and those names rejects every sample but the component's smallest
   uid, as `near_duplicate` with the kept uid as value.

Keep rule: connected components, as NeMo Curator and Data-Juicer do. A chain a~b~c merges a and
c even when they are more than the radius apart (earlier versions kept greedily in uid order,
like non-maximum suppression, which did not). It depends only on the hashes and uids, never on
the engine, the workers or the partitioning.

Cost: a chunk has 2^(64 // (radius+1)) values, so on uniform hashes a bucket holds pool / that
many images, and each bucket's pairs are all verified. At radius 4 (12-bit chunks, 5 buckets an
image) a 10M-image pool puts ~2.4k images in a bucket: ~3M pairs a bucket, ~6e10 popcounts in
all. A smaller radius means longer chunks and far smaller buckets (radius 2: 21-bit chunks, ~5
images a bucket); radius 0 needs no buckets at all (identical hashes only). Real pHashes are not
uniform (flat images share chunks), and the largest bucket bounds a partition's work.
"""

from __future__ import annotations

import io
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

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

HASH_BITS = 64
TILE = 512  # pairs are verified about TILE x TILE at a time (a bucket up to TILE rows in one block)
EDGE_LIMIT = 1 << 22  # verified pairs a partition holds before it reduces them to a forest

FIT_SCHEMA = pa.schema([("uid", pa.string()), ("phash", pa.int64()), (ROW_COLUMN, pa.int64())])
CHUNK_SCHEMA = pa.schema([("key", pa.int64()), ("phash", pa.int64()), ("uid", pa.string())])
# The components' rows, shuffled by node (a distinct pHash): a node's own row (uid set: its
# smallest uid, and its label), an edge (other set), or a message (only a label).
GRAPH_SCHEMA = pa.schema([("node", pa.int64()), ("other", pa.int64()), ("uid", pa.string()), ("label", pa.string())])


def phash(data: bytes) -> int:
    """64-bit DCT perceptual hash (imagehash.phash) of an encoded image, as an unsigned int; of the
    image upright and in 8 bits (a sideways photo hashes as its upright copy, a 16-bit PNG not as white)."""
    import imagehash
    from PIL import Image

    from curate.images import eight_bit, upright

    with Image.open(io.BytesIO(data)) as im:
        bits = imagehash.phash(eight_bit(upright(im)), hash_size=8).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


def as_codes(hashes: np.ndarray) -> np.ndarray:
    """64-bit hashes as FAISS binary codes (8 bytes per row)."""
    return np.ascontiguousarray(hashes.astype(np.uint64).astype(">u8").view(np.uint8).reshape(-1, 8))


def hamming_index(codes: np.ndarray, radius: int):
    """A FAISS multi-hash binary index over `codes`, exact for searches within `radius` bits:
    the 64 bits are cut into radius+1 chunks, so by pigeonhole any pair within `radius`
    shares a chunk and none is missed."""
    import faiss

    nhash = radius + 1
    index = faiss.IndexBinaryMultiHash(HASH_BITS, nhash, HASH_BITS // nhash)
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


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A partition's rows as `schema` (engines may hand strings back as large strings)."""
    return table.select(schema.names).cast(schema)


def hash_chunks(radius: int, table: pa.Table) -> pa.Table:
    """Fit rows grouped by phash -> each distinct hash with its smallest uid, once per
    pigeonhole chunk (CHUNK_SCHEMA)."""
    nodes = _conform(table, FIT_SCHEMA).group_by("phash").aggregate([("uid", "min")])
    hashes = nodes.column("phash").to_numpy().view(np.uint64)
    nhash, bits = radius + 1, HASH_BITS // (radius + 1)
    chunk = np.arange(nhash, dtype=np.uint64)
    values = (hashes[:, None] >> (np.uint64(HASH_BITS - bits) - chunk * np.uint64(bits))) & np.uint64((1 << bits) - 1)
    keys = ((chunk << np.uint64(32)) | values).view(np.int64).ravel()
    rows = np.repeat(np.arange(nodes.num_rows), nhash)
    return pa.Table.from_arrays([pa.array(keys), nodes.column("phash").take(rows), nodes.column("uid_min").take(rows)],
                                schema=CHUNK_SCHEMA)


def _pairs_within(radius: int, keys: np.ndarray, hashes: np.ndarray, nodes: np.ndarray):
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
            block = hashes[rows]
            close = (hamming(block[:, :, None], block[:, None, :]) <= radius) & upper
            close &= (np.arange(size) < sizes[chosen, None])[:, None, :]  # i < j < the bucket's size
            found, i, j = np.unravel_index(np.flatnonzero(close), close.shape)
            yield nodes[rows[found, i]], nodes[rows[found, j]]
    for start, size in zip(starts[sizes > TILE], sizes[sizes > TILE]):
        for i in range(start, start + size, TILE):
            for j in range(i, start + size, TILE):
                left, right = hashes[i:min(i + TILE, start + size)], hashes[j:min(j + TILE, start + size)]
                a, b = np.unravel_index(np.flatnonzero(hamming(left[:, None], right[None, :]) <= radius),
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


def bucket_edges(radius: int, table: pa.Table) -> pa.Table:
    """Chunk rows grouped by key -> the first rows of the components (GRAPH_SCHEMA): a spanning
    forest of the partition's verified pairs, each star edge both ways, every node's own row
    (labelled with its own uid) and the root's uid sent to each member."""
    table = _conform(table, CHUNK_SCHEMA).sort_by([("key", "ascending")])
    hashes = table.column("phash").to_numpy()
    distinct, first, nodes = np.unique(hashes, return_index=True, return_inverse=True)
    uids = table.column("uid").take(pa.array(first))
    rank = np.empty(len(distinct), np.int64)
    rank[pc.sort_indices(uids).to_numpy()] = np.arange(len(distinct))
    roots, members = np.zeros(0, np.int64), np.zeros(0, np.int64)
    found_a, found_b, found = [], [], 0
    for a, b in _pairs_within(radius, table.column("key").to_numpy(), hashes, nodes):
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


def kept_names(table: pa.Table) -> pa.Table:
    """Final graph rows -> for each node whose label (its component's smallest uid) is not its
    own uid, a FIT_SCHEMA row naming that kept uid (no `_row`: -1)."""
    own = table.filter(table.column("uid").is_valid())
    named = own.filter(pc.not_equal(own.column("label"), own.column("uid")))
    return pa.Table.from_arrays([named.column("label"), named.column("node"),
                                 pa.array(np.full(named.num_rows, -1, np.int64))], schema=FIT_SCHEMA)


def reject_members(table: pa.Table) -> pa.Table:
    """Fit rows and kept-uid names grouped by phash -> every sample's keep decision: the named
    uid (its component's smallest) or else the hash's smallest uid is kept, the others rejected."""
    table = _conform(table, FIT_SCHEMA)
    member = pc.greater_equal(table.column(ROW_COLUMN), 0)
    members = table.filter(member)
    named = table.filter(pc.invert(member)).select(["phash", "uid"]).rename_columns(["phash", "named"])
    kept = members.group_by("phash").aggregate([("uid", "min")]).join(named, "phash", join_type="left outer")
    kept = pa.table({"phash": kept.column("phash"), "kept": pc.coalesce(kept.column("named"), kept.column("uid_min"))})
    decided = members.join(kept, "phash")
    dropped = decided.filter(pc.not_equal(decided.column("uid"), decided.column("kept")))
    return rejections(dropped.column(ROW_COLUMN), "near_duplicate", dropped.column("kept"))


class NearDedupConfig(StageConfig):
    """Parameters of the near_dedup stage."""

    radius: int = Field(4, ge=0, le=31,
                        description="Hamming distance (of 64 bits) at or below which images are near-duplicates")
    hash_column: str | None = Field(
        None, description="read 64-bit pHashes (int64) from this input column instead of hashing the images: a "
                          "metadata run, or hashes computed once before; a null hash is phash_failed")

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """A hash column needs no image: the stage runs on metadata."""
        return [("uid", self.hash_column)] if self.hash_column else [("uid", "image")]


class NearDedup(GlobalStage):
    """Drop perceptual near-duplicates: pHash within a Hamming radius, grouped transitively (connected
    components); each group keeps its smallest uid."""

    name = "near_dedup"
    Config = NearDedupConfig
    reads = ("uid", "image")
    writes = {"phash": pa.int64()}
    reasons = ("phash_failed", "near_duplicate")
    fit_columns = ("phash",)

    def process(self, table: pa.Table) -> Verdict:
        if self.config.hash_column:
            return self._read_hashes(table)
        hashes, failures = map_rows(table.column("image").to_pylist(), phash)
        signed = [None if h is None else int(np.uint64(h).view(np.int64)) for h in hashes]
        verdict = Verdict(set_column(table, "phash", signed, pa.int64()))
        for i, message in failures.items():
            verdict.reject(i, "phash_failed", message)
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
        """uid, phash and _row of each hashed row."""
        return _conform(table, FIT_SCHEMA)

    def fit(self, data: Dataset, context: FitContext) -> Fitted:
        named = Dataset((), 0)
        if self.config.radius:
            chunks = context.group(data, ["phash"], partial(hash_chunks, self.config.radius), "chunks")
            graph = context.group(chunks, ["key"], partial(bucket_edges, self.config.radius), "edges")
            while graph.rows and context.aggregate(graph, count_messages, sum):
                graph = context.group(graph, ["node"], propagate, "labels")
            named = context.map(graph, kept_names, "kept")
        rows = Dataset(data.files + named.files, data.rows + named.rows)
        return Fitted(rejected=context.group(rows, ["phash"], reject_members, "near_duplicates"))
