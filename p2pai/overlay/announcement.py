"""Signed and sealed membership announcements, and the checks that drop bad ones.

Wire format: nonce (12) | ChaCha20Poly1305(seal_key) of
public key (32) | Ed25519 signature (64) | JSON body.
The seal keeps announcements private to holders of the swarm token; the
signature binds them to their author's peer id, so one member cannot speak for
another, nor change an announcement it relays. Replay (sequence numbers) is
judged by the gossip node (gossip.py), which knows what it has already seen.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2pai.identity import Identity, peer_id_from_public_key, verify_signature

MAX_MESSAGE_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 32 * 1024
MAX_CLOCK_SKEW = 30.0  # seconds an announcement's timestamp may differ from ours
MAX_ROLES = 16
MAX_ADDRS = 8
MAX_ADDR_CHARS = 128
MAX_TEXT_CHARS = 256
_CONTEXT = b"p2pai/announce/1\x00"
_NONCE_BYTES = 12
_KEY_BYTES = 32
_SIGNATURE_BYTES = 64


class Rejected(Exception):
    """An announcement was dropped; ``reason`` is a short counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Announcement:
    peer_id: str
    name: str
    version: str
    roles: list[str]
    addrs: list[str]
    seq: int
    timestamp: float
    payload: dict[str, Any]


def seal(announcement: Announcement, identity: Identity, seal_key: bytes, discriminator: str) -> bytes:
    """Sign and encrypt an announcement of this node."""
    if announcement.peer_id != identity.peer_id:
        raise ValueError("a node can only announce itself")
    body = json.dumps(_to_json(announcement), separators=(",", ":")).encode()
    aad = _CONTEXT + discriminator.encode()
    signed = identity.public_key + identity.sign(aad + body) + body
    nonce = os.urandom(_NONCE_BYTES)
    message = nonce + ChaCha20Poly1305(seal_key).encrypt(nonce, signed, aad)
    if len(message) > MAX_MESSAGE_BYTES:
        raise ValueError(f"announcement of {len(message)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return message


def open_sealed(message: bytes, seal_key: bytes, discriminator: str, now: float,
                max_age: float = MAX_CLOCK_SKEW) -> Announcement:
    """Decrypt and verify an announcement, or raise Rejected saying why not.

    max_age: how old it may be; more than MAX_CLOCK_SKEW only for one relayed by gossip (gossip.py),
    where replays are judged by sequence number."""
    if len(message) > MAX_MESSAGE_BYTES:
        raise Rejected("oversized")
    aad = _CONTEXT + discriminator.encode()
    try:
        nonce, sealed = message[:_NONCE_BYTES], message[_NONCE_BYTES:]
        signed = ChaCha20Poly1305(seal_key).decrypt(nonce, sealed, aad)
    except (InvalidTag, ValueError):
        raise Rejected("undecryptable") from None
    public_key = signed[:_KEY_BYTES]
    signature = signed[_KEY_BYTES : _KEY_BYTES + _SIGNATURE_BYTES]
    body = signed[_KEY_BYTES + _SIGNATURE_BYTES :]
    if len(public_key) != _KEY_BYTES or not verify_signature(public_key, signature, aad + body):
        raise Rejected("bad_signature")
    try:
        announcement = _from_json(json.loads(body))
    except (ValueError, TypeError, KeyError, RecursionError):
        raise Rejected("malformed") from None
    if announcement.peer_id != peer_id_from_public_key(public_key):
        raise Rejected("bad_signature")
    if not -MAX_CLOCK_SKEW <= now - announcement.timestamp <= max(max_age, MAX_CLOCK_SKEW):
        raise Rejected("stale")
    return announcement


def _to_json(a: Announcement) -> dict[str, Any]:
    return {
        "id": a.peer_id,
        "name": a.name,
        "version": a.version,
        "roles": a.roles,
        "addrs": a.addrs,
        "seq": a.seq,
        "ts": a.timestamp,
        "payload": a.payload,
    }


def _from_json(obj: Any) -> Announcement:
    """Build an Announcement from untrusted JSON, enforcing types and size caps."""
    if not isinstance(obj, dict):
        raise TypeError("announcement is not an object")
    seq, timestamp, payload = obj["seq"], obj["ts"], obj["payload"]
    if type(seq) is not int or seq < 0:
        raise TypeError("seq")
    if type(timestamp) not in (int, float) or not math.isfinite(timestamp):
        raise TypeError("ts")  # json.loads accepts NaN, which no skew check rejects
    if not isinstance(payload, dict):
        raise TypeError("payload")
    return Announcement(
        peer_id=_text(obj["id"]),
        name=_text(obj["name"]),
        version=_text(obj["version"]),
        roles=_texts(obj["roles"], MAX_ROLES, MAX_TEXT_CHARS),
        addrs=_texts(obj["addrs"], MAX_ADDRS, MAX_ADDR_CHARS),
        seq=seq,
        timestamp=float(timestamp),
        payload=payload,
    )


def _text(value: Any, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str) or len(value) > max_chars:
        raise TypeError("expected a short string")
    return value


def _texts(value: Any, max_items: int, max_chars: int) -> list[str]:
    if not isinstance(value, list) or len(value) > max_items:
        raise TypeError("expected a short list")
    return [_text(item, max_chars) for item in value]
