"""`p2pai worker`: lend this machine's memory and compute to the swarm as a llama.cpp RPC worker.

It runs llama.cpp's RPC server on this machine's GPU when it has one (the
one with the most free memory), else on its CPU, in a network namespace of its own where the
system allows it, else on loopback (restarted if it dies), exposes it only
through the token-authenticated relay, and announces itself over the overlay
with role `llama-cpp-worker` and a `worker` payload that nodes use to place
layers. `--allow-node` admits only the named nodes; a lease without traffic
for `--lease-idle` seconds ends. A JSON status line goes to stdout whenever
the status changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from . import event_loop
from .backends.llama.devices import Device, detect, gpus
from .backends.rpc.relay import Credentials, RelayServer
from .backends.rpc.server import RpcServerProcess
from .overlay.addresses import ips
from .settings import NodeSettings, add_swarm_arguments, env_default, env_list, prepare_data_dir, swarm_fields
from .swarm.join import build_overlay, given_token
from .swarm.payload import WORKER_PAYLOAD_KEY, WORKER_ROLE

log = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    add_swarm_arguments(parser, token_default="none: a worker joins an existing swarm")
    parser.add_argument("--data-dir", type=Path, default=env_default("DATA_DIR"),
                        help="this worker's identity (default: the user's data directory; P2PAI_DATA_DIR)")
    parser.add_argument("--rpc-port", type=int, default=int(env_default("RPC_PORT", "0") or 0),
                        help="port of the authenticated RPC relay, on the IP of --p2p-listen "
                             "(default: any free port; P2PAI_RPC_PORT)")
    parser.add_argument("--threads", type=int, default=int(env_default("THREADS", "0") or 0),
                        help="llama.cpp compute threads (default: all cores; P2PAI_THREADS)")
    parser.add_argument("--memory", type=int, default=int(env_default("MEMORY", "0") or 0), metavar="MB",
                        help="advertise at most this much memory (default: what is available; P2PAI_MEMORY)")
    parser.add_argument("--cache-dir", default=env_default("CACHE_DIR"),
                        help="llama.cpp's tensor cache, speeds up reloads (default: none; P2PAI_CACHE_DIR)")
    parser.add_argument("--allow-node", action="append", default=env_list("ALLOW_NODE"), metavar="ID_OR_NAME",
                        help="admit only this node, by peer id or announced name (repeatable; default: every "
                             "member; P2PAI_ALLOW_NODE, comma-separated). Ids are proven, names are what members "
                             "call themselves")
    parser.add_argument("--lease-idle", type=float, default=float(env_default("LEASE_IDLE", "300") or 300),
                        metavar="SECONDS",
                        help="end a node's session after this long without traffic, freeing the worker "
                             "(default 300; 0: never; P2PAI_LEASE_IDLE)")
    parser.add_argument("--log-level", default=env_default("LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="(P2PAI_LOG_LEVEL)")


def served_device(devices: list[Device]) -> Device | None:
    """The GPU with the most free memory; None: the CPU."""
    return max(gpus(devices), key=lambda device: device.free, default=None)


def memory(limit_mb: int, gpu: Device | None = None) -> tuple[int, int]:
    """(free, total) bytes to advertise: the served GPU's, else available and total memory; capped by --memory."""
    if gpu is not None:
        free, total = gpu.free, gpu.total
    else:
        measured = psutil.virtual_memory()
        free, total = measured.available, measured.total
    if limit_mb:
        cap = limit_mb * 2**20
        free, total = min(free, cap), min(total, cap)
    return free, total


