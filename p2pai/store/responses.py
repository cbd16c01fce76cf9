"""Stored responses of the Responses API: the response object, the conversation that led to it (for
`previous_response_id`) and its stream's events as sent (for `GET ...?stream=true` replay).

A response is written once when it ends (one transaction), and a background one also when it is
created, so that after a crash it is found, and reported as failed, rather than lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiosqlite

RESPONSES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS responses (
        id TEXT PRIMARY KEY, created REAL NOT NULL, updated REAL NOT NULL, finished INTEGER NOT NULL,
        response TEXT NOT NULL, conversation TEXT NOT NULL, events BLOB NOT NULL)""",
)


@dataclass(frozen=True)
class StoredResponse:
    response: str
    """The response object's JSON."""
    conversation: str
    """The chat messages its input amounted to (previous responses included), as JSON."""
    events: bytes
    """Its stream's server-sent events, as sent."""
    finished: bool


class StoredResponses:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection

    async def save(self, ident: str, response: str, conversation: str, events: bytes, finished: bool) -> None:
        now = time.time()
        await self._db.execute(
            "INSERT INTO responses (id, created, updated, finished, response, conversation, events) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET updated = excluded.updated, "
            "finished = excluded.finished, response = excluded.response, events = excluded.events",
            (ident, now, now, int(finished), response, conversation, events))
        await self._db.commit()

    async def get(self, ident: str) -> StoredResponse | None:
        async with self._db.execute("SELECT response, conversation, events, finished FROM responses WHERE id = ?",
                                    (ident,)) as rows:
            row = await rows.fetchone()
        return None if row is None else StoredResponse(row[0], row[1], bytes(row[2]), bool(row[3]))

    async def delete(self, ident: str) -> bool:
        cursor = await self._db.execute("DELETE FROM responses WHERE id = ?", (ident,))
        await self._db.commit()
        return cursor.rowcount > 0

    async def unfinished(self) -> list[tuple[str, StoredResponse]]:
        """Responses whose node stopped (or was killed) while they ran."""
        async with self._db.execute(
                "SELECT id, response, conversation, events FROM responses WHERE finished = 0") as rows:
            return [(row[0], StoredResponse(row[1], row[2], bytes(row[3]), False)) async for row in rows]
