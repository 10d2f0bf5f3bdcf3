"""Near-duplicate dedup stage: perceptual hashes (pHash) searched with a FAISS binary index."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.schema import set_column
from curate.stage import GlobalStage, StageConfig, Verdict, map_rows

HASH_BITS = 64


def phash(data: bytes) -> int:
    """64-bit DCT perceptual hash (imagehash.phash) of an encoded image, as an unsigned int."""
    import imagehash
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        bits = imagehash.phash(im, hash_size=8).hash.flatten()
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


def find_near_duplicates(uids: list[str], hashes: np.ndarray, radius: int) -> dict[str, str]:
    """Map each dropped uid to the uid kept in its place.

    Samples are visited in uid order; a sample not yet dropped is kept and drops every
    not-yet-visited sample within `radius` bits of it (greedy, like non-maximum
    suppression, so a chain a~b~c does not merge a and c unless they are close too).
    """
    order = np.argsort(np.array(uids, dtype=object), kind="stable")
    codes = as_codes(hashes[order])
    lims, _, neighbours = hamming_index(codes, radius).range_search(codes, radius + 1)  # FAISS keeps distances < radius
    dropped: dict[int, int] = {}
    for i in range(len(order)):
        if i in dropped:
            continue
        for j in neighbours[lims[i] : lims[i + 1]]:
            if j > i and j not in dropped:
                dropped[int(j)] = i
    return {uids[order[j]]: uids[order[i]] for j, i in dropped.items()}


class NearDedupConfig(StageConfig):
    """Parameters of the near_dedup stage."""

    radius: int = Field(4, ge=0, le=31, description="Hamming distance (of 64 bits) at or below which images are near-duplicates")


class NearDedup(GlobalStage):
    """Drop perceptual near-duplicates: pHash within a Hamming radius (FAISS binary index); the smallest uid is kept."""

    name = "near_dedup"
    Config = NearDedupConfig
    reads = ("uid", "image")
    writes = {"phash": pa.int64()}
    reasons = ("phash_failed", "near_duplicate")

    def process(self, table: pa.Table) -> Verdict:
        hashes, failures = map_rows(table.column("image").to_pylist(), phash)
        signed = [None if h is None else int(np.uint64(h).view(np.int64)) for h in hashes]
        verdict = Verdict(set_column(table, "phash", signed, pa.int64()))
        for i, message in failures.items():
            verdict.reject(i, "phash_failed", message)
        return verdict

    def partial(self, table: pa.Table) -> tuple[list[str], np.ndarray]:
        return table.column("uid").to_pylist(), table.column("phash").to_numpy().view(np.uint64)

    def merge(self, partials: list[tuple[list[str], np.ndarray]]) -> tuple[list[str], np.ndarray]:
        uids = [u for part_uids, _ in partials for u in part_uids]
        hashes = np.concatenate([h for _, h in partials]) if partials else np.zeros(0, np.uint64)
        return uids, hashes

    def finalize(self, state: tuple[list[str], np.ndarray]) -> dict[str, str]:
        uids, hashes = state
        return find_near_duplicates(uids, hashes, self.config.radius) if uids else {}

    def apply(self, table: pa.Table, state: dict[str, str]) -> Verdict:
        verdict = Verdict(table)
        for i, uid in enumerate(table.column("uid").to_pylist()):
            if uid in state:
                verdict.reject(i, "near_duplicate", state[uid])
        return verdict
