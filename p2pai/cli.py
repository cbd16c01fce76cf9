"""The `p2pai` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __version__
from .settings import add_node_arguments, settings_from_args
from .worker import add_worker_arguments, run_worker


def _start(args: argparse.Namespace) -> int:
    from rich.logging import RichHandler

    from .console import console
    from .models.catalog import ModelsError
    from .node import run_node

    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    try:
        asyncio.run(run_node(settings))
    except ModelsError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pai", description="Peer-to-peer federated inference node.")
    parser.add_argument("--version", action="version", version=f"p2pai {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a node serving the OpenAI-compatible API")
    add_node_arguments(start)
    start.set_defaults(run=_start)
    worker = commands.add_parser("worker", help="lend this machine to the swarm as a llama.cpp RPC worker")
    add_worker_arguments(worker)
    worker.set_defaults(run=run_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
