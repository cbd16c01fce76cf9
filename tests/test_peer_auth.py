"""The peer signature rules: what the peer endpoint accepts, judged from the headers alone."""

from __future__ import annotations

import pytest

from p2pai.routing.peer_auth import (
    BODY_DIGEST,
    DESTINATION,
    NONCE,
    PEER,
    SIGNATURE,
    SIGNED_HEADERS,
    TIMESTAMP,
    Rejected,
    Verifier,
    is_peer_request,
    sign,
)

KEY = bytes(range(32))
BODY = b'{"model": "m"}'
A, B, C = "PeerA", "NodeB", "NodeC"
PATH = "/v1/completions"


def test_a_signed_request_verifies_once_and_its_body_must_match() -> None:
    verifier = Verifier(KEY, B)
    headers = sign(KEY, A, B, "POST", PATH, BODY, now=1000.0)
    signed = verifier.check(headers, "POST", PATH, now=1001.0)
    assert signed.sender == A
    signed.check_body(BODY)
    with pytest.raises(Rejected, match="digest"):
        signed.check_body(BODY + b" ")
    with pytest.raises(Rejected, match="replayed"):
        verifier.check(headers, "POST", PATH, now=1001.0)


@pytest.mark.parametrize(
    "change",
    [
        {"method": "GET"},
        {"path": "/v1/embeddings"},
        {"now": 1000.0 + 31},
        {"now": 1000.0 - 31},
        {"key": bytes(32)},
        {PEER: "PeerX"},
        {DESTINATION: C},
        {BODY_DIGEST: "0" * 64},
        {TIMESTAMP: "1000.001"},
    ],
)
def test_any_change_is_refused(change: dict) -> None:
    signed = sign(change.get("key", KEY), A, B, "POST", PATH, BODY, now=1000.0)
    signed.update({k: v for k, v in change.items() if k in SIGNED_HEADERS})
    with pytest.raises(Rejected):
        Verifier(KEY, B).check(signed, change.get("method", "POST"), change.get("path", PATH),
                               now=change.get("now", 1000.0))


def test_a_request_signed_for_one_node_is_refused_by_another() -> None:
    headers = sign(KEY, A, B, "POST", PATH, BODY, now=1000.0)
    with pytest.raises(Rejected, match="another node"):
        Verifier(KEY, C).check(headers, "POST", PATH, now=1000.0)
    assert Verifier(KEY, B).check(headers, "POST", PATH, now=1000.0).sender == A


@pytest.mark.parametrize("timestamp", ["nan", "NaN", "inf", "-inf", "1e3", "-1000.000", "1000", "1000.0000",
                                       " 1000.000", "1000.000\x00", "１０００.000"])
def test_timestamps_that_are_not_plain_finite_numbers_are_refused(timestamp: str) -> None:
    headers = sign(KEY, A, B, "POST", PATH, BODY, now=1000.0)
    headers[TIMESTAMP] = timestamp
    with pytest.raises(Rejected, match="malformed"):  # before the signature is even computed
        Verifier(KEY, B).check(headers, "POST", PATH, now=1000.0)


@pytest.mark.parametrize("name", SIGNED_HEADERS)
@pytest.mark.parametrize("garbage", ["", "x" * 5000, "\udcff\udcfe", "é", "a b", "12D3KooW\r\n", "0" * 63, "../"])
def test_garbage_in_any_signature_header_is_refused(name: str, garbage: str) -> None:
    headers = sign(KEY, A, B, "POST", PATH, BODY, now=1000.0)
    headers[name] = garbage
    with pytest.raises(Rejected):
        Verifier(KEY, B).check(headers, "POST", PATH, now=1000.0)


def test_missing_headers_are_named() -> None:
    for name in SIGNED_HEADERS:
        headers = sign(KEY, A, B, "POST", PATH, BODY, now=1000.0)
        del headers[name]
        with pytest.raises(Rejected, match=f"missing header {name}"):
            Verifier(KEY, B).check(headers, "POST", PATH, now=1000.0)
    assert is_peer_request({SIGNATURE: "x"}) and is_peer_request({NONCE: ""}) and not is_peer_request({})


def test_the_replay_window_is_bounded_in_memory() -> None:
    verifier = Verifier(KEY, B, max_nonces=10)
    for i in range(10):
        verifier.check(sign(KEY, A, B, "POST", "/", b"", now=1000.0 + i), "POST", "/", now=1000.0 + i)
    with pytest.raises(Rejected, match="too many"):
        verifier.check(sign(KEY, A, B, "POST", "/", b"", now=1010.0), "POST", "/", now=1010.0)
    # Once the first ones are older than twice the skew they are forgotten (refused by time anyway).
    later = sign(KEY, A, B, "POST", "/", b"", now=1075.0)
    assert verifier.check(later, "POST", "/", now=1075.0).sender == A
    assert later[NONCE]
