"""Pulling a model from peers over the swarm's data plane, with real `p2pai start` processes on
loopback: one source, two at once, a source SIGKILLed mid-transfer (the pull goes on from the
other; or, alone, it resumes once the source is back), the puller itself killed and restarted,
a source whose disk rotted (corrupt chunks fetched again elsewhere)."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from metrics_helpers import Samples
from p2pai.models.digests import MIN_CHUNK
from p2pai.token import new_token
from tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e

MODEL = "big"
SERVE_RATE = "12M"  # bytes/s per source: a 59 MB pull takes seconds, long enough to kill a source midway
JOB_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 59 MB random-weight GGUF (15 chunks), served by the sources under the name `big`."""
    path = write_tiny_gguf(tmp_path_factory.mktemp("big") / f"{MODEL}.gguf", seed=7, n_layers=6, n_embd=512)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def token() -> str:
    return new_token()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def card(node, model: str = MODEL) -> dict | None:
    models = httpx.get(node.url + "/v1/models", timeout=5).json()["data"]
    return next((m for m in models if m["id"] == model), None)


def announced_by(node, sources) -> bool:
    """``node`` sees the file of MODEL announced by every one of ``sources``."""
    found = card(node)
    return found is not None and {s.peer_id() for s in sources} <= set(found["on_disk"])


def job(node, job_id: str) -> dict:
    return httpx.get(f"{node.url}/models/jobs/{job_id}", timeout=5).json()


