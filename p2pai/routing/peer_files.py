"""Model files that peers announce, as sources for a pull over the data plane (signed requests,
TLS, or the tunnel when a peer has no direct address).

Announcements are data from members: a file is identified by the SHA-256 a puller already trusts
(a gallery's), or, for a pull by model name, by what most peers announce for that name. The
chunk hash list comes from a peer and is used only if it hashes to the root that peers announced.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlencode

from pydantic import ValidationError

from ..models.digests import FileDigest, chunk_count, chunks_root
from ..models.fetch import SourceError, SourceGone
from ..models.installer import SwarmFile
from ..protocol.pull import SharedModel
from ..swarm.payload import FileOffer
from ..swarm.swarm import Swarm
from ..swarm.view import SwarmNode
from .answer import AnswerBroken
from .forward import Forwarder, PeerUnavailable

log = logging.getLogger(__name__)

MAX_SHARED_MODEL_BYTES = 1 << 20


@dataclass(frozen=True)
class Holder:
    node: SwarmNode
    model: str
    offer: FileOffer


class PeerSource:
    """Chunks of one file from one peer, at the addresses it announces at the time of each request (a
    peer seen before its endpoint was announced is reached through the tunnel until it is)."""

    def __init__(self, forwarder: Forwarder, swarm: Swarm, node: SwarmNode, sha256: str) -> None:
        self._forwarder = forwarder
        self._swarm = swarm
        self._node = node
        self._sha256 = sha256
        self.label = f"peer {node.name} ({node.id[-8:]})"

    async def read(self, offset: int, length: int) -> bytes:
        query = urlencode({"offset": offset, "length": length})
        return await self._get(f"/p2p/files/{self._sha256}?{query}", length)

    async def hashes(self, limit: int) -> bytes:
        return await self._get(f"/p2p/files/{self._sha256}/chunks", limit)

    async def shared_model(self, name: str) -> SharedModel:
        body = await self._get(f"/p2p/models/{name}", MAX_SHARED_MODEL_BYTES)
        try:
            return SharedModel.model_validate_json(body)
        except ValidationError as exc:
            raise SourceGone(f"sent a malformed model description ({exc.error_count()} problems)") from exc

    async def _get(self, path: str, limit: int) -> bytes:
        try:
            node = self._swarm.serving_peer(self._node.id) or self._node
            answer = await self._forwarder.send(node.id, node.endpoint_urls(), "GET", path, b"", None)
        except PeerUnavailable as exc:
            raise SourceError(str(exc)) from exc
        try:
            if answer.status == 404:
                raise SourceGone(f"no longer has it ({_error_text(await answer.read())})")
            if answer.status != 200:
                raise SourceError(f"answered {answer.status}")
            length = answer.headers.get("Content-Length")  # none through the tunnel: read_at_most bounds it
            if length is not None and not (length.isdigit() and int(length) <= limit):
                raise SourceGone(f"announced a Content-Length of {length} for at most {limit} bytes")
            return await answer.read_at_most(limit)
        except AnswerBroken as exc:
            raise SourceError(f"the answer broke off: {exc}") from exc
        finally:
            answer.release()

    async def close(self) -> None:
        """Connections stay in the forwarder's pool."""


class SwarmFiles:
    """Finds the peers that announce a file and makes them sources (models.installer.SwarmFiles)."""

    def __init__(self, swarm: Swarm, forwarder: Forwarder) -> None:
        self._swarm = swarm
        self._forwarder = forwarder

    def holders(self, sha256: str | None = None, model: str | None = None) -> list[Holder]:
        """Online peers announcing the file ``sha256`` (or any file for ``model``)."""
        return [Holder(node, offer.name, offer.file) for node in self._swarm.peers()
                if node.online and node.federated for offer in node.payload.models
                if offer.file is not None and (sha256 is None or offer.file.sha256 == sha256)
                and (model is None or offer.name == model)]

    def file_for(self, model: str) -> SwarmFile | None:
        """The file most peers announce for ``model`` (ties: the first peer's)."""
        holders = self.holders(model=model)
        if not holders:
            return None
        votes = Counter((h.offer.sha256, h.offer.size) for h in holders)
        (sha256, size), _ = votes.most_common(1)[0]
        return SwarmFile(sha256, size)

    def size_of(self, sha256: str) -> int | None:
        sizes = Counter(h.offer.size for h in self.holders(sha256))
        return sizes.most_common(1)[0][0] if sizes else None

    def sources(self, sha256: str, size: int, root: str | None) -> list[PeerSource]:
        """The peers announcing the file with this size (and chunk root, when given)."""
        return [PeerSource(self._forwarder, self._swarm, h.node, sha256) for h in self._unique(sha256)
                if h.offer.size == size and (root is None or h.offer.root == root)]

    async def hashes(self, sha256: str, size: int) -> FileDigest | None:
        """The file's chunk hashes from a peer, checked against the root most holders announce."""
        holders = [h for h in self._unique(sha256) if h.offer.size == size]
        if not holders:
            return None
        root, _ = Counter(h.offer.root for h in holders).most_common(1)[0]
        for holder in holders:
            if holder.offer.root != root:
                continue
            source = PeerSource(self._forwarder, self._swarm, holder.node, sha256)
            expected = chunk_count(size, holder.offer.chunk_size) * 32
            try:
                hashes = await source.hashes(expected)
            except SourceError as exc:
                log.info("%s could not send the chunk hashes of %s: %s", source.label, sha256[:12], exc)
                continue
            if len(hashes) == expected and chunks_root(hashes) == root:
                return FileDigest(sha256, size, holder.offer.chunk_size, hashes)
            log.warning("%s sent chunk hashes of %s that do not match its announcement", source.label, sha256[:12])
        return None

    async def shared_model(self, model: str, sha256: str) -> SharedModel | None:
        """The model's config from a peer that has it with this file."""
        for holder in self._unique(sha256):
            if holder.model != model:
                continue
            try:
                shared = await PeerSource(self._forwarder, self._swarm, holder.node, sha256).shared_model(model)
            except SourceError as exc:
                log.info("%s could not describe %s: %s", holder.node.name, model, exc)
                continue
            if shared.file.sha256 == sha256 and shared.name == model:
                return shared
        return None

    def _unique(self, sha256: str) -> list[Holder]:
        """One holder per peer."""
        seen: dict[str, Holder] = {}
        for holder in self.holders(sha256):
            seen.setdefault(holder.node.id, holder)
        return list(seen.values())


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, TypeError, KeyError):
        return body[:200].decode(errors="replace")
