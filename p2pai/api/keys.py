"""API keys as the client API checks them: any API key opens the API, only an admin key the swarm token."""

from __future__ import annotations

import hmac

from aiohttp import web

from .errors import APIError


def has_key(request: web.Request, keys: frozenset[str]) -> bool:
    """Whether the request carries one of ``keys`` (compared in constant time)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        given = request.headers.get("X-API-Key", "")
    return bool(given) and any(hmac.compare_digest(given.encode(), key.encode()) for key in keys)


def invalid_key() -> APIError:
    return APIError(401, "Incorrect API key provided. Pass it as `Authorization: Bearer <key>`.",
                    code="invalid_api_key")
