"""From settings to a running overlay: the token, the keys and the libp2p options."""

from __future__ import annotations

from dataclasses import dataclass

from .. import __version__
from ..overlay import Overlay, OverlayConfig
from ..settings import NodeSettings
from ..token import NetworkKeys, SwarmToken, derive_keys, load_or_create_token, parse_token


@dataclass(frozen=True)
class Membership:
    token: str
    parsed: SwarmToken
    keys: NetworkKeys
    created: bool
    """True when this start created the token (first start without --token)."""


def resolve_token(settings: NodeSettings) -> Membership:
    """The swarm to join: --token/P2PAI_TOKEN/TOKEN, else the one kept in the data dir.

    Raises TokenError for a malformed token, before anything starts.
    """
    if settings.token:
        token, created = settings.token, False
    else:
        token, created = load_or_create_token(settings.data_dir)
    parsed = parse_token(token)
    return Membership(token, parsed, derive_keys(parsed), created)


def build_overlay(settings: NodeSettings, keys: NetworkKeys, roles: list[str]) -> Overlay:
    return Overlay(
        OverlayConfig(
            data_dir=settings.data_dir,
            keys=keys,
            name=settings.name,
            version=__version__,
            roles=roles,
            listen=list(settings.p2p_listen),
            bootstrap=list(settings.bootstrap),
            mdns=settings.mdns,
            mdns_interfaces=list(settings.mdns_interfaces) or None,
        )
    )
