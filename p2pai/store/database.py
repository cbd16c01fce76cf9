"""The node's database (SQLite through aiosqlite, one file in the data dir, WAL mode): what must outlive
a request and survive a restart. No other module opens it; each kind of record has its tables and
its methods on one connection.

- stored responses (the Responses API): responses.py;
- model jobs (LocalAI's /models/jobs): kept 7 days after they end;
- the digests of this node's model files, by path, size and modification time (hashing a large
  file takes seconds; its digest is announced to peers);
- the chunks of each unfinished pull that are verified and on disk, so a pull resumes where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiosqlite

from ..models.digests import FileDigest
from ..protocol.localai import JobStatus
from .responses import RESPONSES_SCHEMA, StoredResponses

FILE_NAME = "p2pai.sqlite3"
JOBS_KEPT_S = 7 * 86400

_SCHEMA = (
    *RESPONSES_SCHEMA,
    """CREATE TABLE IF NOT EXISTS model_jobs (
        uuid TEXT PRIMARY KEY, created REAL NOT NULL, updated REAL NOT NULL, status TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS file_digests (
        path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
        chunk_size INTEGER NOT NULL, hashes BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS pulls (
        sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, chunk_size INTEGER NOT NULL, done BLOB NOT NULL)""",
)


class Store:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection
        self.responses = StoredResponses(connection)

    @classmethod
    async def open(cls, data_dir: Path) -> Store:
        connection = await aiosqlite.connect(data_dir / FILE_NAME)
        await connection.execute("PRAGMA journal_mode=WAL")
        for statement in _SCHEMA:
            await connection.execute(statement)
        await connection.execute("DELETE FROM model_jobs WHERE updated < ?", (time.time() - JOBS_KEPT_S,))
        await connection.commit()
        return cls(connection)

    async def close(self) -> None:
        await self._db.close()

    # Model jobs

    async def save_job(self, uuid: str, status: JobStatus) -> None:
        now = time.time()
        await self._db.execute(
            "INSERT INTO model_jobs (uuid, created, updated, status) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(uuid) DO UPDATE SET updated = excluded.updated, status = excluded.status",
            (uuid, now, now, status.model_dump_json()))
        await self._db.commit()

    async def job(self, uuid: str) -> JobStatus | None:
        async with self._db.execute("SELECT status FROM model_jobs WHERE uuid = ?", (uuid,)) as rows:
            row = await rows.fetchone()
        return None if row is None else JobStatus.model_validate_json(row[0])

    async def jobs(self) -> dict[str, JobStatus]:
        async with self._db.execute("SELECT uuid, status FROM model_jobs ORDER BY created") as rows:
            return {uuid: JobStatus.model_validate_json(status) async for uuid, status in rows}

    async def end_unfinished_jobs(self, message: str) -> None:
        """At start: the jobs a stopped (or killed) node left running end with ``message``."""
        for uuid, status in (await self.jobs()).items():
            if not status.processed:
                await self.save_job(uuid, status.model_copy(update={"processed": True, "error": message,
                                                                    "message": message}))

    # Digests of this node's model files

    async def file_digest(self, path: Path, size: int, mtime_ns: int) -> FileDigest | None:
        async with self._db.execute(
                "SELECT sha256, chunk_size, hashes FROM file_digests WHERE path = ? AND size = ? AND mtime_ns = ?",
                (str(path), size, mtime_ns)) as rows:
            row = await rows.fetchone()
        return None if row is None else FileDigest(row[0], size, row[1], bytes(row[2]))

    async def save_file_digest(self, path: Path, mtime_ns: int, digest: FileDigest) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO file_digests (path, size, mtime_ns, sha256, chunk_size, hashes) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (str(path), digest.size, mtime_ns, digest.sha256, digest.chunk_size, digest.hashes))
        await self._db.commit()

    # Unfinished pulls

    async def pulled_chunks(self, sha256: str, size: int, chunk_size: int) -> set[int]:
        """The chunks of an earlier pull of this file that are verified and on disk."""
        async with self._db.execute("SELECT done FROM pulls WHERE sha256 = ? AND size = ? AND chunk_size = ?",
                                    (sha256, size, chunk_size)) as rows:
            row = await rows.fetchone()
        return set() if row is None else _indexes(bytes(row[0]))

    async def save_pulled_chunks(self, sha256: str, size: int, chunk_size: int, done: set[int]) -> None:
        await self._db.execute("INSERT OR REPLACE INTO pulls (sha256, size, chunk_size, done) VALUES (?, ?, ?, ?)",
                               (sha256, size, chunk_size, _bitmap(done)))
        await self._db.commit()

    async def forget_pull(self, sha256: str) -> None:
        await self._db.execute("DELETE FROM pulls WHERE sha256 = ?", (sha256,))
        await self._db.commit()


def _bitmap(indexes: set[int]) -> bytes:
    bits = bytearray((max(indexes, default=-1) + 8) // 8)
    for index in indexes:
        bits[index // 8] |= 1 << (index % 8)
    return bytes(bits)


def _indexes(bitmap: bytes) -> set[int]:
    return {byte * 8 + bit for byte, value in enumerate(bitmap) for bit in range(8) if value >> bit & 1}
