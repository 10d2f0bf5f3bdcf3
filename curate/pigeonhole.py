"""Exact copy search on an engine's shuffles: the connected components of hash codes within a
Hamming `radius` (near_dedup's hash methods), searched over narrow fit rows (uid, node, code
words, _row, `fit_schema`) so that no process holds the pool's codes. The stage runs, on its
FitContext:

1. `hash_chunks` (group by node: the pHash itself, or a 64-bit digest of a longer code):
   identical codes meet; each distinct code is one graph node carrying its smallest uid, and
   emits its pigeonhole chunk keys: the code's bits cut into radius+1 chunks (more where a chunk
   would pass 32 bits) of bits // chunks bits each (key = chunk index << 32 | chunk value). Two
   codes within `radius` bits agree on at least one whole chunk, so they share a bucket: no pair
   is missed.
2. `bucket_edges` (group by key): buckets meet; every pair of a bucket is verified, the summed
   popcount of a ^ b <= radius, in blocks of about TILE x TILE (small buckets many at a time,
   padded to a power of two; big ones in tiles: memory does not grow with the bucket). The
   verified pairs of a partition are reduced to a spanning forest (one star per local
   component, rooted at its smallest uid), so a partition emits at most one edge per node
   however dense its buckets.
3. `propagate` (group by node, while `count_messages` finds any): connected components by
   min-label propagation over those edges. A node's label starts as its own uid; each round a
   node takes the smallest label among its own and the messages sent to it, and a node whose
   label fell sends the new one to its neighbours. Rounds stop when none was sent: about the
   diameter of the largest component, plus one.
4. `kept_names` (a map), then `reject_members` (group by node over the fit rows and those
   names): a node whose label is not its own uid names the component's kept uid; every sample
   but the component's smallest uid is rejected as `near_duplicate` with the kept uid as value.

Cost: a chunk of c bits has 2^c values, so on uniform codes a bucket holds pool / 2^c images,
and each bucket's pairs are all verified. pHash at radius 4 (12-bit chunks, 5 buckets an image)
puts ~2.4k images of a 10M pool in a bucket: ~3M pairs a bucket; the 192-bit code at radius 8
cuts 9 chunks of 21 bits: ~5 images a bucket. Real hashes are not uniform (flat images share
chunks), and the largest bucket bounds a partition's work.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.copyhash import HASH_BITS, chunk_layout, code_distance
from curate.stage import ROW_COLUMN, rejections

TILE = 512  # pairs are verified about TILE x TILE at a time (a bucket up to TILE rows in one block)
EDGE_LIMIT = 1 << 22  # verified pairs a partition holds before it reduces them to a forest

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

