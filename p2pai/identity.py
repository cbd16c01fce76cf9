"""The node's persistent Ed25519 identity: its libp2p peer id, and what signs for it.

Kept independent of libp2p so that announcements and the RPC relay's handshake
can be signed and verified without importing libp2p (0.5 s); libp2p only gets a
key pair built from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

IDENTITY_FILE = "identity.key"
# libp2p protobuf key encoding: field 1 (KeyType) = 1 (Ed25519), field 2 = 32 bytes.
_ED25519_KEY_PREFIX = b"\x08\x01\x12\x20"
# Multihash "identity" (0x00) of the 36-byte encoded public key: Ed25519 peer ids.
_IDENTITY_MULTIHASH_PREFIX = b"\x00\x24"


def peer_id_from_public_key(public_key: bytes) -> str:
    """Return the libp2p peer id (12D3KooW...) that a raw Ed25519 public key owns."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    encoded = _IDENTITY_MULTIHASH_PREFIX + _ED25519_KEY_PREFIX + public_key
    return base58.b58encode(encoded).decode("ascii")


def public_key_from_peer_id(text: str) -> bytes | None:
    """The raw Ed25519 public key inside a peer id; None if ``text`` is not an Ed25519 peer id."""
    try:
        decoded = base58.b58decode(text)
    except ValueError:
        return None
    prefix = _IDENTITY_MULTIHASH_PREFIX + _ED25519_KEY_PREFIX
    if len(decoded) != len(prefix) + 32 or not decoded.startswith(prefix):
        return None
    return decoded[len(prefix):]


def is_peer_id(text: str) -> bool:
    """Whether ``text`` is an Ed25519 peer id, the only kind p2pai nodes have."""
    return public_key_from_peer_id(text) is not None


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


class Identity:
    """An Ed25519 key pair; its public key determines the peer id."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        self.peer_id: str = peer_id_from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def __reduce__(self) -> tuple[object, tuple[bytes]]:
        """Picklable (an RPC model's child process signs for its node)."""
        return Identity.from_seed, (self._seed(),)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Identity:
        """Load the identity from ``data_dir``, creating it (mode 0600) on first use.

        The file uses libp2p's private key encoding, so libp2p's
        ``load_identity`` can read it too.
        """
        path = Path(data_dir) / IDENTITY_FILE
        try:
            encoded = path.read_bytes()
        except FileNotFoundError:
            identity = cls.generate()
            identity._save(path)
            return identity
        if len(encoded) != 36 or not encoded.startswith(_ED25519_KEY_PREFIX):
            raise ValueError(f"{path} is not an Ed25519 libp2p private key")
        return cls(Ed25519PrivateKey.from_private_bytes(encoded[4:]))

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(_ED25519_KEY_PREFIX + self._seed())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def _seed(self) -> bytes:
        return self._private_key.private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def to_libp2p_key_pair(self) -> KeyPair:
        """The same key as a libp2p ``KeyPair`` (imports libp2p: call it lazily)."""
        from libp2p.crypto.ed25519 import create_new_key_pair

        return create_new_key_pair(seed=self._seed())
