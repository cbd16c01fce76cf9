"""Property-based fuzzing of a running node from its own /openapi.json, with schemathesis.

Used by tests/test_fuzz.py (a bounded run) and bench/fuzz.py (a long campaign).
Each operation gets valid and invalid requests (schemathesis' positive and
negative modes); most valid requests name a model the node serves, so they
reach generation instead of stopping at model_not_found. A response fails when
it is a 5xx, has an undocumented status or content type, does not match the
document's schema (every error: OpenAI's shape), or answers invalid input with
a 2xx. Failures are collected, not raised: a campaign reports all it found.

Requests to the peer endpoint go through `member_session`, the one place that
knows how a member authenticates: TLS with a certificate from the swarm's CA
(routing/peer_tls.py), each request signed for the node (routing/peer_auth.py).
"""

from __future__ import annotations

import json
import random
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from p2pai.identity import Identity
from p2pai.routing.peer_auth import SIGNED_HEADERS, sign
from p2pai.routing.peer_tls import PeerTLS
from p2pai.routing.router import PIN_HEADER
from p2pai.token import derive_keys, parse_token

NODE_FLAGS = ("--no-default-model", "--max-prompts", "4", "--max-messages", "64")
"""For the node under fuzzing: small per-request counts keep each generated request short (the limits
themselves are tested in test_validation.py)."""
MODELS = ["tiny", "tiny-b"]
"""The models of tests/conftest.py's write_test_models."""

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]
REQUEST_TIMEOUT_S = 60.0
MAX_TOKENS = 64
"""Valid requests asking for more are mostly shortened to this: the fuzzer is after inputs, not long answers."""


class PeerSigner(requests.auth.AuthBase):
    """Signs each request for ``destination`` as member ``sender`` would (after schemathesis built it)."""

    def __init__(self, key: bytes, sender: str, destination: str) -> None:
        self._key = key
        self._sender = sender
        self._destination = destination

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        assert request.method is not None
        request.headers.update(sign(self._key, self._sender, self._destination, request.method, request.path_url,
                                    body))
        return request


class _TLSAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        # Peers are named by peer id, not host name (the fuzzer does not pin the node's certificate).
        super().init_poolmanager(*args, **kwargs, ssl_context=self._context, assert_hostname=False)


def member_session(token: str, destination: str, data_dir: Path) -> requests.Session:
    """A session to node ``destination``'s peer endpoint as a new member of the swarm of ``token``
    (its TLS key and certificate kept in ``data_dir``)."""
    keys = derive_keys(parse_token(token))
    member = PeerTLS.load_or_create(data_dir, keys.peer_ca_key, Identity.generate())
    session = requests.Session()
    session.mount("https://", _TLSAdapter(member.client_context()))
    session.auth = PeerSigner(keys.http_key, member.peer_id, destination)
    return session


@dataclass
class Figures:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    """Requests by operation, mode and status."""
    errors: Counter[str] = field(default_factory=Counter)
    """Error answers by OpenAI `code`."""
    failures: dict[str, str] = field(default_factory=dict)
    """One example per distinct failure (check, operation, status): its message and a curl command."""
    seconds: float = 0.0

    def add(self, other: Figures) -> None:
        self.requests += other.requests
        self.statuses.update(other.statuses)
        self.outcomes.update(other.outcomes)
        self.errors.update(other.errors)
        self.failures.update(other.failures)
        self.seconds += other.seconds


def load(base_url: str, session: requests.Session) -> Any:
    """The document the node serves (fetched through ``session``, signed when it is the peer endpoint)."""
    response = session.get(base_url + "/openapi.json", timeout=REQUEST_TIMEOUT_S)
    response.raise_for_status()
    return schemathesis.openapi.from_dict(response.json())


