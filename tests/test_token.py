"""Swarm token: the vectors in tokens/, round trips, malformed input and persistence."""

import base64
import hashlib
import hmac
import json
import re
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from p2pai.token import (
    NetworkKeys,
    SwarmToken,
    TokenError,
    derive_keys,
    encode_token,
    load_or_create_token,
    new_token,
    parse_token,
)

TOKENS_DIR = Path(__file__).resolve().parent.parent / "tokens"
VECTORS = json.loads((TOKENS_DIR / "vectors.json").read_text(encoding="utf-8"))
VALID = VECTORS["valid"]
SECRET = bytes(range(32))
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_of(yaml_text: str) -> str:
    return b64(yaml_text.encode())


def document(**overrides: str) -> str:
    """A canonical YAML document with some lines replaced (value None drops the line)."""
    lines = {
        "version": "1",
        "network_id": '"0123456789abcdef"',
        "created": '"2025-01-01T00:00:00Z"',
        "secret": f'"{b64(SECRET)}"',
        **overrides,
    }
    return "".join(f"{key}: {value}\n" for key, value in lines.items() if value is not None)


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with the standard library, to check the vectors independently."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    block, okm = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


# --- vectors ------------------------------------------------------------------


def test_vectors_file_is_what_make_vectors_prints() -> None:
    printed = subprocess.run(
        [sys.executable, str(TOKENS_DIR / "make_vectors.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == (TOKENS_DIR / "vectors.json").read_text(encoding="utf-8")
    assert len(VALID) >= 3


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v["public"]["network_id"])
def test_vector_parses_to_its_fields(vector: dict) -> None:
    token = parse_token(vector["token"])
    assert token.secret.hex() == vector["secret_hex"]
    assert token.public_fields() == vector["public"]
    assert base64.urlsafe_b64decode(vector["token"] + "==").decode() == vector["yaml"]


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v["public"]["network_id"])
def test_vector_is_canonical(vector: dict) -> None:
    assert encode_token(parse_token(vector["token"])) == vector["token"]


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v["public"]["network_id"])
def test_vector_keys(vector: dict) -> None:
    keys = derive_keys(parse_token(vector["token"]))
    expected = vector["keys"]
    assert keys.psk.hex() == expected["psk"]
    assert keys.psk_hex == expected["psk"]
    assert keys.seal_key.hex() == expected["seal_key"]
    assert keys.http_key.hex() == expected["http_key"]
    assert keys.rpc_key.hex() == expected["rpc_key"]
    assert keys.peer_ca_key.hex() == expected["peer_ca_key"]
    assert keys.discriminator == expected["discriminator"]


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v["public"]["network_id"])
def test_vector_keys_are_rfc5869_hkdf_with_the_documented_labels(vector: dict) -> None:
    secret = bytes.fromhex(vector["secret_hex"])
    salt = bytes.fromhex(vector["public"]["network_id"])
    labels = {
        "psk": (b"p2pai/v1/libp2p-psk", 32),
        "seal_key": (b"p2pai/v1/announce-seal", 32),
        "http_key": (b"p2pai/v1/http-hmac", 32),
        "rpc_key": (b"p2pai/v1/rpc-auth", 32),
        "peer_ca_key": (b"p2pai/v1/peer-tls-ca", 32),
        "discriminator": (b"p2pai/v1/lan-discriminator", 8),
    }
    for name, (label, length) in labels.items():
        assert hkdf_sha256(secret, salt, label, length).hex() == vector["keys"][name], name


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["reason"])
def test_invalid_vector_is_rejected(vector: dict) -> None:
    with pytest.raises(TokenError):
        parse_token(vector["token"])


# --- round trip and randomness ------------------------------------------------


def test_new_token_round_trips() -> None:
    text = new_token(now=NOW + timedelta(microseconds=123))
    token = parse_token(text)
    assert token.version == 1
    assert token.created == NOW  # whole seconds
    assert encode_token(token) == text
    assert parse_token(encode_token(token)) == token


def test_new_token_defaults_to_current_utc_time() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    created = parse_token(new_token()).created
    assert before <= created <= datetime.now(timezone.utc)
    assert created.utcoffset() == timedelta(0)


def test_new_token_rejects_naive_time() -> None:
    with pytest.raises(TokenError, match="timezone-aware UTC"):
        new_token(now=datetime(2025, 1, 1))


def test_new_tokens_are_random() -> None:
    first, second = parse_token(new_token()), parse_token(new_token())
    assert len(first.secret) == len(second.secret) == 32
    assert first.secret != second.secret
    assert first.network_id != second.network_id
    assert derive_keys(first).discriminator != derive_keys(second).discriminator


def test_new_token_is_one_short_word() -> None:
    text = new_token()
    assert len(text) < 200
    assert text.isascii() and text.isalnum()  # no "=", "-", "_": one double-click selects it


def test_keys_are_distinct_and_sized() -> None:
    keys = derive_keys(parse_token(new_token()))
    secrets = [keys.psk, keys.seal_key, keys.http_key, keys.rpc_key]
    assert all(len(key) == 32 for key in secrets)
    assert len(set(secrets)) == 4
    assert len(keys.psk_hex) == 64 and int(keys.psk_hex, 16) >= 0
    assert len(keys.discriminator) == 16 and int(keys.discriminator, 16) >= 0


def test_keys_depend_on_network_id() -> None:
    token = parse_token(VALID[0]["token"])
    other = SwarmToken(token.version, "ffffffffffffffff", token.created, token.secret)
    assert derive_keys(token).psk != derive_keys(other).psk


