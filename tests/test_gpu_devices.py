"""Devices announced and shown: a CPU-only node announces none and serves as before; GPUs fed in
(P2PAI_DEVICES, this machine has none) are announced, shown, and used for placement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI
from rich.console import Console

from conftest import NodeProcess
from p2pai.backends.llama.devices import DEVICES_ENV, Device, gpus
from p2pai.overlay import Member
from p2pai.peers import swarm_table
from p2pai.swarm.payload import NodePayload
from p2pai.swarm.view import SwarmNode
from p2pai.token import new_token
from p2pai.worker import memory, served_device
from rpc_helpers import WorkerProcess

GiB = 1 << 30
RTX = {"name": "CUDA0", "description": "NVIDIA GeForce RTX 4090", "backend": "CUDA", "type": "gpu",
       "free": 20 * GiB, "total": 24 * GiB}
SMALL = {**RTX, "name": "CUDA1", "description": "NVIDIA GeForce RTX 3060", "free": 6 * GiB, "total": 12 * GiB}
CPU = {"name": "CPU", "description": "AMD EPYC", "backend": "CPU", "type": "cpu", "free": 8 * GiB, "total": 16 * GiB}
IGPU = {**RTX, "name": "Vulkan0", "description": "AMD Radeon 780M", "backend": "Vulkan", "type": "igpu"}


def test_announced_devices_are_parsed_defensively() -> None:
    assert NodePayload.parse({"gpus": [RTX], "cpus": 4}).gpus == [Device(**RTX)]
    for junk in ([{"name": ""}], [{**RTX, "free": -1}], "CUDA0", [RTX] * 17):
        payload = NodePayload.parse({"gpus": junk, "cpus": 4})
        assert payload.gpus == [] and payload.cpus == 4  # costs the member only its device list


def test_a_worker_serving_a_gpu_is_placed_as_one() -> None:
    worker = {"rpc": {"port": 5000, "hosts": ["127.0.0.1"]}, "free_memory": 1, "protocol": "7.0.0"}

    def serves_gpu(device: object) -> bool:
        member = Member("w", "w", "1", ["llama-cpp-worker"], [], {"worker": {**worker, "device": device}}, 0.0,
                        True, True)
        info = SwarmNode.from_member(member).worker_info()
        assert info is not None
        return info.gpu

    assert serves_gpu(RTX) and not serves_gpu(CPU)
    assert not serves_gpu({"name": 7})  # a malformed device: still a (CPU) worker


def test_the_gpus_llama_cpp_uses_and_the_one_a_worker_serves() -> None:
    devices = [Device(**d) for d in (CPU, SMALL, RTX, IGPU)]
    assert [d.name for d in gpus(devices)] == ["CUDA1", "CUDA0"]  # integrated GPUs only without discrete ones
    assert [d.name for d in gpus([Device(**CPU), Device(**IGPU)])] == ["Vulkan0"]
    assert served_device(devices) == Device(**RTX)
    assert served_device([Device(**CPU)]) is None
    assert memory(4096, Device(**RTX)) == (4096 * 2**20, 4096 * 2**20)
    assert memory(0, Device(**RTX)) == (20 * GiB, 24 * GiB)


def test_peers_shows_the_gpus() -> None:
    swarm = {"federated_nodes": [{"id": "a" * 20, "name": "n", "online": True, "gpus": [RTX]}],
             "llama_cpp_nodes": [{"id": "b" * 20, "name": "w", "online": True, "device": SMALL},
                                 {"id": "c" * 20, "name": "v", "online": True, "device": CPU}]}
    console = Console(width=250, record=True)
    console.print(swarm_table(swarm))
    text = console.export_text()
    assert "CUDA0 NVIDIA GeForce RTX 4090 (CUDA): 20.0 / 24.0 GiB free" in text
    assert "CUDA1 NVIDIA GeForce RTX 3060 (CUDA): 6.0 / 12.0 GiB free" in text
    assert "AMD EPYC" not in text  # a CPU worker shows no GPU


def wait_devices(node: NodeProcess) -> list[dict]:
    for _ in range(100):  # detection runs in the background
        devices = httpx.get(node.url + "/system", timeout=5).json()["devices"]
        if devices:
            return devices
        time.sleep(0.1)
    raise AssertionError("no devices after 10 s")


def test_a_cpu_only_node_announces_no_gpus_and_serves_as_before(start_node, models_dir: Path) -> None:
    node = start_node("--models-dir", str(models_dir), "--threads", "1", "--no-default-model")
    devices = wait_devices(node)
    assert [(d["name"], d["type"]) for d in devices] == [("CPU", "cpu")] and devices[0]["total"] > 0
    assert node.swarm()["self"]["gpus"] == []
    answer = OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0).completions.create(
        model="tiny", prompt="hello", max_tokens=4)
    assert answer.usage.completion_tokens == 4
    assert "placement" not in node.log.read_text()  # nothing to place: llama.cpp gets no gpu_layers, as before


def test_gpus_fed_in_are_announced_shown_and_placed(start_node, models_dir: Path) -> None:
    fed = json.dumps([CPU, RTX])
    node = start_node("--models-dir", str(models_dir), "--threads", "1", "--no-default-model",
                      env={DEVICES_ENV: fed, "COLUMNS": "1000"})  # log lines unwrapped
    assert [d["name"] for d in wait_devices(node)] == ["CPU", "CUDA0"]
    for _ in range(50):  # announced within the payload interval
        if node.swarm()["self"]["gpus"]:
            break
        time.sleep(0.1)
    assert node.swarm()["self"]["gpus"] == [RTX]
    table = subprocess.run([sys.executable, "-m", "p2pai", "peers", "--url", node.url], capture_output=True,
                           text=True, timeout=30, env={**os.environ, "COLUMNS": "250"})
    assert "CUDA0 NVIDIA GeForce RTX 4090 (CUDA): 20.0 / 24.0 GiB free" in table.stdout + table.stderr
    # llama.cpp has no CUDA0 here, so the layers placed on it stay on the CPU: the model still answers.
    answer = OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0).completions.create(
        model="tiny", prompt="hello", max_tokens=4)
    assert answer.usage.completion_tokens == 4
    log = node.log.read_text()
    assert "GPU CUDA0 (NVIDIA GeForce RTX 4090): layers 0-1 (2) + output" in log
    assert "predicted decode" in log


def test_a_gpu_worker_announces_its_gpu_and_takes_the_layers_first(start_node, tmp_path: Path,
                                                                   tiny_path: Path) -> None:
    token = new_token()
    workers = [WorkerProcess(token, tmp_path / "gpu-w", "gpu-w", memory_mb=2048, env={DEVICES_ENV: json.dumps([RTX])}),
               WorkerProcess(token, tmp_path / "cpu-w", "cpu-w", memory_mb=2048)]
    try:
        gpu_status = workers[0].status["worker"]
        assert gpu_status["device"]["name"] == "CUDA0" and gpu_status["device"]["type"] == "gpu"
        assert gpu_status["free_memory"] == 2048 * 2**20  # the GPU's free memory, capped by --memory
        assert workers[1].status["worker"]["device"]["type"] == "cpu"
        models = tmp_path / "models"
        models.mkdir()
        (models / "spread.yaml").write_text(f"name: spread\nparameters:\n  model: {tiny_path}\ncontext_size: 256\n"
                                            "threads: 1\nrpc: auto\n")
        node = start_node("--token", token, "--models-dir", str(models), "--threads", "1", "--no-default-model",
                          *[arg for worker in workers for arg in ("--bootstrap", worker.bootstrap)], name="node",
                          env={"COLUMNS": "1000"})
        for _ in range(100):
            if {n["name"] for n in node.swarm()["llama_cpp_nodes"] if n["online"]} == {"gpu-w", "cpu-w"}:
                break
            time.sleep(0.1)
        shown = {n["name"]: n for n in node.swarm()["llama_cpp_nodes"]}
        assert shown["gpu-w"]["device"]["description"] == "NVIDIA GeForce RTX 4090"
        answer = OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0).completions.create(
            model="spread", prompt="hello", max_tokens=4)
        assert answer.usage.completion_tokens == 4
        placed = next(line for line in node.log.read_text().splitlines() if "placement:" in line)
        assert "gpu-w (GPU worker): layers 0-1 (2)" in placed and "cpu-w" not in placed  # GPU memory first
        node_id = node.peer_id()
        workers[0].wait_status(lambda status: status["worker"]["in_use_by"] == node_id)
        assert workers[1].status["worker"]["in_use_by"] is None  # a worker without layers is not leased
        assert "no device 'CUDA0'; serving the CPU" in workers[0].stderr_path.read_text()
    finally:
        for worker in workers:
            worker.stop()
