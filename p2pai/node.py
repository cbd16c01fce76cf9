"""Run one node: join the swarm, build its models, serve the API, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from pathlib import Path

from aiohttp import web

from . import __version__
from .aiohttp_internals import bound_port
from .api.app import create_app
from .api.peer_app import create_peer_app, peer_guard, peer_runner
from .api.peer_site import PeerSite
from .api.state import NodeState
from .api.traces import TraceBuffer
from .backends.rpc.relay import Credentials
from .console import LoadReporter, console, print_banner, print_swarm
from .identity import Identity
from .models.catalog import build_catalog
from .models.fetch import RateLimit
from .models.file_index import FileIndex
from .models.gallery import Galleries, parse_gallery_flag
from .models.installer import Installer
from .overlay.addresses import ips
from .routing.forward import Forwarder
from .routing.peer_files import SwarmFiles
from .routing.peer_tls import PLAINTEXT_ENV, PeerTLS, plaintext_requested
from .routing.probe import Prober
from .routing.router import Router
from .routing.tunnel_http import serve_locally
from .serving.manager import LoadEvent, ModelManager
from .settings import NodeSettings, prepare_data_dir
from .store import Store
from .swarm.endpoints import parse_ip
from .swarm.join import build_overlay, resolve_token
from .swarm.payload import FEDERATED_ROLE, DataEndpoint, announced, local_payload
from .swarm.swarm import Swarm

log = logging.getLogger(__name__)


async def run_node(settings: NodeSettings, stop: asyncio.Event | None = None) -> None:
    prepare_data_dir(settings.data_dir)
    membership = resolve_token(settings)  # a bad token fails here, before anything listens
    catalog = build_catalog(settings.effective_models_dir, settings.data_dir, list(settings.models),
                            settings.default_model)
    reporter = LoadReporter()
    identity = Identity.load_or_create(settings.data_dir)
    tls = _peer_tls(settings, membership.keys.peer_ca_key, identity)
    endpoint = DataEndpoint(tls=tls is not None)  # hosts and port filled in once the peer site listens

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
        rpc_credentials=Credentials(identity, membership.keys.rpc_key),
        flash_attention=settings.flash_attention,
        max_loaded=settings.max_loaded,
        memory_budget=settings.memory_budget,
    )
    store = await Store.open(settings.data_dir)
    await store.end_unfinished_jobs("interrupted: the node stopped; apply again to resume the download")
    files = FileIndex(store, lambda: _model_files(manager), lambda: swarm.refresh())
    manager.detect_devices()  # in the background: the announcement shows the GPUs once known
    overlay = build_overlay(settings, membership.keys, [FEDERATED_ROLE])
    swarm = Swarm(overlay, lambda: announced(local_payload(manager, endpoint, files.digest)))
    try:
        await swarm.start()
    except Exception as exc:
        await store.close()
        raise SystemExit(f"cannot join the swarm: {exc}") from exc
    forwarder = Forwarder(swarm.peer_id, membership.keys.http_key, tls, tunnel=overlay.tunnel)
    router = Router(manager, swarm, forwarder, settings.routing, probe_above=settings.probe_above,
                    prober=Prober(forwarder, settings.probe_timeout))
    await router.start()
    files.start()

    def models_changed() -> None:
        files.refresh()
        swarm.refresh()

    installer = Installer(manager, store, Galleries([parse_gallery_flag(g) for g in settings.galleries]),
                          SwarmFiles(swarm, forwarder), RateLimit(settings.pull_rate), models_changed)
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
        files=files,
        installer=installer,
        serve_rate=RateLimit(settings.serve_rate),
        store=store,
        traces=TraceBuffer(bodies=settings.trace_bodies),
    )
    await state.responses.recover()
    runner = web.AppRunner(create_app(state), handler_cancellation=True, access_log=None)
    guard = peer_guard(membership.keys.http_key, swarm.peer_id, tls)
    peers = peer_runner(create_peer_app(state, guard))
    await runner.setup()
    await peers.setup()
    try:
        peer_site = PeerSite(peers, settings.peer_host, settings.peer_port,
                             tls.server_context() if tls is not None else None, guard.refusals)
        await _listen(peer_site, settings.peer_host, settings.peer_port)
        local_peer_url = f"{'https' if tls else 'http'}://{_loopback_for(settings.peer_host)}:{peer_site.port}"
        overlay.set_tunnel_handler(serve_locally(forwarder.client, lambda: local_peer_url, swarm.peer_id))
        if settings.peer_advertise is not None:
            endpoint.hosts, endpoint.port = [settings.peer_advertise[0]], settings.peer_advertise[1]
            if parse_ip(settings.peer_advertise[0]) is None:
                log.warning("--peer-advertise %s is not an IP address: peers connect only to the IP this node's "
                            "connections come from, so they will use the tunnel", settings.peer_advertise[0])
        else:
            endpoint.hosts = endpoint_hosts(settings.peer_host, swarm.self_node().addrs)
            endpoint.port = peer_site.port
        swarm.refresh()
        client_site = web.TCPSite(runner, settings.listen_host, settings.listen_port, reuse_address=True)
        await _listen(client_site, settings.listen_host, settings.listen_port)
        swarm.set_own_addresses([(settings.listen_host, bound_port(client_site)), (settings.peer_host, peer_site.port)])
        url = f"http://{settings.listen_host}:{bound_port(client_site)}"
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
        await installer.close()
        await runner.cleanup()
        await peers.cleanup()
        await router.stop()
        await state.responses.close()  # background responses end (and are stored) while their models run
        await manager.close()
        await files.stop()
        await installer.galleries.close()
        await store.close()


async def _listen(site: web.BaseSite, host: str, port: int) -> None:
    try:
        await site.start()
    except OSError as exc:
        raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def _peer_tls(settings: NodeSettings, ca_seed: bytes, identity: Identity) -> PeerTLS | None:
    """This node's TLS for the data plane; None when started in the measurement-only plaintext mode."""
    if plaintext_requested():
        log.warning("%s=1: prompts and answers cross the network between nodes IN CLEAR (for measurements only)",
                    PLAINTEXT_ENV)
        return None
    try:
        return PeerTLS.load_or_create(settings.data_dir, ca_seed, identity)
    except ValueError as exc:
        raise SystemExit(f"cannot set up TLS for the peer endpoint: {exc}") from exc


def _model_files(manager: ModelManager) -> list[Path]:
    """The files of this node's models that peers may pull: a GGUF is a whole model (an ONNX model's
    tokenizer is another file, so those are not offered; swarm/payload.py announces the same)."""
    return [config.model_path(manager.catalog.models_dir) for name in manager.names()
            if (config := manager.config(name)).backend_name == "llama-cpp"]


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
