"""What a node tells the person who started it, with rich."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.status import Status
from rich.table import Table

from .serving.manager import LoadEvent, ModelManager

if TYPE_CHECKING:
    from .settings import NodeSettings
    from .swarm.join import Membership

console = Console(stderr=True, soft_wrap=True)


class LoadReporter:
    """A spinner while models load, then one line per model with its load time or error."""

    def __init__(self) -> None:
        self._loading: set[str] = set()
        self._status: Status | None = None

    def __call__(self, event: LoadEvent) -> None:
        if event.phase == "start":
            self._loading.add(event.model)
        else:
            self._loading.discard(event.model)
            if event.phase == "done":
                console.print(f"[green]✓[/] model [bold]{event.model}[/] loaded in {event.seconds:.1f} s")
            elif event.phase == "unloaded":
                console.print(f"model [bold]{event.model}[/] unloaded to make room")
            else:
                console.print(f"[red]✗[/] model [bold]{event.model}[/] failed to load: {event.error}")
        self._refresh()

    def _refresh(self) -> None:
        if self._loading:
            text = "Loading " + ", ".join(sorted(self._loading)) + "…"
            if self._status is None:
                self._status = console.status(text)
                self._status.start()
            else:
                self._status.update(text)
        elif self._status is not None:
            self._status.stop()
            self._status = None


def print_banner(manager: ModelManager, url: str, node_id: str, keyed: bool, problems: list[str]) -> None:
    table = Table(title="Models", title_justify="left", show_edge=False)
    table.add_column("model", style="bold")
    table.add_column("file")
    table.add_column("tasks")
    for name in manager.names():
        config = manager.config(name)
        table.add_row(name, str(config.model_path(manager.catalog.models_dir)), ", ".join(manager.tasks(name)))
    console.print(f"[bold]p2pai[/] node [cyan]{node_id}[/] serving OpenAI API at [bold cyan]{url}/v1[/]")
    if manager.names():
        console.print(table)
    else:
        console.print("[yellow]No local models:[/] requests go to the swarm. Put GGUF files or YAML configs in "
                      f"{manager.catalog.models_dir} or pass --model PATH.")
    for problem in problems:
        console.print(f"[yellow]skipped[/] {problem}")
    console.print("API key required." if keyed else "[dim]No API key set: anyone who can reach the port may use it.[/]")


def print_swarm(settings: NodeSettings, membership: Membership, addrs: tuple[str, ...]) -> None:
    """How to join this node's swarm. The full token is shown only when this start
    created it: later starts name the file instead of echoing the secret into logs."""
    network = membership.parsed.network_id
    console.print(f"swarm [cyan]{network}[/] · p2p {', '.join(addrs) or 'not listening'}")
    if membership.created:
        console.print("[bold]New swarm token[/] (kept in the data dir; anyone holding it can join):")
        console.print(membership.token, markup=False, highlight=False)
        console.print("Join from another machine on this network with:")
        console.print(f"  p2pai start --token {membership.token}", markup=False, highlight=False)
        if addrs:
            console.print(f"  and from another network add: --bootstrap {addrs[0]}", markup=False, highlight=False)
    elif not settings.token and settings.token_file is None:
        console.print(f"[dim]token: {settings.data_dir / 'token'} (or GET /api/p2p/token from this machine)[/]")
