"""What outlives a request and survives a restart, in one SQLite database (aiosqlite)."""

from .database import Store

__all__ = ["Store"]
