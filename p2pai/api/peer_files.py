"""Peer endpoint routes that let members pull this node's models: byte ranges of the model files
it announces (never any other file), their chunk hashes, and a model's config.

Ranges are asked for in the query string (`offset`, `length`), which the request's signature
covers. Uploads share one rate limit (`--serve-rate`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web

from ..models.digests import MAX_RANGE, SHA256_HEX
from ..models.file_index import FileIndex, IndexedFile
from ..protocol.pull import SharedModel
from ..swarm.payload import FileOffer
from .errors import APIError
from .replies import json_reply
from .state import NodeState

BLOCK = 1 << 20
"""Bytes read from disk and written to the connection at a time."""

peer_file_routes = web.RouteTableDef()


def _file(request: web.Request) -> IndexedFile:
    sha256 = request.match_info["sha256"]
    files = _index(request)
    indexed = files.lookup(sha256) if SHA256_HEX.fullmatch(sha256) else None
    if indexed is None:
        raise APIError(404, f"This node announces no file with the SHA-256 {sha256[:64]!r}", code="file_not_found")
    return indexed


def _index(request: web.Request) -> FileIndex:
    files = NodeState.of(request).files
    if files is None:
        raise APIError(404, "This node shares no model files", code="file_not_found")
    return files


def _int(request: web.Request, name: str) -> int:
    value = request.query.get(name, "")
    if not value.isdigit() or len(value) > 19:
        raise APIError(400, f"`{name}` must be a non-negative integer", param=name)
    return int(value)


@peer_file_routes.get("/p2p/files/{sha256}")
async def file_range(request: web.Request) -> web.StreamResponse:
    """`length` bytes of the file from `offset` (at most MAX_RANGE), or 416 past its end."""
    indexed = _file(request)
    offset, length = _int(request, "offset"), _int(request, "length")
    if not 0 < length <= MAX_RANGE or offset + length > indexed.digest.size:
        raise APIError(416, f"Bytes {offset}+{length} are not within the file ({indexed.digest.size} bytes; "
                            f"at most {MAX_RANGE} at a time)", code="range_not_satisfiable")
    state = NodeState.of(request)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = length
    fd = os.open(indexed.path, os.O_RDONLY)
    try:
        await response.prepare(request)
        while length:
            block = await asyncio.to_thread(os.pread, fd, min(BLOCK, length), offset)
            if not block:
                break  # the file shrank: the answer ends short, and the puller refuses it
            await state.serve_rate.take(len(block))
            await response.write(block)
            offset += len(block)
            length -= len(block)
    finally:
        os.close(fd)
    await response.write_eof()
    return response


@peer_file_routes.get("/p2p/files/{sha256}/chunks")
async def chunk_hashes(request: web.Request) -> web.Response:
    """The file's chunk hashes laid end to end (their SHA-256 is the announced root)."""
    return web.Response(body=_file(request).digest.hashes, content_type="application/octet-stream")


@peer_file_routes.get("/p2p/models/{name}")
async def shared_model(request: web.Request) -> web.Response:
    """A model's config and file, for a peer that installs it."""
    state = NodeState.of(request)
    config = state.manager.config(request.match_info["name"])
    path = config.model_path(state.manager.catalog.models_dir)
    digest = _index(request).digest(path)
    if digest is None:
        raise APIError(404, f"The file of {config.name!r} is not hashed yet (or gone)", code="file_not_found")
    shared = config.model_copy(update={"parameters": config.parameters.model_copy(
        update={"model": Path(config.parameters.model).name})})
    return json_reply(SharedModel(name=config.name, config=shared, file=FileOffer.of(digest)))
