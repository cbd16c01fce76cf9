"""The peer endpoint's file routes, in-process on loopback over TLS with signed requests: they serve
byte ranges and chunk hashes of the model files this node announces, and nothing else."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer

from p2pai.api.app import create_app
from p2pai.api.peer_app import create_peer_app, peer_guard, peer_runner
from p2pai.api.peer_site import PeerSite
from p2pai.api.state import NodeState
from p2pai.identity import Identity
from p2pai.models.catalog import build_catalog
from p2pai.models.digests import FileDigest, chunks_root
from p2pai.models.file_index import FileIndex
from p2pai.routing.peer_auth import sign
from p2pai.routing.peer_tls import PeerTLS
from p2pai.serving.manager import ModelManager
from p2pai.store import Store
from p2pai.token import derive_keys, new_token, parse_token

HOST = "127.0.0.1"


@dataclass
class Endpoint:
    url: str
    node_id: str
    key: bytes
    member: PeerTLS
    index: FileIndex
    model: Path
    state: NodeState

    async def get(self, path: str, signed: bool = True) -> httpx.Response:
        headers = sign(self.key, self.member.peer_id, self.node_id, "GET", path, b"") if signed else {}
        async with httpx.AsyncClient(base_url=self.url, verify=self.member.client_context(), timeout=10) as client:
            return await client.get(path, headers=headers)

    @property
    def digest(self) -> FileDigest:
        digest = self.index.digest(self.model)
        assert digest is not None
        return digest


@pytest.fixture
def models(tmp_path: Path, tiny_path: Path) -> Path:
    """A model, its config and a file that is no model."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.gguf").write_bytes(tiny_path.read_bytes())
    (models / "tiny.yaml").write_text("name: tiny\nparameters:\n  model: tiny.gguf\ncontext_size: 256\n")
    (models / "secret.txt").write_bytes(b"not a model")
    return models


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
async def endpoint(tmp_path: Path, models: Path) -> AsyncIterator[Endpoint]:
    model = models / "tiny.gguf"
    keys = derive_keys(parse_token(new_token()))
    node = Identity.generate()
    tls = PeerTLS.load_or_create(tmp_path / "node", keys.peer_ca_key, node)
    store = await Store.open(tmp_path)
    manager = ModelManager(build_catalog(models, tmp_path, []), threads=1)
    index = FileIndex(store, lambda: [model], lambda: None)
    await index.update()
    state = NodeState(manager, node_id=node.peer_id, version="test", ready=True, files=index)
    guard = peer_guard(keys.http_key, node.peer_id, tls)
    runner = peer_runner(create_peer_app(state, guard))
    await runner.setup()
    site = PeerSite(runner, HOST, 0, tls.server_context(), guard.refusals)
    await site.start()
    yield Endpoint(f"https://{HOST}:{site.port}", node.peer_id, keys.http_key,
                   PeerTLS.load_or_create(tmp_path / "member", keys.peer_ca_key, Identity.generate()), index, model,
                   state)
    await runner.cleanup()
    await manager.close()
    await store.close()


async def test_ranges_and_chunk_hashes_of_an_announced_file(endpoint: Endpoint) -> None:
    digest, data = endpoint.digest, endpoint.model.read_bytes()
    assert digest.sha256 == sha256_of(endpoint.model)
    reply = await endpoint.get(f"/p2p/files/{digest.sha256}?offset=100&length=5000")
    assert reply.status_code == 200 and reply.content == data[100:5100]
    whole = await endpoint.get(f"/p2p/files/{digest.sha256}?offset=0&length={len(data)}")
    assert whole.content == data
    hashes = await endpoint.get(f"/p2p/files/{digest.sha256}/chunks")
    assert hashes.content == digest.hashes and chunks_root(hashes.content) == digest.root
    shared = (await endpoint.get("/p2p/models/tiny")).json()
    assert shared["config"]["parameters"]["model"] == "tiny.gguf"  # no path of the serving node
    assert shared["file"] == {"sha256": digest.sha256, "size": len(data), "chunk_size": digest.chunk_size,
                              "root": digest.root}


async def test_nothing_but_announced_model_files_is_served(endpoint: Endpoint, tmp_path: Path) -> None:
    digest = endpoint.digest
    for other in (tmp_path / "models" / "secret.txt", tmp_path / "models" / "tiny.yaml", Path("/etc/hostname")):
        sha256 = sha256_of(other)
        reply = await endpoint.get(f"/p2p/files/{sha256}?offset=0&length=1")
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "file_not_found"
    for path in ("/p2p/files/..%2F..%2Fetc%2Fpasswd?offset=0&length=1", "/p2p/files/ABC?offset=0&length=1",
                 "/p2p/models/nope"):
        assert (await endpoint.get(path)).status_code == 404
    size = digest.size
    for query, status in ((f"offset={size}&length=1", 416), ("offset=0&length=0", 416),
                          (f"offset=0&length={size + 1}", 416), ("offset=-1&length=1", 400), ("length=1", 400),
                          ("offset=0&length=1e3", 400)):
        assert (await endpoint.get(f"/p2p/files/{digest.sha256}?{query}")).status_code == status, query
    assert (await endpoint.get(f"/p2p/files/{digest.sha256}?offset=0&length=1", signed=False)).status_code == 401


async def test_a_file_that_changed_is_no_longer_served(endpoint: Endpoint) -> None:
    digest = endpoint.digest
    later = time.time() + 5
    os.utime(endpoint.model, (later, later))
    reply = await endpoint.get(f"/p2p/files/{digest.sha256}?offset=0&length=1")
    assert reply.status_code == 404
    await endpoint.index.update()  # hashed again: served again under its (unchanged) hash
    assert (await endpoint.get(f"/p2p/files/{digest.sha256}?offset=0&length=1")).status_code == 200


async def test_the_client_api_serves_no_files(endpoint: Endpoint) -> None:
    async with TestClient(TestServer(create_app(endpoint.state), host=HOST)) as client:
        reply = await client.get(f"/p2p/files/{endpoint.digest.sha256}?offset=0&length=1")
        assert reply.status == 404


async def test_a_file_that_changes_while_it_is_hashed_is_not_indexed(tmp_path: Path, models: Path) -> None:
    """Rehashing takes a while; a hash of bytes from before and after a write is no file's hash."""
    model = models / "tiny.gguf"
    store = await Store.open(tmp_path)
    try:
        index = FileIndex(store, lambda: [model], lambda: None)
        stat = os.stat(model)
        # What update() saw before hashing, when the file was then written to: not indexed.
        assert await index._digest(model, stat.st_size, stat.st_mtime_ns - 1) is None
        indexed = await index._digest(model, stat.st_size, stat.st_mtime_ns)
        assert indexed is not None and indexed.digest.sha256 == sha256_of(model)
    finally:
        await store.close()
