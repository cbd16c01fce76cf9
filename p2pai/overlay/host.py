"""The libp2p side of the overlay; every object here lives in the trio thread.

A TCP + yamux host that accepts Noise only (py-libp2p would otherwise also
accept TLS, SECIO and PLAINTEXT) inside a PSK private network, and sends
length-prefixed membership messages (gossip.py) to connected peers over one
long-lived stream each. Messages are opaque here: the overlay makes and checks
them; this side only bounds their size and rate, and drops what is addressed
to a peer it is not connected to (the protocol repeats what matters).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import trio

from p2pai.identity import Identity, is_peer_id
from p2pai.overlay.addresses import advertised, parse_tcp
from p2pai.overlay.announcement import MAX_MESSAGE_BYTES
from p2pai.overlay.dialer import Dialer
from p2pai.overlay.ratelimit import TokenBucket
from p2pai.overlay.tunnel import TUNNEL_PROTOCOL, NotDelivered, TunnelClient, TunnelServer

if TYPE_CHECKING:
    from libp2p.abc import IHost, INetStream
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

log = logging.getLogger(__name__)

MEMBERSHIP_PROTOCOL = cast("TProtocol", "/p2pai/membership/2.0.0")  # a cast: libp2p is imported lazily
SEND_TIMEOUT = 2.0
LINK_RETRY_DELAY = 1.0  # after a failed link, before the next stream to that peer
POLL_INTERVAL = 0.1  # how often connections are checked; bounds detection of a closed one
FRAMES_PER_SECOND = 20.0  # per peer; a healthy peer sends a few, more on changes
FRAME_BURST = 40
MAX_OUTBOX = 64  # messages waiting for one peer's stream; the oldest go first
MAX_STREAMS_PER_PEER = 2
_LENGTH_BYTES = 4


class OverlayHost:
    """Runs the libp2p host; reports frames and connections through callbacks.

    The callbacks are called in the trio thread and must only hand over
    (e.g. ``loop.call_soon_threadsafe``); ``on_frame(peer, frame, remote_ip)``
    returns False when the receiver is overloaded and the frame is dropped.
    ``remote_ip`` is the address the peer's connection comes from (None if
    libp2p cannot tell): the only address of a peer this node has seen it at.
    """

    def __init__(
        self,
        identity: Identity,
        psk_hex: str,
        listen: list[str],
        bootstrap: list[str],
        max_peers: int,
        on_frame: Callable[[str, bytes, str | None], bool],
        on_connections: Callable[[frozenset[str]], None],
        tunnel: TunnelServer,
    ) -> None:
        self._identity = identity
        self._psk_hex = psk_hex
        self._listen = listen
        self._bootstrap = _parse_bootstrap(bootstrap)
        self._max_peers = max_peers
        self._on_frame = on_frame
        self._on_connections = on_connections
        self._outboxes: dict[str, deque[bytes]] = {}
        """Messages to send, per connected peer."""
        self._queued: dict[str, trio.Event] = {}
        self._links: set[str] = set()
        self._streams: defaultdict[str, int] = defaultdict(int)
        self._buckets: dict[str, TokenBucket] = {}
        self._dialer: Dialer | None = None
        self._tunnel = tunnel
        self._tunnel_client = TunnelClient()
        self._host: IHost | None = None
        self._nursery: trio.Nursery | None = None
        # Read by the overlay from the asyncio thread: keys never change, so
        # reading while the trio thread increments is safe.
        self.drops = dict.fromkeys(("rate_limited", "overloaded", "oversized", "too_many_streams",
                                    "not_connected", "outbox_full"), 0)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, then report (the addresses listened on, wildcards included; the advertised
        ones) through ``task_status``."""
        from multiaddr import Multiaddr

        host = self._new_host()
        async with host.run([Multiaddr(a) for a in self._listen]), trio.open_nursery() as nursery:
            host.set_stream_handler(MEMBERSHIP_PROTOCOL, self._receive)
            host.set_stream_handler(TUNNEL_PROTOCOL, self._tunnel.handle)
            self._host, self._nursery = host, nursery
            self._dialer = Dialer(host, self._bootstrap)
            nursery.start_soon(self._dialer.run)
            nursery.start_soon(self._watch_connections, host, nursery)
            listening = [str(a) for a in host.get_transport_addrs()]
            task_status.started((listening, advertised(listening, self._identity.peer_id)))
            await trio.sleep_forever()

    def _new_host(self) -> IHost:
        from libp2p import NOISE_PROTOCOL_ID, YAMUX_PROTOCOL_ID, NoiseTransport, Yamux, new_host
        from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
        from libp2p.custom_types import TProtocol
        from libp2p.network.config import ConnectionConfig, RetryConfig
        from libp2p.network.swarm import Swarm

        _route_libp2p_logs()
        key_pair = self._identity.to_libp2p_key_pair()
        noise = NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)
        host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: noise},  # never PLAINTEXT/SECIO/TLS
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            psk=self._psk_hex,
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,  # the default 3 adds ~250 ms to every dial
                max_connections=self._max_peers,
                high_watermark=self._max_peers,
                # No libp2p auto-connector: the Dialer alone decides whom to dial.
                min_connections=0,
                low_watermark=0,
            ),
            enable_quic=False,  # the PSK is not applied on QUIC
            enable_mDNS=False,
            enable_upnp=False,
        )
        network = host.get_network()
        if not isinstance(network, Swarm):  # the two settings below are Swarm's, not INetworkService's
            raise RuntimeError(f"libp2p's network is a {type(network).__name__}, not the Swarm p2pai tunes")
        network.retry_config = RetryConfig(max_retries=0)  # the Dialer retries
        # libp2p's auto-connector aims at (low + high watermark) / 2 connections whatever
        # min_connections says, and its redials race the Dialer's (a connection replaced by a
        # simultaneous dial takes streams opened on it down). The Dialer alone decides.
        network.auto_connector.maybe_connect = _no_auto_dials  # type: ignore[method-assign]  # see above
        return host

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        """Queue (peer id, message) pairs; those to a peer this node is not connected to are dropped."""
        for peer, message in messages:
            outbox = self._outboxes.get(peer)
            if outbox is None:
                self.drops["not_connected"] += 1
                continue
            if len(outbox) == outbox.maxlen:
                self.drops["outbox_full"] += 1
            outbox.append(message)
            self._queued[peer].set()

    async def exchange(self, peer_id: str, request: bytes, deliver: Callable[[int, bytes], None]) -> None:
        """One tunnelled request to a connected peer (see tunnel.TunnelClient)."""
        if self._host is None or self._nursery is None:
            raise NotDelivered("the host is not running")
        await self._tunnel_client.exchange(self._host, self._nursery, peer_id, request, deliver)

    def set_dial_targets(self, targets: dict[str, list[str]], once: frozenset[str]) -> None:
        if self._dialer is not None:
            self._dialer.set_targets(targets, once)

    @property
    def dials(self) -> int:
        """Dial attempts so far (one per address tried); read from the asyncio thread."""
        return self._dialer.dials if self._dialer is not None else 0

    async def _watch_connections(self, host: IHost, nursery: trio.Nursery) -> None:
        """Give each connected peer a link and report the connected set on change."""
        reported: frozenset[str] | None = None
        while True:
            peers = {str(peer): peer for peer in host.get_connected_peers()}
            for key, peer in peers.items():
                if key not in self._links:
                    self._links.add(key)
                    nursery.start_soon(self._link, host, peer)
            connected = frozenset(peers)
            if connected != reported:
                for gone in set(self._outboxes) - connected:
                    del self._outboxes[gone]
                    self._queued.pop(gone).set()  # its link ends
                for new in connected - set(self._outboxes):
                    self._outboxes[new], self._queued[new] = deque(maxlen=MAX_OUTBOX), trio.Event()
                self._on_connections(connected)
                reported = connected
                for gone in set(self._buckets) - connected - set(self._streams):
                    del self._buckets[gone]
            await trio.sleep(POLL_INTERVAL)

    async def _link(self, host: IHost, peer: ID) -> None:
        """Send the messages queued for ``peer``, as they come, over one stream."""
        stream: INetStream | None = None
        key = str(peer)
        try:
            with trio.fail_after(SEND_TIMEOUT):
                stream = await host.new_stream(peer, [MEMBERSHIP_PROTOCOL])
            while (outbox := self._outboxes.get(key)) is not None:
                if not outbox:
                    self._queued[key] = queued = trio.Event()  # a trio.Event cannot be cleared
                    await queued.wait()
                    continue
                frames = b"".join(len(m).to_bytes(_LENGTH_BYTES, "big") + m for m in outbox)
                outbox.clear()
                with trio.fail_after(SEND_TIMEOUT):  # a frozen peer stops reading
                    await stream.write(frames)
            await _reset(stream)
        except Exception as exc:  # noqa: BLE001 - a lost peer surfaces as many different exception types
            log.debug("membership link to %s ended: %r", peer, exc)
            await _reset(stream)
            await trio.sleep(LINK_RETRY_DELAY)
        finally:
            self._links.discard(key)

    async def _receive(self, stream: INetStream) -> None:
        """Read frames from one peer's stream, dropping oversized and excess ones."""
        from libp2p.io.utils import read_exactly

        peer = str(stream.muxed_conn.peer_id)
        remote = _remote_ip(stream)
        if self._streams[peer] >= MAX_STREAMS_PER_PEER:
            self.drops["too_many_streams"] += 1
            await _reset(stream)
            return
        self._streams[peer] += 1
        now = trio.current_time()
        bucket = self._buckets.setdefault(peer, TokenBucket(FRAMES_PER_SECOND, FRAME_BURST, now))
        try:
            while True:
                length = int.from_bytes(await read_exactly(stream, _LENGTH_BYTES), "big")
                if length > MAX_MESSAGE_BYTES:
                    self.drops["oversized"] += 1
                    break
                frame = await read_exactly(stream, length)
                if not bucket.take(trio.current_time()):
                    self.drops["rate_limited"] += 1
                elif not self._on_frame(peer, frame, remote):
                    self.drops["overloaded"] += 1
        except Exception as exc:  # noqa: BLE001 - end of stream, reset or a dead peer
            log.debug("membership stream from %s ended: %r", peer, exc)
        finally:
            self._streams[peer] -= 1
            if not self._streams[peer]:
                del self._streams[peer]
            await _reset(stream)


