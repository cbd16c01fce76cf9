"""How a model file is identified and checked piece by piece: its SHA-256, its size, and the
SHA-256 of each fixed-size chunk.

A node announces a file's SHA-256, size and chunk root: the SHA-256 of its chunk hashes laid end
to end (a hash list, a Merkle tree of depth one). A puller fetches the list from any source,
checks it against the root, and can then check every chunk as it arrives, before the whole file
is there; the whole file's SHA-256 is checked once more at the end. The chunk size follows from
the file's size, so every node computes the same list for the same file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

MIN_CHUNK = 4 << 20
"""4 MiB: large enough that a request per chunk costs nothing, small enough to spread a 100 MB
model over several sources and to lose little when a source dies."""
MAX_CHUNKS = 1 << 16
"""A hash list stays within 2 MiB; a larger file gets larger chunks."""
MAX_RANGE = 64 << 20
"""The most a peer sends in one answer: the chunk size of a 4 TiB file, the largest one announced."""
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
READ_BLOCK = 1 << 20


def chunk_size_for(size: int) -> int:
    chunk = MIN_CHUNK
    while chunk * MAX_CHUNKS < size:
        chunk *= 2
    return chunk


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def chunk_span(index: int, size: int, chunk_size: int) -> tuple[int, int]:
    """Offset and length of chunk ``index``."""
    offset = index * chunk_size
    return offset, min(chunk_size, size - offset)


def chunks_root(hashes: bytes) -> str:
    return hashlib.sha256(hashes).hexdigest()


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    size: int
    chunk_size: int
    hashes: bytes
    """The chunk hashes laid end to end, 32 bytes each."""

    @property
    def root(self) -> str:
        return chunks_root(self.hashes)

    @property
    def chunks(self) -> int:
        return len(self.hashes) // 32

    def chunk_hash(self, index: int) -> bytes:
        return self.hashes[index * 32 : index * 32 + 32]

    def span(self, index: int) -> tuple[int, int]:
        return chunk_span(index, self.size, self.chunk_size)


def digest_file(path: Path) -> FileDigest:
    """Read ``path`` once: its SHA-256 and its chunk hashes (about 1 s per GB with SHA extensions)."""
    whole = hashlib.sha256()
    chunk_size = chunk_size_for(path.stat().st_size)
    hashes: list[bytes] = []
    size = 0
    with path.open("rb", buffering=0) as source:
        while True:
            chunk = hashlib.sha256()
            left = chunk_size
            while left:
                block = source.read(min(READ_BLOCK, left))
                if not block:
                    break
                whole.update(block)
                chunk.update(block)
                left -= len(block)
                size += len(block)
            if left == chunk_size and hashes:
                break
            hashes.append(chunk.digest())
            if left:
                break
    if chunk_size != chunk_size_for(size):
        raise OSError(f"{path} changed while it was read")
    return FileDigest(whole.hexdigest(), size, chunk_size, b"".join(hashes))
