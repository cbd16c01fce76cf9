"""Print the p2pai swarm-token test vectors (tokens/vectors.json) from fixed secrets.

It follows tokens/FORMAT.md directly, with the standard library and cryptography
only and no import of p2pai, so the vectors check p2pai/token.py against the
specification rather than against itself. Regenerate with:

    python tokens/make_vectors.py > tokens/vectors.json
"""

import base64
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEYS = {  # name in vectors.json: (HKDF info label, length in bytes)
    "psk": (b"p2pai/v1/libp2p-psk", 32),
    "seal_key": (b"p2pai/v1/announce-seal", 32),
    "http_key": (b"p2pai/v1/http-hmac", 32),
    "rpc_key": (b"p2pai/v1/rpc-auth", 32),
    "peer_ca_key": (b"p2pai/v1/peer-tls-ca", 32),
    "discriminator": (b"p2pai/v1/lan-discriminator", 8),
}
SECRET_32 = bytes(range(32))
NETWORK_ID = "0123456789abcdef"
CREATED = "2025-01-01T00:00:00Z"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def document(network_id: str, created: str, secret: bytes, version: int = 1) -> str:
    return (
        f"version: {version}\n"
        f'network_id: "{network_id}"\n'
        f'created: "{created}"\n'
        f'secret: "{b64url(secret)}"\n'
    )


def valid(network_id: str, created: str, secret: bytes) -> dict[str, object]:
    yaml_text = document(network_id, created, secret)
    keys = {
        name: HKDF(hashes.SHA256(), length, bytes.fromhex(network_id), label)
        .derive(secret)
        .hex()
        for name, (label, length) in KEYS.items()
    }
    return {
        "token": b64url(yaml_text.encode("utf-8")),
        "yaml": yaml_text,
        "secret_hex": secret.hex(),
        "public": {"version": 1, "network_id": network_id, "created": created},
        "keys": keys,
    }


def invalid(reason: str, yaml_text: str) -> dict[str, str]:
    return {"reason": reason, "token": b64url(yaml_text.encode("utf-8"))}


def main() -> None:
    base = document(NETWORK_ID, CREATED, SECRET_32)
    vectors = {
        "spec": "tokens/FORMAT.md",
        "note": "keys are lowercase hex; keys.psk is also the string py-libp2p's psk= takes",
        "valid": [
            valid(NETWORK_ID, CREATED, SECRET_32),
            valid("0000000000000000", "1999-12-31T23:59:59Z", bytes(32)),
            valid("fedcba9876543210", "2038-01-19T03:14:08Z", bytes([0xFF]) * 32),
            # Decoders accept secrets longer than 32 bytes.
            valid("a5a5a5a5a5a5a5a5", "2025-06-15T12:34:56Z", bytes(range(100, 164))),
        ],
        "invalid": [
            invalid("unknown version", document(NETWORK_ID, CREATED, SECRET_32, version=2)),
            invalid("version is a string", base.replace("version: 1", 'version: "1"')),
            invalid("missing field", base.replace(f'created: "{CREATED}"\n', "")),
            invalid("unknown field", base + 'name: "x"\n'),
            invalid("network_id not lowercase hex", base.replace(NETWORK_ID, NETWORK_ID.upper())),
            invalid("created not canonical", base.replace(CREATED, "2025-01-01 00:00:00")),
            invalid("secret under 32 bytes", document(NETWORK_ID, CREATED, SECRET_32[:31])),
            invalid("not a mapping", "- version: 1\n"),
            {"reason": "not base64", "token": "not a token!"},
        ],
    }
    print(json.dumps(vectors, indent=2))


if __name__ == "__main__":
    main()
