"""TLS 1.3 between nodes, both ways authenticated: who may connect, and who is at the other end.

- Membership. Every member derives the swarm's CA key from the token (NetworkKeys.peer_ca_key).
  Ed25519 signatures are deterministic, so every member builds the same CA certificate byte for
  byte without any exchange. The peer endpoint requires a client certificate from that CA, and
  callers require a server certificate from it: a non-member cannot complete a handshake.
- Identity. A node's certificate (for its own TLS key, kept in the data dir) carries in an
  extension the node's libp2p identity signature over that key. Any member can issue itself a
  certificate, but only the holder of a peer id's identity key can bind one to that peer id.
  A caller checks that the server's certificate is bound to the peer it means to reach (pinning
  by peer id); the peer endpoint checks that the client's certificate is bound to the peer that
  signed the request. The binding is self-contained: no announcement needs to arrive first.

P2PAI_PLAINTEXT_PEERS=1 turns all of this off (plain http:// between nodes, requests still
HMAC-signed). It exists to measure what TLS costs (bench/bench_routing.py), nothing else.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..identity import Identity, public_key_from_peer_id, verify_signature

PLAINTEXT_ENV = "P2PAI_PLAINTEXT_PEERS"
CERT_FILE = "peer-tls.pem"  # the node's TLS key (created once) and its certificate (issued at every start)
HANDSHAKE_TIMEOUT = 10.0  # a member's handshake takes milliseconds; a stalled one holds a connection slot
READ_BYTES = 64 * 1024  # more than a TLS record holds (16 KiB): one read never leaves decrypted data behind

# An OID of our own (2.25 = UUID arc, RFC 4122 / X.667): the identity's signature over the certificate's key.
BINDING_OID = x509.ObjectIdentifier("2.25.279611715918957350339357448504847678061")
_BINDING_CONTEXT = b"p2pai/v1/peer-tls-binding\n"
_NOT_BEFORE = datetime(2000, 1, 1, tzinfo=timezone.utc)
_NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)  # RFC 5280: no well-defined expiration
_MAX_BINDINGS = 4096


def plaintext_requested() -> bool:
    """Whether this process was started with the measurement-only plaintext switch."""
    return os.environ.get(PLAINTEXT_ENV, "") == "1"


class PeerTLS:
    """This node's TLS material for the peer endpoint and for calls to peers."""

    def __init__(self, ca_key: Ed25519PrivateKey, identity: Identity, tls_key: Ed25519PrivateKey, path: Path) -> None:
        ca = swarm_ca_certificate(ca_key)
        self.ca_der = ca.public_bytes(serialization.Encoding.DER)
        cert = issue(ca_key, ca, tls_key, identity)
        self.own_der = cert.public_bytes(serialization.Encoding.DER)
        self.peer_id = identity.peer_id
        self._path = path
        _write_private(path, tls_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption())
                       + cert.public_bytes(serialization.Encoding.PEM))
        self._bindings: OrderedDict[bytes, str | None] = OrderedDict()
        self._bindings[self.own_der] = self.peer_id

    @classmethod
    def load_or_create(cls, data_dir: Path, ca_seed: bytes, identity: Identity) -> PeerTLS:
        """The node's TLS key from ``data_dir`` (created there, 0600, on first use), certified for this swarm."""
        path = data_dir / CERT_FILE
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            key = Ed25519PrivateKey.generate()
        except ValueError as exc:
            raise ValueError(f"{path} does not hold a usable TLS key ({exc}); delete it to create a new one") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 key; delete it to create a new one")
        return cls(Ed25519PrivateKey.from_private_bytes(ca_seed), identity, key, path)

    def server_context(self) -> ssl.SSLContext:
        context = self._context(ssl.PROTOCOL_TLS_SERVER)
        context.num_tickets = 0  # connections are kept alive, never resumed: no tickets to send or store
        return context

    def client_context(self) -> ssl.SSLContext:
        context = self._context(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # peers are named by peer id, checked with bound_peer()
        return context

    def _context(self, protocol: ssl._SSLMethod) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=self.ca_der)
        context.load_cert_chain(self._path)
        return context

    def bound_peer(self, der: bytes | None) -> str | None:
        """The peer id a (CA-verified) certificate is bound to, None if it is bound to none. Cached."""
        if der is None:
            return None
        try:
            peer = self._bindings[der]
        except KeyError:
            peer = self._bindings[der] = bound_peer(der)
            if len(self._bindings) > _MAX_BINDINGS:
                self._bindings.popitem(last=False)
        return peer


