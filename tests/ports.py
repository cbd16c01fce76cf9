"""Ports for the processes tests start."""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32000
"""Below Linux's ephemeral range (32768-60999 by default): a port picked here stays free until the
process it is meant for binds it, unless another test picks it too; one the kernel chose for us
(bind to port 0) may meanwhile be taken by any outgoing connection."""


def free_port(host: str = "127.0.0.1") -> int:
    for _ in range(200):
        port = random.randrange(LOW, HIGH)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {LOW} and {HIGH} on {host}")