@dataclass(frozen=True)
class WorkerSettings:
    """`p2pai worker`'s flags. Its repr shows no secret (the token stays in ``node``, hidden)."""

    node: NodeSettings
    """The swarm fields and the data dir."""
    rpc_port: int = 0
    threads: int = 0
    memory_mb: int = 0
    cache_dir: str | None = None
    allow_nodes: tuple[str, ...] = ()
    """Empty: every member."""
    lease_idle: float | None = 300.0
    """None: a session may stay idle forever."""
    log_level: str = "info"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WorkerSettings:
        defaults = NodeSettings()
        node = NodeSettings(data_dir=Path(args.data_dir).expanduser() if args.data_dir else defaults.data_dir,
                            **swarm_fields(args))
        return cls(node=node, rpc_port=args.rpc_port, threads=args.threads, memory_mb=args.memory,
                   cache_dir=args.cache_dir, allow_nodes=tuple(args.allow_node),
                   lease_idle=args.lease_idle if args.lease_idle > 0 else None, log_level=args.log_level)


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        from .token import derive_keys, parse_token

        token = given_token(settings.node)
        if not token:
            raise SystemExit("p2pai worker needs the swarm's token: --token, --token-file, P2PAI_TOKEN or TOKEN")
        self.settings = settings
        self.keys = derive_keys(parse_token(token))
        self.data_dir = settings.node.data_dir
        self.threads = settings.threads or os.cpu_count() or 1
        self.devices: list[Device] = []
        self.gpu: Device | None = None
        """The GPU its RPC server computes on; None: the CPU."""
        self.rpc = RpcServerProcess(self.threads, settings.cache_dir)
        self.relay: RelayServer | None = None
        self.hosts: list[str] = []
        self.port = 0
        self._last_status: dict[str, Any] | None = None

    def payload(self) -> dict[str, Any]:
        """The announced `worker` payload; GET /api/p2p shows it under llama_cpp_nodes."""
        assert self.relay is not None
        free, total = memory(self.settings.memory_mb, self.gpu)
        cpu = next((device for device in self.devices if device.type == "cpu"), None)
        device = self.gpu or cpu
        return {
            "rpc": {"port": self.port, "hosts": self.hosts},
            "free_memory": free,
            "total_memory": total,
            "threads": self.threads,
            "protocol": self.rpc.protocol,
            "in_use_by": self.relay.lease.holder,
            "cache": bool(self.settings.cache_dir),
            "isolated": self.rpc.isolated,
            "device": device.model_copy(update={"free": free, "total": total}).model_dump() if device else None,
            "served": {
                "sessions": self.relay.traffic.sessions,
                "bytes_in": self.relay.traffic.bytes_in,
                "bytes_out": self.relay.traffic.bytes_out,
                "refused": self.relay.refused,
                "server_restarts": self.rpc.restarts,
            },
        }

    async def run(self, stop: asyncio.Event) -> None:
        listen_ip = _listen_ip(self.settings.node.p2p_listen[0])
        prepare_data_dir(self.data_dir)
        self.devices = await detect()
        self.gpu = served_device(self.devices)
        self.rpc.device = self.gpu.name if self.gpu else None
        await self.rpc.start()
        supervisor = asyncio.create_task(self.rpc.supervise())
        overlay = build_overlay(self.settings.node, self.keys, [WORKER_ROLE])
        await overlay.start()
        measuring: asyncio.Task[None] | None = None
        try:
            credentials = Credentials(overlay.identity, self.keys.rpc_key)
            self.relay = RelayServer(credentials, self.rpc.connect, self._publish_soon, self._admits,
                                     self.settings.lease_idle)
            self.port = await self.relay.start(listen_ip, self.settings.rpc_port)
            self.hosts = ips(overlay.self_member().addrs)  # the relay listens on the overlay's IP
            self._overlay = overlay
            log.info("worker %s: RPC relay on %s port %d, llama.cpp RPC v%s on 127.0.0.1:%d (%s), computing on %s",
                     overlay.peer_id, ",".join(self.hosts), self.port, self.rpc.protocol, self.rpc.port,
                     "in a network namespace of its own" if self.rpc.isolated else "on this machine's loopback",
                     f"GPU {self.gpu.name} ({self.gpu.description}, {self.gpu.free / 2**30:.1f} GiB free)"
                     if self.gpu else "the CPU")
            holder = self.relay.lease.holder
            while not stop.is_set():
                idle = measuring is None or measuring.done()
                if self.gpu is not None and self.relay.lease.holder != holder and idle:
                    holder = self.relay.lease.holder  # a node took or left the GPU: measure its free memory again
                    measuring = asyncio.create_task(self._measure_gpu())
                self._publish()
                await event_loop.wait_set(stop, STATUS_INTERVAL)
        finally:
            if measuring is not None:
                measuring.cancel()
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
            if self.relay is not None:
                await self.relay.stop()
            await overlay.stop()
            await self.rpc.stop()

    async def _measure_gpu(self) -> None:
        """The served GPU's free memory now (detection runs in a child process)."""
        assert self.gpu is not None
        served = self.gpu.name
        self.gpu = next((device for device in await detect() if device.name == served), self.gpu)

    def _admits(self, peer_id: str) -> bool:
        """Whether --allow-node names this node: by its peer id, or by the name it announces (any
        member may announce any name: only an id is proven)."""
        allowed = self.settings.allow_nodes
        if not allowed or peer_id in allowed:
            return True
        return any(member.peer_id == peer_id and member.name in allowed for member in self._overlay.members())

    def _publish_soon(self) -> None:
        asyncio.get_running_loop().call_soon(self._publish)

    def _publish(self) -> None:
        payload = self.payload()
        self._overlay.set_payload({WORKER_PAYLOAD_KEY: payload})
        status = {"peer_id": self._overlay.peer_id, "rpc_port": self.rpc.port, "worker": payload}
        if status != self._last_status:
            self._last_status = status
            sys.stdout.write(json.dumps(status) + "\n")
            sys.stdout.flush()


def _listen_ip(multiaddr: str) -> str:
    """The IP of a listen address (its port may be 0, which parse_tcp rejects)."""
    parts = multiaddr.split("/")
    try:
        if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
            raise ValueError
        return str(ipaddress.ip_address(parts[2]))
    except ValueError:
        raise SystemExit(f"--p2p-listen must be /ip4|ip6/<ip>/tcp/<port>, got {multiaddr!r}") from None


def run_worker(args: argparse.Namespace) -> int:
    settings = WorkerSettings.from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("libp2p").setLevel(max(logging.WARNING, logging.getLogger().level))

    from .token import TokenError

    try:
        worker = Worker(settings)
    except TokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await worker.run(stop)

    event_loop.run(main())
    return 0