class TLSSession:
    """One connection's TLS, an ssl.SSLObject over memory BIOs: whoever holds the socket feeds it the
    bytes received and sends what it produces. Both ends of the data plane use it: the caller, whose
    relay thread can take a stream over and keep decrypting (routing/peer_http.py), and the peer
    endpoint (api/peer_site.py), where it costs a third of asyncio's TLS transport per write."""

    def __init__(self, context: ssl.SSLContext, server_side: bool = False) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.session = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side)

    def handshake(self) -> bool:
        """One step of the handshake with what arrived; True once it is complete. ssl.SSLError if it failed."""
        try:
            self.session.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        self.session.write(data)
        return self.outgoing.read()

    def read(self) -> bytes | None:
        """Decrypted data from what arrived, b"" at the other end's close_notify, None until more arrives."""
        try:
            return self.session.read(READ_BYTES)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return b""

    @property
    def buffered(self) -> bool:
        """Bytes received and not yet decrypted (the session itself never keeps decrypted data back)."""
        return bool(self.incoming.pending)

    def close_notify(self) -> bytes:
        """The alert that ends the session cleanly, to send before closing the connection."""
        try:
            self.session.unwrap()
        except ssl.SSLError:
            pass  # it waits for the other end's close_notify, which nobody waits for
        return self.outgoing.read()

    def peer_certificate(self) -> bytes | None:
        return self.session.getpeercert(binary_form=True)


def swarm_ca_certificate(ca_key: Ed25519PrivateKey) -> x509.Certificate:
    """The swarm CA's self-signed certificate: the same bytes on every member (deterministic fields and signature)."""
    public = ca_key.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"p2pai swarm CA {_key_id(public)[:8].hex()}")])
    return (
        _builder(name, name, public)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, None)
    )


def issue(ca_key: Ed25519PrivateKey, ca: x509.Certificate, tls_key: Ed25519PrivateKey,
          identity: Identity) -> x509.Certificate:
    """A certificate for ``tls_key`` from the swarm CA, bound to ``identity``'s peer id."""
    public = tls_key.public_key()
    binding = identity.sign(_BINDING_CONTEXT + _spki(public))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.peer_id)])
    return (
        _builder(subject, ca.subject, public)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.UnrecognizedExtension(BINDING_OID, binding), critical=False)
        .sign(ca_key, None)
    )


def bound_peer(der: bytes) -> str | None:
    """The peer id whose identity key signed this certificate's key (see issue()), else None."""
    try:
        cert = x509.load_der_x509_certificate(der)
        peer = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        signature = cert.extensions.get_extension_for_oid(BINDING_OID).value.value  # type: ignore[attr-defined]
        public = cert.public_key()
    except (ValueError, IndexError, x509.ExtensionNotFound):
        return None
    if not isinstance(peer, str) or not isinstance(public, Ed25519PublicKey):
        return None
    key = public_key_from_peer_id(peer)
    if key is None:
        return None
    return peer if verify_signature(key, signature, _BINDING_CONTEXT + _spki(public)) else None


def _builder(subject: x509.Name, issuer: x509.Name, public: Ed25519PublicKey) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(int.from_bytes(_key_id(public)[:16], "big") >> 1 | 1)  # positive, at most 16 bytes
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
    )


def _spki(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_id(public: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(_spki(public)).digest()


def _write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, readable by this user only from its first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover temporary file keeps its mode through O_CREAT
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
