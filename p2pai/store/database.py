"""The node's database (SQLite through aiosqlite, one file in the data dir, WAL mode): what must outlive
a request and survive a restart. No other module opens it; each kind of record has its tables and
its methods on one connection.

- stored responses (the Responses API): responses.py.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from .responses import RESPONSES_SCHEMA, StoredResponses

FILE_NAME = "p2pai.sqlite3"

_SCHEMA = (*RESPONSES_SCHEMA,)


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
        await connection.commit()
        return cls(connection)

    async def close(self) -> None:
        await self._db.close()
