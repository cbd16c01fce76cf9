"""From settings to a running overlay: the token, the keys and the libp2p options."""

from __future__ import annotations

from dataclasses import dataclass

from .. import __version__
from ..overlay import Overlay, OverlayConfig
from ..settings import NodeSettings
from ..token import NetworkKeys, SwarmToken, TokenError, derive_keys, load_or_create_token, parse_token, read_token_file


@dataclass(frozen=True)
class Membership:
    token: str
    parsed: SwarmToken
    keys: NetworkKeys
    created: bool
    """True when this start created the token (first start without --token)."""


def given_token(settings: NodeSettings) -> str | None:
    """The token the user gave: --token/P2PAI_TOKEN/TOKEN or the content of --token-file.

    Raises TokenError when both are given or the file is unreadable or holds no token.
    """
    if settings.token_file is None:
        return settings.token
    if settings.token:
        raise TokenError("give the swarm token either with --token (P2PAI_TOKEN, TOKEN) or with --token-file, "
                         "not both")
    return read_token_file(settings.token_file)


def resolve_token(settings: NodeSettings) -> Membership:
    """The swarm to join: the token the user gave, else the one kept in the data dir.

    Raises TokenError for a malformed token, before anything starts.
    """
    token = given_token(settings)
    created = False
    if not token:
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
            small_swarm=settings.small_swarm,
        )
    )