def campaign(schema: Any, base_url: str, session: requests.Session, models: list[str], examples: int,
             seconds: float, seed: int | None = None) -> Figures:
    """Up to ``examples`` requests per operation and mode, stopping each once ``seconds`` / their number ran out."""
    figures = Figures()
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    runs = [(operation, mode) for operation in operations for mode in GenerationMode
            if mode is GenerationMode.POSITIVE or _has_input(operation)]
    for index, (operation, mode) in enumerate(runs):
        left = seconds - (time.monotonic() - started)
        budget = left / (len(runs) - index)
        figures.add(_fuzz(operation, mode, base_url, session, models, examples, budget, seed))
    figures.seconds = time.monotonic() - started
    return figures


def _fuzz(operation: Any, mode: GenerationMode, base_url: str, session: requests.Session, models: list[str],
          examples: int, budget: float, seed: int | None) -> Figures:
    figures = Figures()
    deadline = time.monotonic() + budget
    checks = NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else CHECKS

    # Not fuzzed: PeerSigner sets the signature headers on every request (an unsigned one only gets a 401).
    signed = {param.name: "set when sent" for param in operation.iter_parameters() if param.name in SIGNED_HEADERS}
    strategy = operation.as_strategy(generation_mode=mode, headers=signed or None)

    @hypothesis.seed(random.getrandbits(64) if seed is None else seed)  # given: no "reproduce with @seed" notes
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy, model=st.sampled_from(models),
           tweak=st.integers(0, 9))
    def run(case: Any, model: str, tweak: int) -> None:
        if time.monotonic() > deadline:
            return
        if mode is GenerationMode.POSITIVE and tweak:
            _towards_generation(case, model, "model" in _properties(operation))
        response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT_S)
        figures.requests += 1
        figures.statuses[response.status_code] += 1
        figures.outcomes[f"{operation.label} {mode.value} {response.status_code}"] += 1
        if response.status_code >= 400:
            figures.errors[_error_code(response.content)] += 1
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, FailureGroup) as exc:  # schemathesis' Failure, or a group of them
            key = f"{operation.label} [{mode.value}] {response.status_code}: {type(exc).__name__}"
            figures.failures.setdefault(key, f"{str(exc)[:2000]}\n{case.as_curl_command()[:2000]}")

    try:
        run()
    except Unsatisfiable:
        pass  # nothing to generate (a negative request of an operation without parameters)
    return figures


def _towards_generation(case: Any, model: str, has_model: bool) -> None:
    """Most valid requests: a served model, no random node pin, a short answer (so they reach generation)."""
    if isinstance(case.headers, dict):
        case.headers.pop(PIN_HEADER, None)
    if not isinstance(case.body, dict):
        return
    if has_model:
        case.body["model"] = model
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(case.body.get(name), int) and case.body[name] > MAX_TOKENS:
            case.body[name] = 1 + case.body[name] % MAX_TOKENS


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "(not OpenAI's shape)"


def _has_input(operation: Any) -> bool:
    """Something a negative request could get wrong (a GET without parameters has nothing)."""
    return bool(operation.definition.raw.get("requestBody") or list(operation.iter_parameters()))


def _properties(operation: Any) -> dict[str, Any]:
    body = operation.definition.raw.get("requestBody", {})
    schema = body.get("content", {}).get("application/json", {}).get("schema", {})
    ref = schema.get("$ref", "")
    components = operation.schema.raw_schema.get("components", {}).get("schemas", {})
    return components.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})


def report(figures: Figures, outcomes: bool = False) -> str:
    lines = [f"{figures.requests} requests in {figures.seconds:.0f} s; statuses "
             + ", ".join(f"{status}: {count}" for status, count in sorted(figures.statuses.items()))]
    lines.append("error codes " + ", ".join(f"{code}: {count}" for code, count in figures.errors.most_common()))
    if outcomes:
        lines += [f"  {key}: {count}" for key, count in sorted(figures.outcomes.items())]
    for key, detail in figures.failures.items():
        lines += [f"FAILURE {key}", detail, ""]
    return "\n".join(lines)
