"""Run one overlay node and print its view as JSON lines: for manual and
multi-process tests.

    python -m p2pai.overlay --data-dir D --psk-seed S [--listen MA] [--bootstrap MA]
        [--no-mdns] [--mdns-interface IP] [--name N] [--small-swarm N]

Keys are derived from --psk-seed, which is for testing only: real nodes use a
swarm token. A line is printed at start, on every membership change and every
second.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from p2pai import __version__
from p2pai.event_loop import wait_get
from p2pai.overlay.gossip import SMALL_SWARM
from p2pai.overlay.overlay import Overlay, OverlayConfig
from p2pai.token import FORMAT_VERSION, NetworkKeys, SwarmToken, derive_keys

REPORT_INTERVAL = 1.0


def keys_from_seed(seed: str) -> NetworkKeys:
    """Deterministic keys for tests: the same seed always makes the same swarm."""
    digest = hashlib.sha256(seed.encode()).digest()
    token = SwarmToken(
        version=FORMAT_VERSION,
        network_id=digest[:8].hex(),
        created=datetime(2025, 1, 1, tzinfo=timezone.utc),
        secret=hashlib.sha256(b"secret" + digest).digest(),
    )
    return derive_keys(token)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m p2pai.overlay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--psk-seed", required=True, help="derives all swarm keys (testing only)")
    parser.add_argument("--listen", action="append", help="multiaddr (repeatable); default /ip4/0.0.0.0/tcp/0")
    parser.add_argument("--bootstrap", action="append", default=[], help="multiaddr with /p2p/<peer id> (repeatable)")
    parser.add_argument("--no-mdns", dest="mdns", action="store_false")
    parser.add_argument("--mdns-interface", action="append", help="restrict mDNS to this interface IP (repeatable)")
    parser.add_argument("--name", default="overlay-runner")
    parser.add_argument("--role", action="append", default=[], dest="roles")
    parser.add_argument("--small-swarm", type=int, default=SMALL_SWARM, metavar="N",
                        help=f"up to N nodes every node watches every other (default {SMALL_SWARM}); "
                             "lower it to test the large-swarm protocol with a few nodes")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    config = OverlayConfig(
        data_dir=args.data_dir,
        keys=keys_from_seed(args.psk_seed),
        name=args.name,
        version=__version__,
        roles=args.roles,
        bootstrap=args.bootstrap,
        mdns=args.mdns,
        mdns_interfaces=args.mdns_interface,
        small_swarm=args.small_swarm,
    )
    if args.listen:
        config.listen = args.listen
    overlay = Overlay(config)
    loop = asyncio.get_running_loop()
    this_task = asyncio.current_task()
    assert this_task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, this_task.cancel)
    events = overlay.subscribe()
    await overlay.start()
    try:
        report(overlay, "started")
        while True:
            event = await wait_get(events, REPORT_INTERVAL)
            report(overlay, None if event is None else f"{event.kind} {event.member.peer_id}")
    except asyncio.CancelledError:  # SIGINT or SIGTERM
        pass
    finally:
        started = time.monotonic()
        await overlay.stop()
        report_line({"t": time.time(), "stopped_in": time.monotonic() - started})


def report(overlay: Overlay, event: str | None) -> None:
    report_line(
        {
            "t": time.time(),
            "event": event,
            "self": dataclasses.asdict(overlay.self_member()),
            "members": [dataclasses.asdict(m) for m in overlay.members()],
            "stats": overlay.stats(),
        }
    )


def report_line(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
