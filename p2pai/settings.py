"""Node settings from flags, with a P2PAI_* environment variable for each."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from platformdirs import user_data_dir

ENV_PREFIX = "P2PAI_"


@dataclass(frozen=True)
class NodeSettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    data_dir: Path = field(default_factory=lambda: Path(user_data_dir("p2pai")))
    models_dir: Path | None = None
    models: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    threads: int | None = None
    context_size: int | None = None
    parallel: int | None = None
    preload: bool = False
    log_level: str = "info"

    @property
    def effective_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"


def env_default(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def env_list(name: str) -> list[str]:
    """Repeatable flags take a comma-separated list from the environment."""
    value = env_default(name)
    return [item.strip() for item in value.split(",") if item.strip()] if value else []


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", type=parse_listen, default=env_default("LISTEN", "127.0.0.1:8080"),
                        help="HOST:PORT of the client API (default 127.0.0.1:8080; P2PAI_LISTEN)")
    parser.add_argument("--data-dir", type=Path, default=env_default("DATA_DIR"),
                        help="state of this node (default: the user's data directory; P2PAI_DATA_DIR)")
    parser.add_argument("--models-dir", type=Path, default=env_default("MODELS_DIR"),
                        help="model YAML configs and GGUF files (default DATA_DIR/models; P2PAI_MODELS_DIR)")
    parser.add_argument("--model", action="append", default=env_list("MODEL"), metavar="PATH_OR_NAME",
                        help="serve this GGUF file or configured model (repeatable; P2PAI_MODEL, comma-separated)")
    parser.add_argument("--api-key", action="append", default=env_list("API_KEY"), metavar="KEY",
                        help="require `Authorization: Bearer KEY` (repeatable; P2PAI_API_KEY, comma-separated)")
    parser.add_argument("--threads", type=int, default=env_default("THREADS"),
                        help="llama.cpp threads per model (default: all cores; P2PAI_THREADS)")
    parser.add_argument("--context-size", type=int, default=env_default("CONTEXT_SIZE"),
                        help="context size per request of models whose config sets none "
                             "(default 4096; P2PAI_CONTEXT_SIZE)")
    parser.add_argument("--parallel", type=int, default=env_default("PARALLEL"),
                        help="requests decoded together per model whose config sets none (default: automatic, "
                             "up to 4 while their KV cache stays under 1 GiB; P2PAI_PARALLEL)")
    parser.add_argument("--preload", action="store_true", default=env_default("PRELOAD", "") in ("1", "true", "yes"),
                        help="load every model at start instead of on first use (P2PAI_PRELOAD=1)")
    parser.add_argument("--log-level", default=env_default("LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="(P2PAI_LOG_LEVEL)")


def settings_from_args(args: argparse.Namespace) -> NodeSettings:
    host, port = args.listen if isinstance(args.listen, tuple) else parse_listen(args.listen)
    defaults = NodeSettings()
    return NodeSettings(
        listen_host=host,
        listen_port=port,
        data_dir=Path(args.data_dir).expanduser() if args.data_dir else defaults.data_dir,
        models_dir=Path(args.models_dir).expanduser() if args.models_dir else None,
        models=tuple(args.model),
        api_keys=tuple(args.api_key),
        threads=int(args.threads) if args.threads else None,
        context_size=int(args.context_size) if args.context_size else None,
        parallel=int(args.parallel) if args.parallel else None,
        preload=args.preload,
        log_level=args.log_level,
    )
