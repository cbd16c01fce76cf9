"""Swarm tokens: the one line a machine needs to join a private p2pai swarm.

A token is unpadded URL-safe base64 of a small YAML document holding a format
version, a public network id, a creation time and a random secret. Every key the
node uses is derived from that secret with HKDF. The format is specified in
tokens/FORMAT.md and pinned by tokens/vectors.json.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT_VERSION = 1
SECRET_BYTES = 32
NETWORK_ID_BYTES = 8
DISCRIMINATOR_BYTES = 8
TOKEN_FILE = "token"
# Real tokens are about 170 characters; the cap keeps hostile input (deeply nested
# YAML) away from the parser.
MAX_TOKEN_CHARS = 512

log = logging.getLogger(__name__)

_FIELDS = ("version", "network_id", "created", "secret")
_NETWORK_ID = re.compile(rf"[0-9a-f]{{{2 * NETWORK_ID_BYTES}}}")
_CREATED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

# HKDF info labels. The "v1" ties them to the token format version.
_PSK_LABEL = b"p2pai/v1/libp2p-psk"
_SEAL_LABEL = b"p2pai/v1/announce-seal"
_HTTP_LABEL = b"p2pai/v1/http-hmac"
_RPC_LABEL = b"p2pai/v1/rpc-auth"
_PEER_CA_LABEL = b"p2pai/v1/peer-tls-ca"
_DISCRIMINATOR_LABEL = b"p2pai/v1/lan-discriminator"


class TokenError(ValueError):
    """A token (or token file) is unusable; the message is meant for the CLI user."""


@dataclass(frozen=True)
class SwarmToken:
    """A parsed token. It validates itself, so encode_token never writes a token that
    parse_token would reject."""

    version: int
    network_id: str
    created: datetime
    secret: bytes = field(repr=False)  # keep it out of logs and tracebacks

    def __post_init__(self) -> None:
        _check_version(self.version)
        if not isinstance(self.network_id, str) or not _NETWORK_ID.fullmatch(self.network_id):
            raise TokenError(
                f"the token's network_id must be {2 * NETWORK_ID_BYTES} lowercase hex digits"
            )
        if not isinstance(self.created, datetime) or self.created.utcoffset() != timedelta(0):
            raise TokenError("the token's creation time must be a timezone-aware UTC datetime")
        if not isinstance(self.secret, bytes) or len(self.secret) < SECRET_BYTES:
            got = len(self.secret) if isinstance(self.secret, bytes) else type(self.secret).__name__
            raise TokenError(
                f"the token's secret must be at least {SECRET_BYTES} bytes (got {got}); "
                "create a new token with `p2pai token new`"
            )

    def public_fields(self) -> dict[str, str | int]:
        """What `p2pai token inspect` may show: everything but the secret."""
        return {
            "version": self.version,
            "network_id": self.network_id,
            "created": _rfc3339(self.created),
        }


@dataclass(frozen=True)
class NetworkKeys:
    """Keys derived from a token; each has a single purpose so no two layers share one."""

    psk: bytes = field(repr=False)  # libp2p private-network pre-shared key
    seal_key: bytes = field(repr=False)  # AEAD key sealing peer announcements
    http_key: bytes = field(repr=False)  # HMAC key for peer-to-peer HTTP requests
    rpc_key: bytes = field(repr=False)  # authenticates the llama.cpp RPC relay/tunnel
    peer_ca_key: bytes = field(repr=False)  # Ed25519 seed of the swarm CA issuing peer TLS certificates
    discriminator: str  # public: lets LAN discovery skip other swarms' peers

    @property
    def psk_hex(self) -> str:
        """The PSK as the 64-hex-character string py-libp2p's `psk=` expects."""
        return self.psk.hex()


def new_token(now: datetime | None = None) -> str:
    """Create the token of a brand-new swarm; `now` (UTC) pins the creation time."""
    created = datetime.now(timezone.utc) if now is None else now
    return encode_token(
        SwarmToken(
            version=FORMAT_VERSION,
            network_id=secrets.token_hex(NETWORK_ID_BYTES),
            created=created.replace(microsecond=0),
            secret=secrets.token_bytes(SECRET_BYTES),
        )
    )


def encode_token(token: SwarmToken) -> str:
    """Encode a token in the canonical form of tokens/FORMAT.md.

    The YAML is written by hand rather than by yaml.dump so that its bytes, and thus
    the token, do not depend on a YAML library or its version. That is safe because
    SwarmToken has validated every value; strings are quoted so that no YAML parser
    reads them as numbers or timestamps.
    """
    document = (
        f"version: {token.version}\n"
        f'network_id: "{token.network_id}"\n'
        f'created: "{_rfc3339(token.created)}"\n'
        f'secret: "{_b64encode(token.secret)}"\n'
    )
    return _b64encode(document.encode("utf-8"))


def parse_token(text: str) -> SwarmToken:
    """Decode and validate a token; any defect raises a TokenError that says what is wrong.

    Either base64 alphabet is accepted, padded or not, with surrounding whitespace,
    because tokens travel through chats, mails and shell prompts.
    """
    text = text.strip()
    if not text:
        raise TokenError("the token is empty")
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenError(
            f"the token is {len(text)} characters long, too long for a p2pai token"
        )
    try:
        raw = _b64decode(text)
    except ValueError:
        raise TokenError("the token is not valid base64; was it copied completely?") from None
    try:
        fields = yaml.safe_load(raw.decode("utf-8"))
    # UnicodeDecodeError is a ValueError, as are out-of-range YAML timestamps.
    except (yaml.YAMLError, ValueError, RecursionError):
        raise TokenError(
            "the token does not decode to a YAML document; is it a p2pai token?"
        ) from None
    if not isinstance(fields, dict):
        raise TokenError("the token does not decode to a YAML mapping; is it a p2pai token?")
    return _token_from_fields(fields)