def test_surrounding_whitespace_padding_and_both_alphabets_are_accepted() -> None:
    # Canonical tokens are letters and digits only; the "???" comment brings in the
    # characters where the alphabets differ.
    raw = (document() + "# ???\n").encode()
    urlsafe, standard = base64.urlsafe_b64encode(raw).decode(), base64.b64encode(raw).decode()
    assert "_" in urlsafe and "/" in standard and standard.endswith("=")
    for text in (f"  {urlsafe}\n", f"\t{standard}\r\n", urlsafe.rstrip("="), standard.rstrip("=")):
        assert parse_token(text).secret == SECRET


def test_secret_never_shown() -> None:
    token = parse_token(VALID[0]["token"])
    keys = derive_keys(token)
    public = token.public_fields()
    assert set(public) == {"version", "network_id", "created"}
    assert public["created"] == "2025-01-01T00:00:00Z"
    for shown in (str(public), repr(token), repr(keys)):
        assert SECRET.hex() not in shown and b64(SECRET) not in shown and "secret" not in shown
        assert keys.psk_hex not in shown and keys.psk.hex() not in shown
    assert keys.discriminator in repr(keys)


# --- malformed tokens ---------------------------------------------------------

MALFORMED = {
    "empty": ("", "empty"),
    "whitespace only": (" \n\t", "empty"),
    "not base64": ("this is not a token!", "not valid base64"),
    "truncated base64": (VALID[0]["token"][:41], "not valid base64"),
    "stray characters": (  # lenient base64 decoders would skip them and accept the token
        VALID[0]["token"][:40] + ". !." + VALID[0]["token"][40:],
        "not valid base64",
    ),
    "base64 of binary": (b64(b"\xff\xfe\x00\x01"), "YAML document"),
    "base64 of non-YAML": (token_of("version: [1\n"), "YAML document"),
    "YAML scalar": (token_of("just some words\n"), "YAML mapping"),
    "YAML list": (token_of("- version: 1\n"), "YAML mapping"),
    "YAML null": (token_of("~\n"), "YAML mapping"),
    "no version": (token_of(document(version=None)), "no version"),
    "missing secret": (token_of(document(secret=None)), "lacks the field(s): secret"),
    "missing two fields": (
        token_of(document(created=None, network_id=None)),
        "lacks the field(s): network_id, created",
    ),
    "unknown field": (token_of(document(name='"x"')), "unknown field(s): name"),
    "unknown version": (token_of(document(version="2")), "version 2 is not supported"),
    "version zero": (token_of(document(version="0")), "version 0 is not supported"),
    "version string": (token_of(document(version='"1"')), "version must be an integer, not str"),
    "version bool": (token_of(document(version="true")), "version must be an integer, not bool"),
    "version float": (token_of(document(version="1.0")), "must be an integer, not float"),
    "network_id int": (
        token_of(document(network_id="1234567890123456")),
        "network_id must be a string, not int",
    ),
    "network_id short": (token_of(document(network_id='"0123"')), "16 lowercase hex"),
    "network_id upper": (token_of(document(network_id='"0123456789ABCDEF"')), "16 lowercase hex"),
    "created unquoted": (
        token_of(document(created="2025-01-01T00:00:00Z")),
        "created must be a string, not datetime",
    ),
    "created bad form": (token_of(document(created='"2025-1-1T0:0:0Z"')), "UTC time like"),
    "created impossible": (token_of(document(created='"2025-13-45T00:00:00Z"')), "UTC time like"),
    "created impossible unquoted": (token_of(document(created="2025-13-45")), "YAML document"),
    "created with offset": (token_of(document(created='"2025-01-01T00:00:00+02:00"')), "UTC"),
    "secret list": (token_of(document(secret="[1, 2]")), "secret must be a string, not list"),
    "secret not base64": (token_of(document(secret='"not base64!"')), "secret is not valid base64"),
    "secret short": (
        token_of(document(secret=f'"{b64(SECRET[:16])}"')),
        "at least 32 bytes (got 16)",
    ),
    "secret empty": (token_of(document(secret='""')), "at least 32 bytes (got 0)"),
    "too long": ("A" * 4000, "too long"),
    "deeply nested": (token_of("[" * 384), "YAML document"),  # 512 characters, the maximum
}


@pytest.mark.parametrize(("text", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_token_raises_clear_error(text: str, message: str) -> None:
    with pytest.raises(TokenError, match=re.escape(message)) as caught:
        parse_token(text)
    assert isinstance(caught.value, ValueError)
    assert caught.value.__suppress_context__ or caught.value.__context__ is None
    assert "\n" not in str(caught.value)
    assert b64(SECRET) not in str(caught.value)


# --- persistence --------------------------------------------------------------


def test_load_or_create_token_creates_then_keeps(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "dir"
    token, created = load_or_create_token(data_dir)
    assert created
    parse_token(token)
    path = data_dir / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == token + "\n"
    assert [p.name for p in data_dir.iterdir()] == ["token"]  # no temporary file left
    assert load_or_create_token(data_dir) == (token, False)


def test_load_or_create_token_keeps_existing_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(f"  {VALID[0]['token']}  \n\n")
    assert load_or_create_token(tmp_path) == (VALID[0]["token"], False)
    assert (tmp_path / "token").read_text() == f"  {VALID[0]['token']}  \n\n"


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"\xff\xfe", VECTORS["invalid"][0]["token"].encode()]
)
def test_load_or_create_token_rejects_bad_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(TokenError, match="does not hold a valid token") as caught:
        load_or_create_token(tmp_path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content  # never replaced behind the user's back


def test_network_keys_psk_hex() -> None:
    keys = NetworkKeys(bytes(range(32)), b"s" * 32, b"h" * 32, b"r" * 32, b"c" * 32, "00" * 8)
    assert keys.psk_hex == "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
