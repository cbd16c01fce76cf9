"""Requests between nodes are signed with the swarm's HTTP key.

The signature covers the method, path, a digest of the body, a timestamp, a
nonce, the sender's peer id and the destination's: a captured request cannot be
altered, replayed, replayed later or replayed to another node, and a node of
another swarm cannot sign at all. Everything signed travels in headers, so the
peer endpoint checks a request before reading its body (check()), then the body
against its signed digest (Signed.check_body()).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

PEER = "X-P2PAI-Peer"
DESTINATION = "X-P2PAI-To"
TIMESTAMP = "X-P2PAI-Timestamp"
NONCE = "X-P2PAI-Nonce"
BODY_DIGEST = "X-P2PAI-Body-SHA256"
SIGNATURE = "X-P2PAI-Signature"
SIGNED_HEADERS = (PEER, DESTINATION, TIMESTAMP, NONCE, BODY_DIGEST, SIGNATURE)

MAX_SKEW = 30.0  # seconds either way; clocks of a home lab agree far better
MAX_NONCES = 200_000  # nonces seen within the window; more in 60 s is refused, not remembered
_DOMAIN = b"p2pai/v2/peer-request\n"

# What each header may hold: anything else is refused before any other work.
_FORMS = {
    PEER: re.compile(r"[1-9A-HJ-NP-Za-km-z]{1,128}"),  # base58, as peer ids are
    DESTINATION: re.compile(r"[1-9A-HJ-NP-Za-km-z]{1,128}"),
    TIMESTAMP: re.compile(r"[0-9]{1,12}\.[0-9]{3}"),  # finite: no NaN, no infinity, no exponent
    NONCE: re.compile(r"[0-9a-f]{32}"),
    BODY_DIGEST: re.compile(r"[0-9a-f]{64}"),
    SIGNATURE: re.compile(r"[0-9a-f]{64}"),
}


class Rejected(Exception):
    """Why a peer request was refused (for logs and the 401 message)."""


def is_peer_request(headers: Mapping[str, str]) -> bool:
    """Whether a request carries (or pretends to carry) a peer signature."""
    return any(name in headers for name in SIGNED_HEADERS)


def _message(method: str, path: str, digest: str, timestamp: str, nonce: str, peer: str, destination: str) -> bytes:
    fields = (method.upper(), path, digest, timestamp, nonce, peer, destination)
    return _DOMAIN + "\n".join(fields).encode("utf-8", "surrogateescape")


def sign(key: bytes, peer: str, destination: str, method: str, path: str, body: bytes,
         now: float | None = None) -> dict[str, str]:
    """The headers that authenticate one request from ``peer`` to ``destination``."""
    timestamp = f"{time.time() if now is None else now:.3f}"
    nonce = os.urandom(16).hex()
    digest = hashlib.sha256(body).hexdigest()
    message = _message(method, path, digest, timestamp, nonce, peer, destination)
    return {PEER: peer, DESTINATION: destination, TIMESTAMP: timestamp, NONCE: nonce, BODY_DIGEST: digest,
            SIGNATURE: _mac(key, message)}


def _mac(key: bytes, message: bytes) -> str:
    """HMAC-SHA256 in one call into OpenSSL: an hmac.HMAC object costs several Python calls more, on
    every forwarded request (issue #12: the entry's CPU per request)."""
    return hmac.digest(key, message, "sha256").hex()


@dataclass(frozen=True)
class Signed:
    """A request whose headers passed: who sent it, and the digest its body must have."""

    sender: str
    digest: str

    def check_body(self, body: bytes) -> None:
        if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), self.digest):
            raise Rejected("the body does not match its signed digest")


class Verifier:
    def __init__(self, key: bytes, node_id: str, max_skew: float = MAX_SKEW, max_nonces: int = MAX_NONCES) -> None:
        self._key = key
        self._node_id = node_id
        self._max_skew = max_skew
        self._max_nonces = max_nonces
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> timestamp, oldest first

    def check(self, headers: Mapping[str, str], method: str, path: str, now: float | None = None) -> Signed:
        """The headers' verdict, from them alone: Signed, or Rejected."""
        now = time.time() if now is None else now
        values = {}
        for name, form in _FORMS.items():
            value = headers.get(name)
            if value is None:
                raise Rejected(f"missing header {name}")
            if not form.fullmatch(value):
                raise Rejected(f"malformed header {name}")
            values[name] = value
        peer, destination, timestamp, nonce = values[PEER], values[DESTINATION], values[TIMESTAMP], values[NONCE]
        expected = _mac(self._key, _message(method, path, values[BODY_DIGEST], timestamp, nonce, peer, destination))
        if not hmac.compare_digest(expected, values[SIGNATURE]):
            raise Rejected("bad signature")
        if destination != self._node_id:
            raise Rejected("signed for another node")
        sent = float(timestamp)
        if abs(now - sent) > self._max_skew:
            raise Rejected("stale or future timestamp")
        self._forget_before(now - 2 * self._max_skew)
        if nonce in self._seen:
            raise Rejected("replayed request")
        if len(self._seen) >= self._max_nonces:
            raise Rejected("too many requests in the replay window")
        self._seen[nonce] = sent
        return Signed(peer, values[BODY_DIGEST])

    def _forget_before(self, horizon: float) -> None:
        # Insertion order is arrival order; timestamps within the skew make it close to sorted,
        # and anything older than the horizon is refused by the timestamp check anyway.
        while self._seen:
            nonce, sent = next(iter(self._seen.items()))
            if sent >= horizon:
                break
            del self._seen[nonce]
