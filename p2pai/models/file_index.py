"""The digests of this node's model files: what it announces to peers, and the only files its peer
endpoint serves.

A file is hashed once in a thread (about 1 s per GB) and its digest kept in the store by path,
size and modification time, so a restart does not hash it again. A file that changes or goes
away leaves the index at the next look (every CHECK_S, or when the catalog changes), and the
endpoint checks a file's size and modification time before it serves a byte of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..event_loop import wait_set
from ..store import Store
from .digests import FileDigest, digest_file

log = logging.getLogger(__name__)

CHECK_S = 5.0


@dataclass(frozen=True)
class IndexedFile:
    path: Path
    mtime_ns: int
    digest: FileDigest

    def unchanged(self) -> bool:
        return _still(self.path, self.digest.size, self.mtime_ns)


class FileIndex:
    def __init__(self, store: Store, paths: Callable[[], list[Path]], on_change: Callable[[], None]) -> None:
        """``paths``: this node's model files now; ``on_change``: the index changed (announce it)."""
        self._store = store
        self._paths = paths
        self._on_change = on_change
        self._by_path: dict[Path, IndexedFile] = {}
        self._by_sha: dict[str, IndexedFile] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def digest(self, path: Path) -> FileDigest | None:
        indexed = self._by_path.get(path)
        return None if indexed is None else indexed.digest

    def lookup(self, sha256: str) -> IndexedFile | None:
        """The file with this SHA-256 if it is one of this node's model files and unchanged since it was hashed."""
        indexed = self._by_sha.get(sha256)
        if indexed is None or not indexed.unchanged():
            self.refresh()
            return None
        return indexed

    def refresh(self) -> None:
        """Look at the model files again now (the catalog changed)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="file-index")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def update(self) -> None:
        """Hash the files that are new or changed; forget those that are gone."""
        current: dict[Path, IndexedFile] = {}
        for path in self._paths():
            try:
                stat = path.stat()
            except OSError:
                continue
            if not path.is_file():
                continue
            indexed = self._by_path.get(path)
            if indexed is None or indexed.mtime_ns != stat.st_mtime_ns or indexed.digest.size != stat.st_size:
                indexed = await self._digest(path, stat.st_size, stat.st_mtime_ns)
            if indexed is not None:
                current[path] = indexed
        if current != self._by_path:
            self._by_path = current
            self._by_sha = {indexed.digest.sha256: indexed for indexed in current.values()}
            self._on_change()

    async def _digest(self, path: Path, size: int, mtime_ns: int) -> IndexedFile | None:
        digest = await self._store.file_digest(path, size, mtime_ns)
        if digest is None:
            try:
                digest = await asyncio.to_thread(digest_file, path)
            except OSError as exc:
                log.warning("cannot hash %s: %s", path, exc)
                return None
            if not _still(path, size, mtime_ns):
                return None  # it changed while it was read (the hash may mix old and new bytes): next time
            await self._store.save_file_digest(path, mtime_ns, digest)
            log.info("hashed %s (%d MB)", path.name, size >> 20)
        return IndexedFile(path, mtime_ns, digest)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.update()
            except Exception:  # a file system surprise must not stop the announcements of the others
                log.exception("could not index the model files")
            await wait_set(self._wake, CHECK_S)


def _still(path: Path, size: int, mtime_ns: int) -> bool:
    """Whether ``path`` still has this size and modification time."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return stat.st_size == size and stat.st_mtime_ns == mtime_ns
