"""Placement by expected time to first token with real `p2pai start` processes on 127.0.0.1.

A routes only; B and C both have model `x` on disk (one slot each); only B loads it at start.
Before issue #13, every request went to B however long its queue grew (40 to 0)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from p2pai.token import new_token
from test_swarm import online_peers, wait_for


def x_models(tmp_path: Path, models_dir: Path, settings: str) -> Path:
    """A models directory holding one model `x`: the tiny GGUF with these YAML ``settings``."""
    config = tmp_path / "x-models"
    config.mkdir()
    (config / "x.yaml").write_text(f"name: x\nparameters:\n  model: {models_dir / 'tiny.gguf'}\n  temperature: 0\n"
                                   + settings)
    return config


MAX_TOKENS = 600  # a few tenths of a second per answer: a queue of 7 takes longer than loading the tiny model


def test_a_node_with_the_model_on_disk_takes_load_once_the_loaded_nodes_queue_is_longer_than_a_load(
        start_node, models_dir: Path, tmp_path: Path) -> None:
    config = x_models(tmp_path, models_dir, "context_size: 1024\nparallel: 1\nmax_queue: 64\n")
    token = new_token()
    a = start_node("--token", token, "--no-default-model", "--models-dir", str(models_dir / "none"), name="a")
    common = ("--token", token, "--bootstrap", a.bootstrap_addr(), "--threads", "1", "--models-dir", str(config))
    b = start_node(*common, "--preload", "--name", "b", name="b", ready=False)
    c = start_node(*common, "--name", "c", name="c", ready=False)
    b.wait_ready()
    c.wait_ready()
    names = {b.peer_id(): "b", c.peer_id(): "c"}

    def loaded() -> dict[str, list[str]]:
        return {names[peer]: node["loaded"] for peer, node in online_peers(a).items()}

    wait_for(lambda: loaded() == {"b": ["x"], "c": []}, 10.0)

    api = openai.OpenAI(base_url=a.url + "/v1", api_key="unused", max_retries=0, timeout=60)

    def ask(_: int) -> str:
        raw = api.completions.with_raw_response.create(model="x", prompt="the people of", max_tokens=MAX_TOKENS)
        return names[raw.headers["X-P2PAI-Served-By"]]

    with ThreadPoolExecutor(8) as pool:
        servers = Counter(pool.map(ask, range(40)))
    assert servers["b"] >= 10 and servers["c"] >= 10, servers
    wait_for(lambda: loaded()["c"] == ["x"], 5.0)
