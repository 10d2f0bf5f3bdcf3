"""Perceptual hash codes for copy detection (near_dedup's and decontaminate's hash methods):
a 64-bit pHash of the image, or `copy_hashes`' 192-bit code (pHash, dHash and wavelet hash of
the image normalised against the edits a copy survives); their Hamming distances, and FAISS
binary indexes exact within a radius (the pigeonhole layout that curate.pigeonhole shuffles by)."""

from __future__ import annotations

import io
import math

import numpy as np

HASH_BITS = 64
HASH_WORDS = 3  # the `hashes` code: pHash, dHash and wavelet hash, 64 bits each
NORMAL_SIDE = 64  # the `hashes` method hashes a normalised 64 x 64 grey image
CHUNK_BITS_MAX = 32  # a bucket key holds the chunk index above 32 bits of chunk value


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

