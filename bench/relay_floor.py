"""What one relayed stream event costs a thread, in plaintext, over TLS and over a bare AEAD frame.

The entry node relays a forwarded stream with a thread of its own (routing/relay.py):
a blocking read from the peer, the chunk checked, a send to the client. This
benchmark runs that loop alone, so that its floor on this machine can be compared
with bench_routing.py's "entry CPU per forwarded chunk":

- a sender process writes one chunk-framed SSE event every `--gap-ms` (0.5 ms: the
  tiny test model's pace in bench_routing.py), over loopback TCP;
- the relay thread reads it (`plain`: recv(); `tls`: through p2pai's own TLS session,
  peer_http._TLSSocket, after a real handshake with swarm certificates; `aead`: the
  smallest authenticated encryption there is, one AES-256-GCM frame per event with
  cryptography's AESGCM and a counter nonce, no record layer), checks it is one whole
  chunk (Dechunker.whole) and sends it to a sink process;
- the relay thread's CPU time (time.thread_time) per event is the figure.

Modes alternate round by round; the table shows medians and each mode over plaintext.

    flock /tmp/p2pai-heavy.lock .venv/bin/python bench/relay_floor.py --events 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pai.identity import Identity
from p2pai.routing.chunked import Dechunker
from p2pai.routing.peer_http import _TLSSocket
from p2pai.routing.peer_tls import PeerTLS, TLSSession
from p2pai.token import derive_keys, new_token, parse_token

MODES = ("plain", "tls", "aead")
HOST = "127.0.0.1"
EVENT = (b'data: {"id":"cmpl-0123456789abcdef","object":"text_completion","created":1700000000,"model":"tiny",'
         b'"choices":[{"index":0,"text":" water","logprobs":null,"finish_reason":null}]}\n\n')
CHUNK = b"%x\r\n%b\r\n" % (len(EVENT), EVENT)
LAST_CHUNK = b"0\r\n\r\n"
AEAD_KEY = bytes(32)  # a benchmark's key: the cost does not depend on it
RECV_BYTES = 64 * 1024


class _Aead:
    """One AES-256-GCM frame per write: 2-byte length, ciphertext and tag; the nonce is a counter."""

    def __init__(self) -> None:
        self._aead = AESGCM(AEAD_KEY)
        self._count = 0

    def _nonce(self) -> bytes:
        self._count += 1
        return self._count.to_bytes(12, "big")

    def seal(self, data: bytes) -> bytes:
        sealed = self._aead.encrypt(self._nonce(), data, None)
        return len(sealed).to_bytes(2, "big") + sealed

    def reader(self, sock: socket.socket) -> Callable[[int], bytes]:
        def recv(size: int) -> bytes:
            raw = sock.recv(size)
            pieces, pos = [], 0
            while pos < len(raw):  # whole frames: the sender writes one per send, far below a segment
                length = int.from_bytes(raw[pos : pos + 2], "big")
                pieces.append(self._aead.decrypt(self._nonce(), raw[pos + 2 : pos + 2 + length], None))
                pos += 2 + length
            return b"".join(pieces)
        return recv


def _handshake(tls: TLSSession, sock: socket.socket) -> None:
    while not tls.handshake():
        if tls.outgoing.pending:
            sock.sendall(tls.outgoing.read())
        data = sock.recv(RECV_BYTES)
        if not data:
            raise ConnectionError("the other end closed during the handshake")
        tls.incoming.write(data)
    if tls.outgoing.pending:
        sock.sendall(tls.outgoing.read())


def _drain(sock: socket.socket) -> None:
    while sock.recv(RECV_BYTES):
        pass


def _sender(mode: str, listener: socket.socket, sink_address: tuple[str, int], server: PeerTLS, events: int,
            gap: float) -> None:
    """In the child process: accept the relay's connection, send paced events, and sink what the relay sends on."""
    conn, _ = listener.accept()
    seal: Callable[[bytes], bytes] = bytes
    if mode == "tls":
        tls = TLSSession(server.server_context(), server_side=True)
        _handshake(tls, conn)
        seal = tls.encrypt
    elif mode == "aead":
        seal = _Aead().seal
    sink = socket.create_connection(sink_address)
    threading.Thread(target=_drain, args=(sink,), daemon=True).start()
    due = time.perf_counter()
    for _ in range(events):
        conn.sendall(seal(CHUNK))
        due += gap
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    conn.sendall(seal(LAST_CHUNK))
    conn.recv(1)  # until the relay closes


def one_round(mode: str, events: int, gap: float, server: PeerTLS, client: PeerTLS) -> float:
    """Microseconds of the relay thread's CPU per event received."""
    listener = socket.create_server((HOST, 0))
    sink_listener = socket.create_server((HOST, 0))
    pid = os.fork()
    if pid == 0:
        try:
            _sender(mode, listener, sink_listener.getsockname(), server, events, gap)
        finally:
            os._exit(0)
    try:
        upstream = socket.create_connection(listener.getsockname())
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv: Callable[[int], bytes] = upstream.recv
        if mode == "tls":
            tls = TLSSession(client.client_context())
            _handshake(tls, upstream)
            recv = _TLSSocket(upstream, tls).recv
        elif mode == "aead":
            recv = _Aead().reader(upstream)
        downstream, _ = sink_listener.accept()
        reads, cpu = _relay(recv, downstream)
        upstream.close()
        downstream.close()
    finally:
        os.waitpid(pid, 0)
        listener.close()
        sink_listener.close()
    return cpu / reads * 1e6


def _relay(recv: Callable[[int], bytes], downstream: socket.socket) -> tuple[int, float]:
    """The relay thread's loop (as relay.StreamThread runs it): reads and its CPU seconds."""
    result: list[tuple[int, float]] = []

    def work() -> None:
        dechunker, reads = Dechunker(), 0
        started = time.thread_time()
        while True:
            data = recv(RECV_BYTES)
            if not data:
                break
            if dechunker.whole(data) is None and dechunker.feed(data)[1] is not None:
                break  # the last chunk
            downstream.sendall(data)
            reads += 1
        result.append((reads, time.thread_time() - started))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return result[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode (modes alternate)")
    parser.add_argument("--gap-ms", type=float, default=0.5, help="time between two events")
    args = parser.parse_args()
    keys = derive_keys(parse_token(new_token()))
    with tempfile.TemporaryDirectory(prefix="p2pai-relay-floor-") as tmp:
        server = PeerTLS.load_or_create(Path(tmp) / "server", keys.peer_ca_key, Identity.generate())
        client = PeerTLS.load_or_create(Path(tmp) / "client", keys.peer_ca_key, Identity.generate())
        results: dict[str, list[float]] = {mode: [] for mode in MODES}
        for i in range(args.rounds):
            for mode in MODES if i % 2 == 0 else reversed(MODES):
                results[mode].append(one_round(mode, args.events, args.gap_ms / 1000, server, client))
    plain = statistics.median(results["plain"])
    print("| mode | relay thread CPU per event, µs (median) | rounds | over plaintext |")
    print("| --- | --- | --- | --- |")
    for mode in MODES:
        median = statistics.median(results[mode])
        rounds = ", ".join(f"{value:.1f}" for value in results[mode])
        print(f"| {mode} | {median:.1f} | {rounds} | +{median - plain:.1f} µs, x{median / plain:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
