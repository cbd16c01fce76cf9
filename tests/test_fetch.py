"""Fetching one file in verified chunks (models/fetch.py), in-process, from real HTTP servers on
loopback that answer Range requests (aiohttp's FileResponse), with a real store."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from p2pai.models.digests import MIN_CHUNK, chunk_count, chunks_root, digest_file
from p2pai.models.fetch import Fetch, FetchError, RateLimit, Wanted, partial_path
from p2pai.models.sources import HttpSource
from p2pai.store import Store

SIZE = 5 * MIN_CHUNK + 12345  # six chunks, the last one short


@pytest.fixture
def original(tmp_path: Path) -> Path:
    path = tmp_path / "served" / "model.gguf"
    path.parent.mkdir()
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def corrupted(original: Path, tmp_path: Path) -> Path:
    """The same file with one byte changed in its fourth chunk."""
    path = tmp_path / "served" / "corrupted.gguf"
    data = bytearray(original.read_bytes())
    data[3 * MIN_CHUNK + 7] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path)
    yield store
    await store.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class FileServer:
    """A loopback HTTP server of one file, counting the ranges it sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests = 0
        app = web.Application()
        app.router.add_get("/model.gguf", self._serve)
        self.server = TestServer(app, host="127.0.0.1")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        return web.FileResponse(self.path)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/model.gguf"))


@pytest.fixture
async def serve() -> AsyncIterator:
    servers: list[FileServer] = []

    async def start(path: Path) -> FileServer:
        server = FileServer(path)
        await server.server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.server.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_chunks_from_two_sources_are_verified_and_placed(original, tmp_path, store, session, serve) -> None:
    first, second = await serve(original), await serve(original)
    target = tmp_path / "models" / "model.gguf"
    digest = digest_file(original)
    assert digest.chunks == 6 and chunk_count(SIZE, digest.chunk_size) == 6
    fetch = Fetch(Wanted(digest.sha256, SIZE, digest), target,
                  [HttpSource(first.url, session), HttpSource(second.url, session)], store)
    await fetch.run()
    assert sha256(target) == digest.sha256
    assert first.requests and second.requests and first.requests + second.requests == 6
    assert not partial_path(target.parent, digest.sha256).exists()
    assert await store.pulled_chunks(digest.sha256, SIZE, digest.chunk_size) == set()
    stat = target.stat()  # verified whole: the node announces it without reading it again
    assert await store.file_digest(target, stat.st_size, stat.st_mtime_ns) == digest


async def test_corrupt_chunks_are_fetched_again_from_another_source(original, tmp_path, store, session,
                                                                    serve) -> None:
    rotten = tmp_path / "served" / "rotten.gguf"  # one byte changed in every chunk
    data = bytearray(original.read_bytes())
    for offset in range(0, SIZE, MIN_CHUNK):
        data[offset] ^= 0xFF
    rotten.write_bytes(bytes(data))
    good, bad = await serve(original), await serve(rotten)
    digest = digest_file(original)
    target = tmp_path / "models" / "model.gguf"
    fetch = Fetch(Wanted(digest.sha256, SIZE, digest), target,
                  [HttpSource(bad.url, session), HttpSource(good.url, session)], store)
    await fetch.run()
    assert sha256(target) == digest.sha256
    assert bad.requests >= 1 and fetch.progress.corrupt_chunks == bad.requests
    assert fetch.progress.sources == [good.url]  # the bad one was dropped


async def test_a_source_of_corrupt_chunks_alone_never_yields_the_file_and_the_good_part_resumes(
        original, corrupted, tmp_path, store, session, serve) -> None:
    bad = await serve(corrupted)
    digest = digest_file(original)
    target = tmp_path / "models" / "model.gguf"
    with pytest.raises(FetchError, match="chunks are verified and kept"):
        await Fetch(Wanted(digest.sha256, SIZE, digest), target, [HttpSource(bad.url, session)], store).run()
    assert not target.exists()
    kept = await store.pulled_chunks(digest.sha256, SIZE, digest.chunk_size)
    assert kept == {0, 1, 2, 4, 5}  # every chunk but the corrupt one

    good = await serve(original)
    fetch = Fetch(Wanted(digest.sha256, SIZE, digest), target, [HttpSource(good.url, session)], store)
    await fetch.run()
    assert good.requests == 1  # only the missing chunk
    assert fetch.progress.resumed == SIZE - MIN_CHUNK
    assert sha256(target) == digest.sha256


async def test_a_wrong_hash_never_becomes_the_file(original, tmp_path, store, session, serve) -> None:
    """Without chunk hashes (an HTTP-only file) the whole file is checked: a mismatch throws it all away."""
    server = await serve(original)
    target = tmp_path / "models" / "model.gguf"
    wrong = "0" * 64
    with pytest.raises(FetchError, match="SHA-256"):
        await Fetch(Wanted(wrong, SIZE), target, [HttpSource(server.url, session)], store).run()
    assert not target.exists() and not partial_path(target.parent, wrong).exists()
    assert await store.pulled_chunks(wrong, SIZE, MIN_CHUNK) == set()


async def test_chunk_hashes_that_do_not_match_the_file_never_yield_it(original, tmp_path, store, session,
                                                                        serve) -> None:
    """A lying hash list (consistent with the lie) passes chunk checks but not the whole-file check."""
    server = await serve(original)
    digest = digest_file(original)
    lie = digest.__class__("1" * 64, SIZE, digest.chunk_size, digest.hashes)
    target = tmp_path / "models" / "model.gguf"
    with pytest.raises(FetchError, match="chunk hashes were wrong"):
        await Fetch(Wanted(lie.sha256, SIZE, lie), target, [HttpSource(server.url, session)], store).run()
    assert not target.exists()
    assert chunks_root(digest.hashes) == digest.root


async def test_not_enough_disk_space_is_refused_before_anything_is_fetched(original, tmp_path, store, session,
                                                                           serve) -> None:
    server = await serve(original)
    huge = 1 << 60
    with pytest.raises(FetchError, match="not enough disk space"):
        await Fetch(Wanted("2" * 64, huge), tmp_path / "models" / "huge.gguf",
                    [HttpSource(server.url, session)], store).run()
    assert server.requests == 0


async def test_the_rate_limit_bounds_the_pull(original, tmp_path, store, session, serve) -> None:
    server = await serve(original)
    digest = digest_file(original)
    rate = 4 * MIN_CHUNK  # bytes per second: the six chunks need at least 1.25 s after the first
    started = time.monotonic()
    await Fetch(Wanted(digest.sha256, SIZE, digest), tmp_path / "models" / "model.gguf",
                [HttpSource(server.url, session)], store, RateLimit(rate)).run()
    assert time.monotonic() - started >= (SIZE - MIN_CHUNK) / rate * 0.95


async def test_a_server_without_range_requests_is_refused(original, tmp_path, session) -> None:
    app = web.Application()

    async def whole(request: web.Request) -> web.Response:
        return web.Response(body=original.read_bytes())

    app.router.add_get("/model.gguf", whole)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        with pytest.raises(Exception, match="range requests"):
            await HttpSource(str(server.make_url("/model.gguf")), session).size()
    finally:
        await server.close()
