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


def require_admin(request: web.Request, api_keys: frozenset[str], admin_keys: frozenset[str], what: str) -> None:
    """With keys set, only an admin key passes (401 without a valid key, 403 with an API key); without
    keys the node is open and this passes too (callers add their own conditions)."""
    if not (api_keys or admin_keys) or has_key(request, admin_keys):
        return
    if not has_key(request, api_keys):
        raise invalid_key()
    raise forbidden(f"{what} needs an admin key (set with --admin-key), not an API key.")


def forbidden(message: str) -> APIError:
    return APIError(403, message, type_="permission_error", code="forbidden")
