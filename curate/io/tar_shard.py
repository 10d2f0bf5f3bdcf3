"""WebDataset tar shards written fast: USTAR headers built in bulk with NumPy, byte for byte the
ones Python's tarfile writes for the same members."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

NAME_BYTES = 100  # a USTAR member name
_BLOCK = 512
_RECORD = 20 * _BLOCK  # tarfile ends an archive padded to a whole record
_SIZE, _CHECKSUM = slice(124, 136), slice(148, 156)  # header fields: 11 octal digits and a NUL; 6, a NUL, a space
_MAX_SIZE = 8**11 - 1


def _ustar_template() -> np.ndarray:
    """The header Python's tarfile writes for a read-only (0444) regular file of mtime 0, with the
    name, size and checksum fields blank (the checksum field counts as eight spaces)."""
    info = tarfile.TarInfo("")
    info.mode, info.mtime = 0o444, 0
    header = np.frombuffer(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"), np.uint8).copy()
    header[_SIZE] = 0
    header[_CHECKSUM] = ord(" ")
    return header


_TEMPLATE = _ustar_template()
_ZEROS = bytes(_RECORD)
_PADS = [bytes(n) for n in range(_BLOCK)]  # the zeros after a member of each size mod 512
_WRITE_BUFFER = 1 << 20  # fewer, larger writes: 30% less CPU a member than the default 8 KiB


def _octal(values: np.ndarray, digits: int) -> np.ndarray:
    """Each value as `digits` zero-padded ASCII octal digits: a (len(values), digits) byte array."""
    shifts = 3 * np.arange(digits - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] >> shifts) & 7).astype(np.uint8) + ord("0")


def ustar_headers(names: list[str], sizes: np.ndarray) -> np.ndarray:
    """USTAR headers (one 512-byte row each) for regular files `names` of `sizes` bytes: the bytes
    Python's tarfile writes for them (mode 0444, mtime 0, no owner), made all at once with NumPy."""
    try:
        encoded = np.array(names, dtype=np.bytes_)
    except UnicodeEncodeError as exc:
        raise ValueError(f"tar member names must be ASCII: {exc}") from exc
    if encoded.dtype.itemsize > NAME_BYTES:
        bad = names[int(np.argmax(np.char.str_len(encoded)))]
        raise ValueError(f"tar member name {bad!r} is longer than USTAR's {NAME_BYTES} bytes")
    if len(sizes) and sizes.max() > _MAX_SIZE:
        raise ValueError(f"a tar member of {sizes.max()} bytes is larger than USTAR's {_MAX_SIZE}")
    headers = np.tile(_TEMPLATE, (len(names), 1))
    padded = np.frombuffer(encoded.astype(f"S{NAME_BYTES}").tobytes(), np.uint8)
    headers[:, :NAME_BYTES] = padded.reshape(-1, NAME_BYTES)
    headers[:, _SIZE.start : _SIZE.stop - 1] = _octal(sizes, 11)
    checksums = headers.sum(axis=1, dtype=np.int64)
    headers[:, _CHECKSUM.start : _CHECKSUM.stop - 2] = _octal(checksums, 6)
    headers[:, _CHECKSUM.stop - 2] = 0
    return headers


class TarShard:
    """A tar file written a batch of members at a time, byte for byte as Python's tarfile writes the
    same members in USTAR format (readable by tarfile, webdataset and curate's reader), without
    its cost of ~70 us a member: the headers are built in bulk (`ustar_headers`)."""

    def __init__(self, path: Path):
        self._file = open(path, "wb", buffering=_WRITE_BUFFER)
        self._offset = 0

    def add(self, names: list[str], payloads: list[bytes]) -> None:
        """Append members `names[i]` holding `payloads[i]`, in order."""
        sizes = np.fromiter(map(len, payloads), np.int64, len(payloads))
        headers = memoryview(ustar_headers(names, sizes).tobytes())
        pads = (-sizes % _BLOCK).tolist()
        pieces = []
        for i, (payload, pad) in enumerate(zip(payloads, pads)):
            pieces += (headers[i * _BLOCK : (i + 1) * _BLOCK], payload, _PADS[pad])
        self._file.writelines(pieces)
        self._offset += len(names) * _BLOCK + int(sizes.sum()) + sum(pads)

    def close(self) -> None:
        """End the archive (two zero blocks, then zeros to a whole record) and close the file."""
        end = self._offset + 2 * _BLOCK
        self._file.write(_ZEROS[: 2 * _BLOCK + (-end % _RECORD)])
        self._file.close()