def _route_libp2p_logs() -> None:
    """Let the application's logging configuration handle py-libp2p's logs.

    Unless LIBP2P_DEBUG is set, py-libp2p detaches its logger (no handler, no
    propagation), so its warnings reach stderr unformatted through logging's
    last resort. Its TCP transport also logs an ERROR for every failed dial,
    which the Dialer expects while a peer is down (and logs itself).
    """
    if os.environ.get("LIBP2P_DEBUG"):
        return
    logging.getLogger("libp2p").propagate = True
    logging.getLogger("libp2p.transport.tcp.tcp").setLevel(logging.CRITICAL)
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.WARNING)  # it sets INFO itself
    # Some libp2p modules log through the root logger (logging.warning), e.g. a harmless
    # "Error getting transport addresses" on most new connections.
    logging.getLogger().addFilter(_not_from_libp2p)


def _not_from_libp2p(record: logging.LogRecord) -> bool:
    return not (record.name == "root" and f"{os.sep}libp2p{os.sep}" in record.pathname)


def _remote_ip(stream: INetStream) -> str | None:
    """The IP the stream's connection comes from (for a connection this node dialled, the one it dialled)."""
    try:
        address = stream.get_remote_address()
    except Exception as exc:  # noqa: BLE001 - a connection closing under us (libp2p's types vary)
        log.debug("no remote address for a stream: %r", exc)
        return None
    return address[0] if address else None


async def _no_auto_dials() -> None:
    return None


async def _reset(stream: INetStream | None) -> None:
    if stream is None:
        return
    try:
        with trio.move_on_after(0.5):
            await stream.reset()
    except Exception as exc:  # noqa: BLE001 - best effort on a stream that may already be dead
        log.debug("stream reset failed: %r", exc)


def _parse_bootstrap(bootstrap: list[str]) -> dict[str, list[str]]:
    """``/ip4/…/tcp/…/p2p/<id>`` strings -> {peer id: [address without /p2p]}."""
    peers: dict[str, list[str]] = defaultdict(list)
    for addr in bootstrap:
        parsed = parse_tcp(addr)
        peer_id = parsed[2] if parsed is not None else None
        if parsed is None or peer_id is None or not is_peer_id(peer_id):
            raise ValueError(f"bootstrap address {addr!r} is not /ip4|ip6/<ip>/tcp/<port>/p2p/<peer id>")
        ip, port, _ = parsed
        peers[peer_id].append(f"/ip{ip.version}/{ip}/tcp/{port}")
    return dict(peers)
