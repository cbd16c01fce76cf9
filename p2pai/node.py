"""Run one node: build its models, serve the API, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal

from aiohttp import web

from . import __version__
from .api.app import create_app
from .api.state import NodeState
from .console import LoadReporter, console, print_banner
from .models.catalog import build_catalog
from .serving.manager import ModelManager
from .settings import NodeSettings

log = logging.getLogger(__name__)


def node_id(settings: NodeSettings) -> str:
    """A stable id for this node, kept in its data dir."""
    path = settings.data_dir / "node-id"
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_hex(8)
    path.write_text(value + "\n")
    return value


async def run_node(settings: NodeSettings, stop: asyncio.Event | None = None) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = build_catalog(settings.effective_models_dir, settings.data_dir, list(settings.models))
    manager = ModelManager(catalog, settings.threads, settings.context_size, settings.parallel,
                           on_load=LoadReporter())
    state = NodeState(
        manager=manager,
        node_id=node_id(settings),
        version=__version__,
        api_keys=frozenset(settings.api_keys),
    )
    runner = web.AppRunner(create_app(state), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.listen_host, settings.listen_port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"cannot listen on {settings.listen_host}:{settings.listen_port}: {exc.strerror}") from exc
    url = f"http://{settings.listen_host}:{settings.listen_port}"
    print_banner(manager, url, state.node_id, bool(settings.api_keys), catalog.problems)
    stop = stop or _stop_on_signals()
    try:
        if settings.preload:
            await manager.preload()
        state.ready = True
        console.print("[green]ready[/]")
        await stop.wait()
    finally:
        console.print("stopping…")
        await runner.cleanup()
        await manager.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
