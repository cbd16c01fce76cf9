"""`p2pai peers`: the swarm as a node sees it, as a table (redrawn live with --watch)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

REQUEST_TIMEOUT = 5.0


class PeersError(Exception):
    pass


def fetch_swarm(url: str, api_key: str | None) -> dict[str, Any]:
    request = urllib.request.Request(url.rstrip("/") + "/api/p2p")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise PeersError(f"{url} answered {exc.code}: {_error_message(exc)}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PeersError(f"cannot reach a node at {url}: {reason}") from exc
    except ValueError as exc:
        raise PeersError(f"{url} did not answer with JSON: {exc}") from exc


def watch(console: Console, url: str, api_key: str | None, interval: float) -> None:
    """Redraw the table every ``interval`` seconds until interrupted; a node that stops answering
    (restarting, say) shows as an error line until it answers again."""
    with Live(console=console, auto_refresh=False) as live:
        while True:
            view: RenderableType
            try:
                view = swarm_table(fetch_swarm(url, api_key))
            except PeersError as exc:
                view = Text(f"error: {exc}", style="red")
            live.update(view, refresh=True)
            time.sleep(interval)


def swarm_table(swarm: dict[str, Any], now: float | None = None) -> Table:
    now = time.time() if now is None else now
    table = Table(title="Swarm", title_justify="left")
    for column in ("", "name", "id", "role", "address", "models (loaded in bold)", "load", "GPUs", "last seen"):
        table.add_column(column)
    for node in swarm.get("federated_nodes", []):
        loaded = set(node.get("loaded", []))
        models = ", ".join(f"[bold]{m}[/]" if m in loaded else m for m in node.get("models", [])) or "-"
        capacity = node.get("capacity", {})
        load = f"{capacity.get('in_flight', 0)} running, {capacity.get('queued', 0)} queued"
        gpus = "\n".join(_device(gpu) for gpu in node.get("gpus", [])) or "-"
        table.add_row(_state(node), _name(node), _short(node["id"]), "node", node.get("address", ""), models,
                      load, gpus, _age(node, now))
    for node in swarm.get("llama_cpp_nodes", []):
        free = node.get("free_memory", 0) / (1 << 30)
        user = node.get("in_use_by")
        device = node.get("device") or {}
        table.add_row(_state(node), _name(node), _short(node["id"]), "llama.cpp worker", node.get("tunnelAddress", ""),
                      f"{free:.1f} GiB free", f"used by {_short(user)}" if user else "idle",
                      _device(device) if device.get("type") in ("gpu", "igpu") else "-", _age(node, now))
    return table


def _device(device: dict[str, Any]) -> str:
    """"CUDA0 NVIDIA GeForce RTX 4090 (CUDA): 20.1 / 24.0 GiB free"."""
    name = " ".join(part for part in (device.get("name"), device.get("description")) if part)
    gib = 1 << 30
    return (f"{name} ({device.get('backend', '?')}): "
            f"{device.get('free', 0) / gib:.1f} / {device.get('total', 0) / gib:.1f} GiB free")


def _state(node: dict[str, Any]) -> str:
    return "[green]●[/]" if node.get("online") else "[red]○[/]"


def _name(node: dict[str, Any]) -> str:
    return f"{node.get('name', '')} (this node)" if node.get("self") else node.get("name", "")


def _short(peer_id: str) -> str:
    return peer_id if len(peer_id) <= 14 else f"{peer_id[:6]}…{peer_id[-6:]}"


def _age(node: dict[str, Any], now: float) -> str:
    try:
        seen = datetime.fromisoformat(node["lastSeen"].replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return "?"
    seconds = max(0.0, now - seen)
    return "now" if seconds < 2 else f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        return json.load(exc)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return exc.reason