def derive_keys(token: SwarmToken) -> NetworkKeys:
    """Derive all keys of the swarm from the token's secret with HKDF-SHA256.

    Each key has its own versioned info label, so the keys are independent: the public
    discriminator (or any key that leaks) reveals nothing about the others or the
    secret. The network id is the salt, which binds the keys to it: a token whose id
    was edited names a different swarm instead of the same swarm under a new name.
    """
    salt = bytes.fromhex(token.network_id)

    def expand(label: bytes, length: int = 32) -> bytes:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=label)
        return hkdf.derive(token.secret)

    return NetworkKeys(
        psk=expand(_PSK_LABEL),
        seal_key=expand(_SEAL_LABEL),
        http_key=expand(_HTTP_LABEL),
        rpc_key=expand(_RPC_LABEL),
        peer_ca_key=expand(_PEER_CA_LABEL),
        discriminator=expand(_DISCRIMINATOR_LABEL, DISCRIMINATOR_BYTES).hex(),
    )


def load_or_create_token(data_dir: Path) -> tuple[str, bool]:
    """Return (token, created): the token kept in data_dir/token, or a new one stored there.

    Keeping the token is what lets a restarted node rejoin its swarm. A new token is
    written to a temporary file (mode 0600, from mkstemp) and hard-linked into place,
    so the file appears complete or not at all, and of two nodes starting at once on
    the same directory the second reads the first one's token instead of replacing it.
    """
    path = data_dir / TOKEN_FILE
    try:
        return _read_token_file(path), False
    except FileNotFoundError:
        pass
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = new_token()
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".token-")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return _read_token_file(path), False
    finally:
        os.unlink(tmp)
    return token, True


def read_token_file(path: Path) -> str:
    """The token of a file the user names (--token-file). A file other users can read gets a
    warning, not a refusal: container secrets are commonly mounted world-readable (0444)."""
    try:
        with path.open("rb") as file:
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
            raw = file.read(4 * MAX_TOKEN_CHARS)  # a bound: the path may name a device or a huge file
    except OSError as e:
        raise TokenError(f"cannot read the token file {path}: {e.strerror or e}") from None
    if mode & 0o044:
        log.warning("the token file %s is readable by other users (mode %o): anyone who reads it can join "
                    "the swarm; chmod 600 it", path, mode)
    token = raw.decode("utf-8", errors="replace").strip()
    try:
        parse_token(token)
    except TokenError as e:
        raise TokenError(f"the token file {path} does not hold a valid token ({e})") from None
    return token


def _read_token_file(path: Path) -> str:
    token = path.read_text(encoding="utf-8", errors="replace").strip()
    try:
        parse_token(token)
    except TokenError as e:
        raise TokenError(
            f"{path} does not hold a valid token ({e}); replace it with your swarm's "
            "token, or delete it to start a new swarm"
        ) from None
    return token


def _token_from_fields(fields: dict[object, object]) -> SwarmToken:
    """Check the decoded YAML mapping field by field, version first so that a newer
    format is reported as such rather than as missing or unexpected fields."""
    if "version" not in fields:
        raise TokenError("the token has no version field; is it a p2pai token?")
    _check_version(fields["version"])
    missing = [name for name in _FIELDS if name not in fields]
    if missing:
        raise TokenError(f"the token lacks the field(s): {', '.join(missing)}")
    unknown = sorted(str(name) for name in fields if name not in _FIELDS)
    if unknown:
        raise TokenError(f"the token has unknown field(s): {', '.join(unknown)}")
    network_id, created, secret = (
        _string_field(fields, name) for name in ("network_id", "created", "secret")
    )
    try:
        created_at = _parse_created(created)
    except ValueError:
        raise TokenError(
            "the token's creation time must be a UTC time like 2025-01-31T12:00:00Z"
        ) from None
    try:
        secret_bytes = _b64decode(secret)
    except ValueError:
        raise TokenError("the token's secret is not valid base64") from None
    return SwarmToken(
        version=FORMAT_VERSION, network_id=network_id, created=created_at, secret=secret_bytes
    )


def _string_field(fields: dict[object, object], name: str) -> str:
    value = fields[name]
    if not isinstance(value, str):
        # e.g. an unquoted id of digits (an int) or an unquoted time (a datetime)
        raise TokenError(f"the token's {name} must be a string, not {type(value).__name__}")
    return value


def _parse_created(text: str) -> datetime:
    """Accept only the canonical form: strptime alone also takes single-digit fields."""
    if not _CREATED.fullmatch(text):
        raise ValueError(f"not a canonical UTC time: {text}")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _check_version(version: object) -> None:
    # bool is a subclass of int: `version: true` must not pass for version 1.
    if type(version) is not int:
        raise TokenError(
            f"the token's version must be an integer, not {type(version).__name__}"
        )
    if version != FORMAT_VERSION:
        raise TokenError(
            f"token format version {version} is not supported: this p2pai reads only "
            f"version {FORMAT_VERSION} (a token made by a newer p2pai needs a newer p2pai)"
        )


def _rfc3339(moment: datetime) -> str:
    """UTC, whole seconds, four-digit year (strftime's %Y is not zero-padded everywhere)."""
    utc = moment.astimezone(timezone.utc).replace(tzinfo=None, microsecond=0)
    return utc.isoformat() + "Z"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Decode either base64 alphabet, padded or not; raise ValueError on anything else
    (the standard library would silently skip stray characters)."""
    text = text.rstrip("=").replace("+", "-").replace("/", "_")
    if not _BASE64URL.fullmatch(text):
        raise ValueError("not base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
