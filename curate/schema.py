"""The sample schema: one Arrow row per image-text pair, the same on every engine."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CORE_FIELDS = (
    pa.field("uid", pa.string(), nullable=False),
    pa.field("url", pa.string()),
    pa.field("text", pa.string()),
    pa.field("image", pa.binary()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
)
INPUT_SCHEMA = pa.schema(CORE_FIELDS[:4])  # what every reader yields; width/height come from the decoder
INPUT_NEEDS = ("'text' (caption) and 'image' (encoded bytes, image file paths or {bytes, path} structs) or 'url' "
               "(a URL list, for the download stage)")

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("value", pa.string()),
    ]
)

UID_DTYPE = np.dtype("u8,u8")  # DataComp: a 128-bit uid as two uint64


def make_uid(url: str | None, text: str | None) -> str:
    """DataComp-style uid for a sample that has none: md5 of url and text, 32 hex chars."""
    return hashlib.md5(f"{url or ''}\x00{text or ''}".encode()).hexdigest()


def numbered_uid(url: str | None, text: str | None, occurrence: int) -> str:
    """The uid curate makes for the `occurrence`-th sample (1: the first) of an (url, text) pair:
    `make_uid(url, text)` for the first, md5 of url, text and the number (NUL-separated) for a repeat."""
    return make_uid(url, text) if occurrence == 1 else make_uid(url, f"{text or ''}\x00{occurrence}")


def count_occurrences(pairs: list[tuple | None], seen: dict | None = None) -> np.ndarray:
    """Each pair's occurrence number (1: the first) in the order given, counting on from `seen`
    (updated; pass the same dict for the next batch of one task); None (a given uid) counts 1."""
    seen = {} if seen is None else seen
    numbers = np.ones(len(pairs), np.int64)
    for i, pair in enumerate(pairs):
        if pair is not None:
            seen[pair] = numbers[i] = seen.get(pair, 0) + 1
    return numbers


def is_hex_uid(uid: str) -> bool:
    """True when uid is already a 128-bit hex id."""
    if len(uid) != 32:
        return False
    try:
        int(uid, 16)
    except ValueError:
        return False
    return True


def uid_array(uids: list[str]) -> np.ndarray:
    """Sorted DataComp uid array (dtype u8,u8); ids that are not 32 hex chars are md5-hashed."""
    arr = uid_array_unsorted(uids)
    arr.sort()
    return arr


def normalize(table: pa.Table, source: str, occurrences: np.ndarray | None = None) -> pa.Table:
    """Bring a table read from `source` to the core schema, keeping any extra columns.

    Adds a uid where missing (`numbered_uid` of url and text: md5 of them for a pair's first
    occurrence; `occurrences` gives each row's occurrence number, as a run counts them over its
    whole input, else they are counted within the table), null url or image columns where
    absent (a URL list has no images until the download stage), and casts core columns
    (including width/height when the input has them) to their types.
    """
    names = set(table.column_names)
    if "text" not in names or not names & {"image", "url"}:
        raise ValueError(f"{source}: missing column(s): an input needs {INPUT_NEEDS}, found {table.column_names}")
    n = table.num_rows
    for name, type_ in (("url", pa.string()), ("image", pa.binary())):
        if name not in names:
            table = table.append_column(name, pa.nulls(n, type_))
    if "uid" not in table.column_names or table.column("uid").null_count == n:
        pairs = list(zip(table.column("url").to_pylist(), table.column("text").to_pylist()))
        # a repeated (url, text) row is another sample: its uid says which occurrence it is
        numbers = count_occurrences(pairs) if occurrences is None else occurrences
        uids = [numbered_uid(url, text, int(k)) for (url, text), k in zip(pairs, numbers)]
        table = set_column(table, "uid", pa.array(uids, pa.string()))
    for field in CORE_FIELDS:
        if field.name not in table.column_names:
            continue
        col = table.column(field.name)
        if field.name == "uid" and col.null_count:
            raise ValueError(f"{source}: {col.null_count} row(s) have a null uid")
        if not col.type.equals(field.type):
            try:
                col = pc.cast(col, field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(
                    f"{source}: column '{field.name}' has type {col.type}, expected {field.type}"
                ) from exc
            table = set_column(table, field.name, col)
    core = [f.name for f in CORE_FIELDS if f.name in table.column_names]
    return table.select(core + [c for c in table.column_names if c not in core])


def set_column(table: pa.Table, name: str, values, type: pa.DataType | None = None) -> pa.Table:
    """Replace or append column `name` with `values` (a list or Arrow array)."""
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(values, type=type)
    elif type is not None and not values.type.equals(type):
        values = pc.cast(values, type)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


_HEX_DIGITS = np.frombuffer(b"0123456789abcdefABCDEF", np.uint8).astype(np.uint16)
_HEX_DIGIT_VALUES = np.r_[np.arange(16), np.arange(10, 16)].astype(np.uint16)
# the byte two hex digits spell, indexed by the digits' bytes read as one little-endian uint16;
# 256 where either is not a hex digit: a lookup a byte halves the work of one a digit
_HEX_PAIRS = np.full(1 << 16, 256, np.uint16)
_HEX_PAIRS[_HEX_DIGITS[:, None] | (_HEX_DIGITS[None, :] << 8)] = (_HEX_DIGIT_VALUES[:, None] << 4) | _HEX_DIGIT_VALUES


def uid_pairs(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Unsorted DataComp uid pairs (dtype u8,u8) of a uid column, as `uid_array` makes them:
    32-hex uids are parsed in bulk (NumPy over the string bytes); any other uid is md5-hashed."""
    uids = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
    uids = pc.cast(uids, pa.string())
    out = np.zeros(len(uids), UID_DTYPE)
    if not len(uids):
        return out
    lengths = pc.utf8_length(uids).to_numpy(zero_copy_only=False)
    hex_rows = np.flatnonzero(lengths == 32)
    if len(hex_rows):
        data = uids.take(pa.array(hex_rows)).cast(pa.binary())  # a fresh array: offset 0
        flat = np.frombuffer(data.buffers()[2], np.uint8)
        starts = np.frombuffer(data.buffers()[1], np.int32)[: len(data)].astype(np.int64)
        contiguous = np.array_equal(starts, np.arange(len(data), dtype=np.int64) * 32)
        chars = flat[: 32 * len(data)].reshape(-1, 32) if contiguous else flat[starts[:, None] + np.arange(32)]
        spelled = _HEX_PAIRS[np.ascontiguousarray(chars).view("<u2")]
        valid = spelled.max(axis=1) < 256
        halves = spelled.astype(np.uint8).view(">u8")  # 16 bytes -> 2 uint64
        out["f0"][hex_rows[valid]], out["f1"][hex_rows[valid]] = halves[valid, 0], halves[valid, 1]
        parsed = np.zeros(len(uids), bool)
        parsed[hex_rows[valid]] = True
        other = np.flatnonzero(~parsed)
    else:
        other = np.arange(len(uids))
    if len(other):
        out[other] = uid_array_unsorted(uids.take(pa.array(other)).to_pylist())
    return out


def uid_array_unsorted(uids: list[str]) -> np.ndarray:
    """DataComp uid pairs of `uids`, in their order; ids that are not 32 hex chars are md5-hashed."""
    hexes = [u if is_hex_uid(u) else hashlib.md5(u.encode("utf-8")).hexdigest() for u in uids]
    return np.array([(int(h[:16], 16), int(h[16:], 16)) for h in hexes], dtype=UID_DTYPE)
