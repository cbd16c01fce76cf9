"""Node settings from flags, with a P2PAI_* environment variable for each."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from platformdirs import user_data_dir

from .backends.llama.loading import FlashAttention
from .overlay.gossip import SMALL_SWARM
from .routing.placement import Policy
from .routing.probe import PROBE_ABOVE, PROBE_TIMEOUT
from .serving.limits import Limits

ENV_PREFIX = "P2PAI_"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    peer_host: str = "0.0.0.0"
    peer_port: int = 0
    peer_advertise: tuple[str, int] | None = None
    """Announce this HOST:PORT for the peer endpoint instead (port forwarding, containers)."""
    """The peer (data-plane) endpoint: only requests signed with the swarm key."""
    data_dir: Path = field(default_factory=lambda: Path(user_data_dir("p2pai")))
    models_dir: Path | None = None
    models: tuple[str, ...] = ()
    default_model: bool = True
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    admin_keys: tuple[str, ...] = field(default=(), repr=False)
    """Also valid API keys; only they may read the swarm token when keys are set."""
    threads: int | None = None
    context_size: int | None = None
    parallel: int | None = None
    preload: bool = False
    max_loaded: int | None = None
    """Models loaded at once; the least recently used idle one is unloaded for another (None: no limit)."""
    memory_budget: int | None = None
    """Bytes the loaded models may take together, by their estimates (None: what the system has available)."""
    log_level: str = "info"
    token: str | None = field(default=None, repr=False)
    """None: the token of token_file, else the one kept in the data dir (created on first start)."""
    token_file: Path | None = None
    name: str = field(default_factory=socket.gethostname)
    p2p_listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ()
    """Empty: every interface."""
    small_swarm: int = SMALL_SWARM
    """Up to this many nodes, every node watches and dials every other (overlay/gossip.py); lowered only to test
    the large-swarm protocol with a few nodes."""
    routing: Policy = Policy.LEAST_LOADED
    probe_above: int = PROBE_ABOVE
    """In a swarm of more nodes, the router asks candidates for their current figures before sending."""
    probe_timeout: float = PROBE_TIMEOUT
    """Seconds a round of those questions waits for answers."""
    flash_attention: FlashAttention = "auto"
    """llama.cpp flash attention for models whose config sets none: auto, on or off."""
    limits: Limits = field(default_factory=Limits)
    """Request bounds a user may raise (README, "Limits")."""
    galleries: tuple[str, ...] = ()
    """Model gallery indexes (`NAME=PATH_OR_URL` or `PATH_OR_URL`) beside the built-in one."""
    pull_rate: float | None = None
    """Bytes per second this node downloads models at, all pulls together (None: unlimited)."""
    serve_rate: float | None = None
    """Bytes per second this node sends model files to peers at, all together (None: unlimited)."""
    trace_bodies: bool = False
    """Keep request and answer bodies in GET /api/traces (prompts and answers, in memory)."""

    @property
    def effective_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"


def prepare_data_dir(path: Path) -> None:
    """Create the data dir private to this user (it holds the swarm token and the node's key);
    warn about an existing one that other users can read."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("the data dir %s is open to other users (mode %o): it holds the swarm token and this node's "
                    "private key; chmod 700 it", path, mode)


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
    parser.add_argument("--peer-listen", type=parse_listen, default=env_default("PEER_LISTEN", "0.0.0.0:0"),
                        help="HOST:PORT where peers send requests signed with the swarm key "
                             "(default 0.0.0.0:0, a free port; P2PAI_PEER_LISTEN)")
    parser.add_argument("--peer-advertise", type=parse_listen, default=env_default("PEER_ADVERTISE"),
                        help="HOST:PORT to announce for the peer endpoint when peers must use another address "
                             "(port forwarding, containers; P2PAI_PEER_ADVERTISE). Peers that cannot connect "
                             "use a tunnel over libp2p")
    parser.add_argument("--data-dir", type=Path, default=env_default("DATA_DIR"),
                        help="state of this node (default: the user's data directory; P2PAI_DATA_DIR)")
    parser.add_argument("--models-dir", type=Path, default=env_default("MODELS_DIR"),
                        help="model YAML configs and GGUF files (default DATA_DIR/models; P2PAI_MODELS_DIR)")
    parser.add_argument("--model", action="append", default=env_list("MODEL"), metavar="PATH_OR_NAME",
                        help="serve this GGUF file or configured model (repeatable; P2PAI_MODEL, comma-separated)")
    parser.add_argument("--no-default-model", dest="default_model", action="store_false",
                        default=env_default("NO_DEFAULT_MODEL", "") not in ("1", "true", "yes"),
                        help="serve no built-in model when none is configured: the node only routes to its "
                             "swarm (P2PAI_NO_DEFAULT_MODEL=1)")
    parser.add_argument("--api-key", action="append", default=env_list("API_KEY"), metavar="KEY",
                        help="require `Authorization: Bearer KEY` (repeatable; P2PAI_API_KEY, comma-separated)")
    parser.add_argument("--admin-key", action="append", default=env_list("ADMIN_KEY"), metavar="KEY",
                        help="a key that may also read the swarm token (GET /api/p2p/token); also a valid API key "
                             "(repeatable; P2PAI_ADMIN_KEY, comma-separated)")
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
    parser.add_argument("--max-loaded", type=positive_int, default=env_default("MAX_LOADED"), metavar="N",
                        help="models loaded at once; loading another unloads the least recently used idle one "
                             "(default: no limit but memory; P2PAI_MAX_LOADED)")
    parser.add_argument("--memory-budget", type=positive_gib, default=env_default("MEMORY_BUDGET"), metavar="GIB",
                        help="GiB the loaded models may take together, by their estimated size; loading beyond "
                             "it unloads idle models first (default: the memory the system has available; "
                             "P2PAI_MEMORY_BUDGET)")
    parser.add_argument("--routing", choices=[policy.value for policy in Policy],
                        default=env_default("ROUTING", "least-loaded"),
                        help="which node answers a request: least-loaded (default), local-first or random "
                             "(P2PAI_ROUTING)")
    parser.add_argument("--probe-above", type=whole_number, default=env_default("PROBE_ABOVE", str(PROBE_ABOVE)),
                        metavar="N",
                        help="in a swarm of more than N nodes, ask a few candidates for their current load before "
                             f"sending a request (announced figures get older as a swarm grows; default {PROBE_ABOVE}; "
                             "P2PAI_PROBE_ABOVE)")
    parser.add_argument("--probe-timeout", type=seconds, default=env_default("PROBE_TIMEOUT", str(PROBE_TIMEOUT)),
                        metavar="SECONDS",
                        help="how long the router waits for those answers; a candidate that does not answer in "
                             f"time is judged by its announced figures (default {PROBE_TIMEOUT}; P2PAI_PROBE_TIMEOUT)")
    parser.add_argument("--flash-attention", choices=["auto", "on", "off"],
                        default=env_default("FLASH_ATTENTION", "auto"),
                        help="llama.cpp flash attention for models whose config sets none: auto (default, where "
                             "the backend supports it), on or off (P2PAI_FLASH_ATTENTION)")
    parser.add_argument("--gallery", action="append", default=env_list("GALLERY"), metavar="[NAME=]PATH_OR_URL",
                        help="a model gallery index in LocalAI's format, a YAML file or an HTTP(S) URL (repeatable; "
                             "P2PAI_GALLERY, comma-separated)")
    parser.add_argument("--pull-rate", type=byte_rate, default=env_default("PULL_RATE", "0"), metavar="BYTES_PER_S",
                        help="download models (from peers, galleries, URLs) at most this fast, e.g. 50M; 0: no limit "
                             "(P2PAI_PULL_RATE)")
    parser.add_argument("--serve-rate", type=byte_rate, default=env_default("SERVE_RATE", "0"), metavar="BYTES_PER_S",
                        help="send model files to pulling peers at most this fast, all together, e.g. 50M; 0: no "
                             "limit (P2PAI_SERVE_RATE)")
    parser.add_argument("--log-level", default=env_default("LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="(P2PAI_LOG_LEVEL)")
    parser.add_argument("--trace-bodies", action="store_true",
                        default=env_default("TRACE_BODIES", "") in ("1", "true", "yes"),
                        help="keep request and answer bodies (prompts, answers) in GET /api/traces "
                             "(P2PAI_TRACE_BODIES=1)")
    add_limit_arguments(parser)


def byte_rate(value: str) -> float | None:
    """Bytes per second with an optional k, M or G (powers of 1000); 0 for no limit."""
    text = value.strip()
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower(), 1.0)
    number = text[:-1] if scale != 1.0 else text
    try:
        rate = float(number) * scale
    except ValueError:
        rate = -1.0
    if not rate >= 0 or rate == float("inf"):
        raise argparse.ArgumentTypeError(f"expected bytes per second such as 50M, got {value!r}")
    return rate or None


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def whole_number(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}")
    return int(value)


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number <= 60:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 60, got {value!r}")
    return number


def positive_gib(value: str) -> int:
    """A size in GiB (fractions allowed), as bytes."""
    try:
        gib = float(value)
    except ValueError:
        gib = 0.0
    if not 0 < gib < 1 << 20:
        raise argparse.ArgumentTypeError(f"expected a positive number of GiB, got {value!r}")
    return int(gib * (1 << 30))


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag and a P2PAI_* variable for each field of Limits."""
    group = parser.add_argument_group("request limits (README.md, Limits)")
    for limit in dataclasses.fields(Limits):
        env = limit.name.upper()
        group.add_argument("--" + limit.name.replace("_", "-"), type=positive_int,
                           default=env_default(env, str(limit.default)),
                           help=f"{limit.metadata['help']} (default {limit.default}; P2PAI_{env})")


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(**{limit.name: getattr(args, limit.name) for limit in dataclasses.fields(Limits)})


def add_swarm_arguments(parser: argparse.ArgumentParser,
                        token_default: str = "the one kept in DATA_DIR, created on first start") -> None:
    """Flags shared by every command that joins a swarm (`start`, `worker`)."""
    parser.add_argument("--token", default=env_default("TOKEN", os.environ.get("TOKEN")),
                        help=f"swarm token (P2PAI_TOKEN or TOKEN; default: {token_default})")
    parser.add_argument("--token-file", type=Path, default=env_default("TOKEN_FILE"), metavar="PATH",
                        help="read the swarm token from this file instead, keeping it out of the process list and "
                             "the environment (P2PAI_TOKEN_FILE)")
    parser.add_argument("--name", default=env_default("NAME"),
                        help="name shown to the swarm (default: the host name; P2PAI_NAME)")
    parser.add_argument("--p2p-listen", action="append", default=env_list("P2P_LISTEN"), metavar="MULTIADDR",
                        help="libp2p listen address (repeatable; default /ip4/0.0.0.0/tcp/0; P2PAI_P2P_LISTEN)")
    parser.add_argument("--bootstrap", action="append", default=env_list("BOOTSTRAP"), metavar="MULTIADDR",
                        help="peer to join, /ip4/IP/tcp/PORT/p2p/PEER_ID (repeatable; P2PAI_BOOTSTRAP)")
    parser.add_argument("--no-mdns", dest="mdns", action="store_false",
                        default=env_default("NO_MDNS", "") not in ("1", "true", "yes"),
                        help="no LAN discovery; join through --bootstrap only (P2PAI_NO_MDNS=1)")
    parser.add_argument("--mdns-interface", action="append", default=env_list("MDNS_INTERFACE"), metavar="IP",
                        help="run LAN discovery on this interface only (repeatable; P2PAI_MDNS_INTERFACE)")
    parser.add_argument("--small-swarm", type=positive_int, default=env_default("SMALL_SWARM", str(SMALL_SWARM)),
                        metavar="N",
                        help=f"advanced, for testing: up to N nodes every node heartbeats and dials every other; "
                             f"larger swarms watch a ring and gossip. Every node of a swarm needs the same value "
                             f"(default {SMALL_SWARM}; P2PAI_SMALL_SWARM)")


class SwarmFields(TypedDict):
    """The NodeSettings fields that add_swarm_arguments fills."""

    token: str | None
    token_file: Path | None
    name: str
    p2p_listen: tuple[str, ...]
    bootstrap: tuple[str, ...]
    mdns: bool
    mdns_interfaces: tuple[str, ...]
    small_swarm: int


def swarm_fields(args: argparse.Namespace) -> SwarmFields:
    """The NodeSettings fields that add_swarm_arguments fills."""
    defaults = NodeSettings()
    return {
        "token": args.token.strip() if args.token else None,
        "token_file": Path(args.token_file).expanduser() if args.token_file else None,
        "name": args.name or defaults.name,
        "p2p_listen": tuple(args.p2p_listen) or defaults.p2p_listen,
        "bootstrap": tuple(args.bootstrap),
        "mdns": args.mdns,
        "mdns_interfaces": tuple(args.mdns_interface),
        "small_swarm": int(args.small_swarm),
    }


def settings_from_args(args: argparse.Namespace) -> NodeSettings:
    host, port = args.listen if isinstance(args.listen, tuple) else parse_listen(args.listen)
    peer_host, peer_port = args.peer_listen  # argparse applies parse_listen to string defaults too
    defaults = NodeSettings()
    return NodeSettings(
        listen_host=host,
        listen_port=port,
        peer_host=peer_host,
        peer_port=peer_port,
        peer_advertise=args.peer_advertise,
        data_dir=Path(args.data_dir).expanduser() if args.data_dir else defaults.data_dir,
        models_dir=Path(args.models_dir).expanduser() if args.models_dir else None,
        models=tuple(args.model),
        default_model=args.default_model,
        api_keys=tuple(args.api_key),
        admin_keys=tuple(args.admin_key),
        threads=int(args.threads) if args.threads else None,
        context_size=int(args.context_size) if args.context_size else None,
        parallel=int(args.parallel) if args.parallel else None,
        preload=args.preload,
        max_loaded=args.max_loaded,
        memory_budget=args.memory_budget,
        log_level=args.log_level,
        routing=Policy(args.routing),
        probe_above=args.probe_above,
        probe_timeout=args.probe_timeout,
        flash_attention=args.flash_attention,  # argparse checked the choices
        limits=limits_from_args(args),
        galleries=tuple(args.gallery),
        pull_rate=args.pull_rate,
        serve_rate=args.serve_rate,
        trace_bodies=args.trace_bodies,
        **swarm_fields(args),
    )
