"""Fetch one file in chunks from several sources at once, verified, resumable and rate-limited.

Sources are peers of the swarm, HTTP(S) servers or the pieces of a built-in model; each
delivers byte ranges. Every chunk is checked against its hash (when the file's hash list is
known) before it is written; a bad chunk is fetched again, from another source if there is one,
and a source that keeps failing is dropped. The file grows under a temporary name; the chunks
that are on disk and verified are recorded in the store (after an fdatasync), so an interrupted
pull resumes where it stopped. Only a file whose whole SHA-256 matches is renamed into place: a
partial or unverified file never becomes a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..event_loop import wait_set, within
from ..store import Store
from .digests import READ_BLOCK, FileDigest, chunk_count, chunk_size_for, chunk_span, digest_file

log = logging.getLogger(__name__)

IN_FLIGHT_PER_SOURCE = 2
"""Requests each source has open at once: one is answered while the next is on its way."""
MAX_FAILURES = 3
"""Failed requests (or corrupt chunks) after which a source is dropped for this pull."""
CHUNK_TIMEOUT_S = 120.0
SOURCE_WAIT_S = 30.0
"""How long a pull whose sources are all gone waits for new ones (a restarted peer) before it fails,
counted from the last chunk it received."""
SAVE_EVERY_S = 1.0
"""How often the verified chunks on disk are recorded (after an fdatasync)."""
DISK_MARGIN = 64 << 20
"""Free space left over after a pull, at least."""


class FetchError(Exception):
    """The file could not be fetched; the message says why and what is kept for a resume."""


class SourceError(Exception):
    """A source could not deliver a range now; it may be tried again."""


class SourceGone(SourceError):
    """A source cannot deliver this file at all (no longer has it, refuses ranges): drop it."""


class Source(Protocol):
    """Where chunks come from: a peer, an HTTP(S) server, a built-in model's pieces."""

    label: str
    """Names it in logs and job status; two sources with one label are one source."""

    async def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset``; SourceError (or SourceGone) otherwise."""

    async def close(self) -> None:
        """Release connections."""


class RateLimit:
    """Bytes per second over everything that takes from it (None: unlimited).

    Each taker is scheduled after the bytes already granted: the first request goes at
    once, and over any stretch of time the total stays within the rate."""

    def __init__(self, bytes_per_second: float | None) -> None:
        self.rate = bytes_per_second
        self._next = 0.0

    async def take(self, size: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + size / self.rate
        if start > now:
            await asyncio.sleep(start - now)


@dataclass
class Progress:
    total: int
    done: int = 0
    resumed: int = 0
    """Bytes found verified on disk from an earlier attempt."""
    bytes_per_second: float = 0.0
    sources: list[str] = field(default_factory=list)
    corrupt_chunks: int = 0


@dataclass
class _SourceState:
    source: Source
    failures: int = 0
    dropped: bool = False
    started: bool = False
    failed_chunks: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Wanted:
    """The file a pull must produce."""

    sha256: str
    size: int
    hashes: FileDigest | None = None
    """Its chunk hashes, checked against an announced root; None: only the whole file is checked."""

    @property
    def chunk_size(self) -> int:
        return self.hashes.chunk_size if self.hashes is not None else chunk_size_for(self.size)


class Fetch:
    """One pull of one file into ``target``."""

    def __init__(self, wanted: Wanted, target: Path, sources: list[Source], store: Store,
                 rate: RateLimit | None = None, on_progress: Callable[[Progress], None] | None = None,
                 more_sources: Callable[[], Awaitable[list[Source]]] | None = None) -> None:
        """``more_sources``: sources that may have appeared since (asked when all are gone)."""
        self.wanted = wanted
        self.target = target
        self.partial = partial_path(target.parent, wanted.sha256)
        self._states = [_SourceState(source) for source in sources]
        self._store = store
        self._rate = rate or RateLimit(None)
        self._on_progress = on_progress or (lambda progress: None)
        self._more_sources = more_sources
        self._chunks = chunk_count(wanted.size, wanted.chunk_size)
        self._queue: deque[int] = deque()
        self._done: set[int] = set()
        self._saved = 0
        self._changed = asyncio.Event()
        self.progress = Progress(total=wanted.size)
        self._started = self._last_chunk = 0.0
        self._fd = -1

    async def run(self) -> None:
        """Fetch, verify and rename into place; FetchError if it cannot (the verified part is kept)."""
        wanted = self.wanted
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists():
            self._done = await self._store.pulled_chunks(wanted.sha256, wanted.size, wanted.chunk_size)
            self._saved = len(self._done)
        else:
            await self._store.forget_pull(wanted.sha256)
        self._check_space()
        self._fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(self._fd).st_size != wanted.size:
                os.ftruncate(self._fd, wanted.size)
            self._queue.extend(index for index in range(self._chunks) if index not in self._done)
            self.progress.done = self.progress.resumed = sum(self._length(i) for i in self._done)
            self._started = self._last_chunk = time.monotonic()
            await self._fetch_all()
        finally:
            await self._save()  # what is on disk now counts for a resume, whatever stopped the pull
            os.close(self._fd)
            for state in self._states:
                await state.source.close()
        await self._verify_and_place()

    # Fetching

    async def _fetch_all(self) -> None:
        workers: set[asyncio.Task[None]] = set()
        saver = asyncio.create_task(self._save_forever())
        try:
            while len(self._done) < self._chunks:
                for state in self._states:
                    if not state.started:
                        state.started = True
                        workers |= {asyncio.create_task(self._worker(state)) for _ in range(IN_FLIGHT_PER_SOURCE)}
                self._report()
                if not workers:
                    if not await self._find_sources():
                        raise FetchError(self._stopped_message())
                    continue
                finished, workers = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    task.result()  # a bug in a worker (not a source failure) ends the pull
        finally:
            for task in [*workers, saver]:
                task.cancel()
            for task in [*workers, saver]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _find_sources(self) -> bool:
        """Look for sources once a second (a restarted peer, one that failed for a while) until
        SOURCE_WAIT_S have passed without a chunk; True if some came."""
        if self._more_sources is None:
            return False
        while time.monotonic() < self._last_chunk + SOURCE_WAIT_S:
            await asyncio.sleep(1.0)
            fresh = await self._more_sources()
            if fresh:
                log.info("pull of %s: sources %s", self.target.name, ", ".join(s.label for s in fresh))
                self._states = [_SourceState(source) for source in fresh]
                return True
        return False

    async def _worker(self, state: _SourceState) -> None:
        """Take chunks until the file is complete or the source is dropped."""
        while not state.dropped and len(self._done) < self._chunks:
            index = self._next_chunk(state)
            if index is None and self._queue and not self._others_alive(state):
                index = self._queue.popleft()  # only chunks it failed are left, and nobody else to ask
            if index is None:  # nothing for it now: the rest is in flight elsewhere, or for others to take
                await wait_set(self._changed, 1.0)
                continue
            offset, length = self._span(index)
            try:
                await self._rate.take(length)
                data = await within(state.source.read(offset, length), CHUNK_TIMEOUT_S)
                if len(data) != length:
                    raise SourceError(f"sent {len(data)} bytes for a chunk of {length}")
                if not await self._verified(index, data):
                    self.progress.corrupt_chunks += 1
                    raise SourceError(f"sent chunk {index} with the wrong hash")
            except (SourceError, asyncio.TimeoutError) as exc:
                self._failed(state, index, exc)
                continue
            except BaseException:
                self._queue.appendleft(index)  # cancelled: the chunk is not done
                raise
            await asyncio.to_thread(os.pwrite, self._fd, data, offset)
            self._done.add(index)
            self._last_chunk = time.monotonic()
            self.progress.done += length
            self._report()
            self._notify()

    def _notify(self) -> None:
        """Wake the workers waiting for a chunk to take."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _next_chunk(self, state: _SourceState) -> int | None:
        for index in self._queue:
            if index not in state.failed_chunks:
                self._queue.remove(index)
                return index
        return None

    def _others_alive(self, state: _SourceState) -> bool:
        return any(not other.dropped for other in self._states if other is not state)

    def _failed(self, state: _SourceState, index: int, exc: BaseException) -> None:
        self._queue.appendleft(index)
        state.failed_chunks.add(index)
        state.failures += 1
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, SourceGone) or state.failures >= MAX_FAILURES:
            if not state.dropped:
                log.warning("pull of %s: dropping source %s (%s)", self.target.name, state.source.label, reason)
            state.dropped = True
        else:
            log.info("pull of %s: %s failed on chunk %d (%s); fetching it again", self.target.name,
                     state.source.label, index, reason)
        self._notify()

    async def _verified(self, index: int, data: bytes) -> bool:
        hashes = self.wanted.hashes
        if hashes is None:
            return True
        digest = await asyncio.to_thread(_sha256, data) if len(data) > READ_BLOCK else _sha256(data)
        return digest == hashes.chunk_hash(index)

    def _span(self, index: int) -> tuple[int, int]:
        return chunk_span(index, self.wanted.size, self.wanted.chunk_size)

    def _length(self, index: int) -> int:
        return self._span(index)[1]

    # Progress and resume state

    def _report(self) -> None:
        progress = self.progress
        elapsed = time.monotonic() - self._started
        progress.bytes_per_second = (progress.done - progress.resumed) / elapsed if elapsed > 0 else 0.0
        progress.sources = [state.source.label for state in self._states if not state.dropped]
        self._on_progress(progress)

    async def _save_forever(self) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            await self._save()

    async def _save(self) -> None:
        """Record the chunks on disk: synced first, so that no chunk is recorded unwritten."""
        if len(self._done) == self._saved:
            return
        done = set(self._done)
        await asyncio.to_thread(os.fdatasync, self._fd)
        await self._store.save_pulled_chunks(self.wanted.sha256, self.wanted.size, self.wanted.chunk_size, done)
        self._saved = len(done)

    def _stopped_message(self) -> str:
        failures = "; ".join(f"{s.source.label}: {s.failures} failures" for s in self._states) or "no source"
        kept = len(self._done)
        return (f"no source could deliver the rest of {self.target.name} ({failures}); {kept} of {self._chunks} "
                "chunks are verified and kept: apply again to resume")

    def _check_space(self) -> None:
        allocated = self.partial.stat().st_blocks * 512 if self.partial.exists() else 0
        needed = self.wanted.size - allocated + DISK_MARGIN
        free = shutil.disk_usage(self.partial.parent).free
        if needed > free:
            raise FetchError(f"not enough disk space for {self.target.name}: it needs {_mb(needed)} MB more "
                             f"(with a margin of {_mb(DISK_MARGIN)} MB), {_mb(free)} MB are free "
                             f"in {self.partial.parent}")

    # The end

    async def _verify_and_place(self) -> None:
        hashes = self.wanted.hashes
        if hashes is None:  # the chunk hashes too, in the same pass: this node announces the file next
            hashes = await asyncio.to_thread(digest_file, self.partial)
            sha256 = hashes.sha256
        else:
            sha256 = await asyncio.to_thread(_sha256_file, self.partial)
        if sha256 != self.wanted.sha256:
            self.partial.unlink(missing_ok=True)
            await self._store.forget_pull(self.wanted.sha256)
            raise FetchError(f"{self.target.name} has the SHA-256 {sha256}, not {self.wanted.sha256}: it was "
                             "thrown away" + (" (its sources' chunk hashes were wrong)" if self.wanted.hashes else ""))
        os.replace(self.partial, self.target)
        _sync_dir(self.target.parent)
        await self._store.forget_pull(self.wanted.sha256)
        # Verified whole, so its hash list is right: the file index need not read it again.
        await self._store.save_file_digest(self.target, self.target.stat().st_mtime_ns, hashes)


def partial_path(models_dir: Path, sha256: str) -> Path:
    """Where a pull of ``sha256`` grows: outside the files the catalog reads."""
    return models_dir / ".pulls" / f"{sha256}.partial"


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as source:
        while block := source.read(READ_BLOCK * 4):
            digest.update(block)
    return digest.hexdigest()


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mb(size: int) -> int:
    return size // (1 << 20)