def start_pull(node) -> str:
    reply = httpx.post(node.url + "/models/apply", json={"name": MODEL}, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()["uuid"]


def finished(node, job_id: str) -> dict:
    return wait_for(lambda: (status := job(node, job_id))["processed"] and status, JOB_TIMEOUT, "the pull to end")


def source(start_node, token: str, name: str, path: Path, *extra: str):
    return start_node("--token", token, "--model", str(path), "--serve-rate", SERVE_RATE, *extra, name=name)


def puller(start_node, token: str, bootstrap) -> object:
    return start_node("--token", token, "--no-default-model", "--bootstrap", bootstrap.bootstrap_addr(), name="puller")


@pytest.fixture
def paced_pair(start_node, big, token: str) -> tuple:
    """A source `a` serving `big` at SERVE_RATE and a puller `b` that has seen it announced."""
    path, _ = big
    a = source(start_node, token, "a", path)
    b = puller(start_node, token, a)
    wait_for(lambda: announced_by(b, [a]), 30, "the announcement")
    return a, b


def pulled(node, job_id: str, chunks: int, what: str) -> dict:
    """The job's status once it has at least ``chunks`` chunks of the file."""
    return wait_for(lambda: (status := job(node, job_id))["downloaded_bytes"] >= chunks * MIN_CHUNK and status,
                    JOB_TIMEOUT, what)


def kill(node) -> None:
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(5)


def only_from(status: dict, node) -> bool:
    """The job's sources are ``node`` alone (labels end with the peer id's last 8 characters)."""
    return len(status["sources"]) == 1 and status["sources"][0].endswith(f"({node.peer_id()[-8:]})")


def check_installed(node, sha256: str) -> None:
    path = node.data_dir / "models" / f"{MODEL}.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    assert not list((node.data_dir / "models" / ".pulls").iterdir())
    reply = httpx.post(node.url + "/v1/completions", headers={"X-P2PAI-Node": node.peer_id()}, timeout=30,
                       json={"model": MODEL, "prompt": "hello", "max_tokens": 3})
    assert reply.status_code == 200 and reply.headers["X-P2PAI-Served-By"] == node.peer_id()


def pull_whole_file_from(start_node, token: str, a, big) -> object:
    """A puller that has pulled ``big`` from ``a`` alone (checked) and serves it."""
    path, sha256 = big
    b = puller(start_node, token, a)
    wait_for(lambda: announced_by(b, [a]), 30, "the announcement of the file")
    status = finished(b, start_pull(b))
    assert status["error"] is None, status
    assert status["downloaded_bytes"] == status["total_bytes"] == path.stat().st_size
    assert only_from(status, a)
    check_installed(b, sha256)
    return b


def test_pull_from_one_peer(start_node, big, token: str) -> None:
    path, sha256 = big
    a = start_node("--token", token, "--model", str(path), name="a")
    b = pull_whole_file_from(start_node, token, a, big)
    # Every node now sees the file on both disks.
    wait_for(lambda: announced_by(a, [b]), 30, "the puller's announcement")
    assert card(a)["sha256"] == sha256 and card(a)["pullable"]


def test_pull_from_a_peer_reachable_only_through_the_tunnel(start_node, big, token: str) -> None:
    """The source advertises a peer endpoint where nobody listens, so every request of the pull
    goes through the overlay's tunnel, whose answers carry no Content-Length."""
    from ports import free_port

    path, _ = big
    a = start_node("--token", token, "--model", str(path), "--peer-advertise", f"127.0.0.1:{free_port()}", name="a")
    b = pull_whole_file_from(start_node, token, a, big)
    tunnelled = Samples(httpx.get(b.url + "/metrics", timeout=5).text)
    assert tunnelled.value("p2pai_overlay_tunnel_bytes_total", direction="received") >= path.stat().st_size


def test_pull_from_two_peers_goes_on_when_one_is_killed(start_node, big, token: str) -> None:
    path, sha256 = big
    c = source(start_node, token, "c", path)
    a = source(start_node, token, "a", path, "--bootstrap", c.bootstrap_addr())
    b = puller(start_node, token, c)
    wait_for(lambda: announced_by(b, [a, c]), 30, "both announcements")
    job_id = start_pull(b)
    status = pulled(b, job_id, 3, "a quarter of the file")
    assert len(status["sources"]) == 2, status
    kill(a)
    status = finished(b, job_id)
    assert status["error"] is None, status
    assert only_from(status, c)
    check_installed(b, sha256)


def test_a_pull_resumes_when_its_only_source_comes_back(paced_pair, big) -> None:
    a, b = paced_pair
    _, sha256 = big
    job_id = start_pull(b)
    pulled(b, job_id, 4, "a third of the file")
    kill(a)
    stopped_at = job(b, job_id)["downloaded_bytes"]
    time.sleep(1.0)
    a.restart()
    a.wait_ready()
    status = finished(b, job_id)
    assert status["error"] is None, status
    assert status["downloaded_bytes"] == status["total_bytes"] and stopped_at >= 4 * MIN_CHUNK
    check_installed(b, sha256)


def test_a_killed_puller_resumes_where_it_stopped(paced_pair, big) -> None:
    a, b = paced_pair
    _, sha256 = big
    first = start_pull(b)
    pulled(b, first, 6, "40 % of the file")
    time.sleep(1.5)  # the verified chunks are recorded every second
    kill(b)
    assert not (b.data_dir / "models" / f"{MODEL}.gguf").exists()  # a partial file is never a model
    b.restart()
    b.wait_ready()
    assert job(b, first)["error"].startswith("interrupted")
    wait_for(lambda: announced_by(b, [a]), 30, "the announcement")
    status = finished(b, start_pull(b))
    assert status["error"] is None, status
    assert status["resumed_bytes"] >= 5 * MIN_CHUNK, status
    check_installed(b, sha256)


def test_corrupt_chunks_from_a_rotten_disk_are_fetched_again(start_node, big, token: str, tmp_path: Path) -> None:
    path, sha256 = big
    rotten = tmp_path / "rotten" / f"{MODEL}.gguf"
    rotten.parent.mkdir()
    rotten.write_bytes(path.read_bytes())
    c = source(start_node, token, "c", path)
    a = source(start_node, token, "a", rotten, "--bootstrap", c.bootstrap_addr())
    b = puller(start_node, token, c)
    wait_for(lambda: announced_by(b, [a, c]), 30, "both announcements")
    # Bit rot after a hashed the file: one byte of every chunk, modification time kept, so a still
    # announces (and serves) it as the good file. The rotten copy is renamed into place, so a's index,
    # which looks every few seconds, never sees a modification time other than the hashed one.
    stat = rotten.stat()
    data = bytearray(rotten.read_bytes())
    for offset in range(0, stat.st_size, MIN_CHUNK):
        data[offset] ^= 0xFF
    swap = rotten.with_suffix(".rot")
    swap.write_bytes(data)
    os.utime(swap, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    swap.replace(rotten)
    status = finished(b, start_pull(b))
    assert status["error"] is None, status
    assert status["corrupt_chunks"] >= 1, (status, b.log.read_text()[-4000:])  # the log says why a failed
    assert only_from(status, c), status  # a was dropped
    check_installed(b, sha256)
