"""Requests between nodes are signed with the swarm's HTTP key.

The signature covers the method, path, a digest of the body, a timestamp, a
nonce and the sender's peer id, so a captured request cannot be altered,
replayed, or replayed later; a node of another swarm cannot sign at all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping

PEER = "X-P2PAI-Peer"
TIMESTAMP = "X-P2PAI-Timestamp"
NONCE = "X-P2PAI-Nonce"
SIGNATURE = "X-P2PAI-Signature"

MAX_SKEW = 30.0  # seconds either way; clocks of a home lab agree far better
MAX_NONCES = 200_000  # nonces seen within the window; more in 60 s is refused, not remembered
_DOMAIN = b"p2pai/v1/peer-request\n"


class Rejected(Exception):
    """Why a peer request was refused (for logs and the 401 message)."""


def _message(method: str, path: str, body: bytes, timestamp: str, nonce: str, peer: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return _DOMAIN + "\n".join((method.upper(), path, digest, timestamp, nonce, peer)).encode()


def sign(key: bytes, peer: str, method: str, path: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The headers that authenticate one request from ``peer``."""
    timestamp = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(16)
    mac = hmac.new(key, _message(method, path, body, timestamp, nonce, peer), hashlib.sha256).hexdigest()
    return {PEER: peer, TIMESTAMP: timestamp, NONCE: nonce, SIGNATURE: mac}


class Verifier:
    def __init__(self, key: bytes, max_skew: float = MAX_SKEW, max_nonces: int = MAX_NONCES) -> None:
        self._key = key
        self._max_skew = max_skew
        self._max_nonces = max_nonces
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> timestamp, oldest first

    def verify(self, headers: Mapping[str, str], method: str, path: str, body: bytes,
               now: float | None = None) -> str:
        """The sender's peer id, or Rejected."""
        now = time.time() if now is None else now
        try:
            peer, timestamp, nonce, given = (headers[name] for name in (PEER, TIMESTAMP, NONCE, SIGNATURE))
        except KeyError as exc:
            raise Rejected(f"missing header {exc.args[0]}") from None
        expected = hmac.new(self._key, _message(method, path, body, timestamp, nonce, peer), hashlib.sha256)
        if not hmac.compare_digest(expected.hexdigest(), given):
            raise Rejected("bad signature")
        try:
            sent = float(timestamp)
        except ValueError:
            raise Rejected("bad timestamp") from None
        if abs(now - sent) > self._max_skew:
            raise Rejected("stale or future timestamp")
        self._forget_before(now - 2 * self._max_skew)
        if nonce in self._seen:
            raise Rejected("replayed request")
        if len(self._seen) >= self._max_nonces:
            raise Rejected("too many requests in the replay window")
        self._seen[nonce] = sent
        return peer

    def _forget_before(self, horizon: float) -> None:
        # Insertion order is arrival order; timestamps within the skew make it close to sorted,
        # and anything older than the horizon is refused by the timestamp check anyway.
        while self._seen:
            nonce, sent = next(iter(self._seen.items()))
            if sent >= horizon:
                break
            del self._seen[nonce]
