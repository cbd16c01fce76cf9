"""Run one node: join the swarm, build its models, serve the API, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal

from aiohttp import web

from . import __version__
from .api.app import create_app
from .api.peer_app import create_peer_app
from .api.state import NodeState
from .backends.rpc.relay import Credentials
from .console import LoadReporter, console, print_banner, print_swarm
from .identity import Identity
from .models.catalog import build_catalog
from .overlay.addresses import ips
from .routing.forward import Forwarder
from .routing.peer_auth import Verifier
from .routing.router import Router
from .routing.tunnel_http import serve_locally
from .serving.manager import LoadEvent, ModelManager
from .settings import NodeSettings, prepare_data_dir
from .swarm.endpoints import parse_ip
from .swarm.join import build_overlay, resolve_token
from .swarm.payload import FEDERATED_ROLE, PeerEndpoint, local_payload
from .swarm.swarm import Swarm

log = logging.getLogger(__name__)


async def run_node(settings: NodeSettings, stop: asyncio.Event | None = None) -> None:
    prepare_data_dir(settings.data_dir)
    membership = resolve_token(settings)  # a bad token fails here, before anything listens
    catalog = build_catalog(settings.effective_models_dir, settings.data_dir, list(settings.models), settings.default_model)
    reporter = LoadReporter()
    endpoint = PeerEndpoint()  # filled in once the peer site listens

    def on_load(event: LoadEvent) -> None:
        reporter(event)
        swarm.refresh()

    manager = ModelManager(
        catalog,
        settings.threads,
        settings.context_size,
        settings.parallel,
        on_load=on_load,
        workers=lambda: swarm.workers(),
        rpc_credentials=Credentials(Identity.load_or_create(settings.data_dir), membership.keys.rpc_key),
        flash_attention=settings.flash_attention,
    )
    overlay = build_overlay(settings, membership.keys, [FEDERATED_ROLE])
    swarm = Swarm(overlay, lambda: local_payload(manager, endpoint).model_dump())
    try:
        await swarm.start()
    except Exception as exc:
        raise SystemExit(f"cannot join the swarm: {exc}") from exc
    forwarder = Forwarder(swarm.peer_id, membership.keys.http_key, tunnel=overlay.tunnel)
    router = Router(manager, swarm, forwarder, settings.routing)
    await router.start()
    state = NodeState(
        manager=manager,
        node_id=swarm.peer_id,
        version=__version__,
        api_keys=frozenset(settings.api_keys),
        admin_keys=frozenset(settings.admin_keys),
        swarm=swarm,
        router=router,
        token=membership.token,
        limits=settings.limits,
    )
    runner = web.AppRunner(create_app(state), handler_cancellation=True, access_log=None)
    peer_runner = web.AppRunner(create_peer_app(state, Verifier(membership.keys.http_key)),
                                handler_cancellation=True, access_log=None)
    await runner.setup()
    await peer_runner.setup()
    try:
        peer_site = await _listen(peer_runner, settings.peer_host, settings.peer_port)
        bound_port = _bound_port(peer_site)
        local_peer_url = f"http://{_loopback_for(settings.peer_host)}:{bound_port}"
        overlay.set_tunnel_handler(serve_locally(forwarder.session, lambda: local_peer_url))
        if settings.peer_advertise is not None:
            endpoint.hosts, endpoint.port = [settings.peer_advertise[0]], settings.peer_advertise[1]
            if parse_ip(settings.peer_advertise[0]) is None:
                log.warning("--peer-advertise %s is not an IP address: peers connect only to the IP this node's "
                            "connections come from, so they will use the tunnel", settings.peer_advertise[0])
        else:
            endpoint.hosts, endpoint.port = endpoint_hosts(settings.peer_host, swarm.self_node().addrs), bound_port
        swarm.refresh()
        client_site = await _listen(runner, settings.listen_host, settings.listen_port)
        swarm.set_own_addresses([(settings.listen_host, _bound_port(client_site)), (settings.peer_host, bound_port)])
        url = f"http://{settings.listen_host}:{settings.listen_port}"
        print_banner(manager, url, state.node_id, bool(settings.api_keys), catalog.problems)
        print_swarm(settings, membership, swarm.self_node().addrs)
        stop = stop or _stop_on_signals()
        if settings.preload:
            await manager.preload()
        state.ready = True
        console.print("[green]ready[/]")
        await stop.wait()
    finally:
        console.print("stopping…")
        # Leave the swarm first: peers stop sending requests here at once, while the API sites
        # below still finish the requests they have.
        await swarm.stop()
        await runner.cleanup()
        await peer_runner.cleanup()
        await router.stop()
        await manager.close()


async def _listen(runner: web.AppRunner, host: str, port: int) -> web.TCPSite:
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return site


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the asyncio server private; port 0 needs the real one
    assert server is not None and server.sockets
    return server.sockets[0].getsockname()[1]


def _loopback_for(bound_host: str) -> str:
    """Where this node reaches its own peer endpoint (to answer tunnelled requests)."""
    ip = ipaddress.ip_address(bound_host)
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "[::1]"
    return f"[{ip}]" if ip.version == 6 else str(ip)


def endpoint_hosts(bound_host: str, p2p_addrs: tuple[str, ...]) -> list[str]:
    """The IPs peers should use for an endpoint bound to ``bound_host``: the IPs the
    overlay advertises when it is a wildcard, since those are known to be dialable."""
    if not ipaddress.ip_address(bound_host).is_unspecified:
        return [bound_host]
    return ips(p2p_addrs)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
