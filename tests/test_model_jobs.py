"""Galleries and model jobs (LocalAI's /models/*, Jan's download and delete) on a real `p2pai start`
process: a gallery index on disk and one served over loopback HTTP, model files from a loopback
HTTP server, the `p2pai pull` and `p2pai models` commands."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from file_server import FileServer
from ports import free_port
from tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory):
    """A directory served over HTTP with a tiny model, a good index and one whose hash is wrong."""
    root = tmp_path_factory.mktemp("gallery")
    model = write_tiny_gguf(root / "gal-tiny.gguf", seed=5)
    sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    server = FileServer(root, free_port("127.0.0.1"))
    entries = [
        {"name": "gal-tiny", "description": "A tiny random model", "license": "MIT",
         "overrides": {"parameters": {"temperature": 0}, "context_size": 256},
         "files": [{"filename": "gal-tiny.gguf", "sha256": sha256, "uri": f"{server.url}/gal-tiny.gguf"}]},
        {"name": "bad-hash", "files": [{"filename": "bad.gguf", "sha256": "0" * 64,
                                        "uri": f"{server.url}/gal-tiny.gguf"}]},
        {"name": "no-hash", "files": [{"filename": "nohash.gguf", "uri": f"{server.url}/gal-tiny.gguf"}]},
    ]
    (root / "index.yaml").write_text(yaml.safe_dump(entries))
    definition = {"name": "defined", "config_file": "context_size: 128\nparameters:\n  temperature: 0.1\n",
                  "files": [{"filename": "gal-tiny.gguf", "sha256": sha256, "uri": f"{server.url}/gal-tiny.gguf"}]}
    (root / "definition.yaml").write_text(yaml.safe_dump(definition))
    yield root, server, sha256
    server.stop()


def wait_job(node, job: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        status = httpx.get(f"{node.url}/models/jobs/{job}", timeout=5).json()
        if status["processed"]:
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job} did not end: {status}")


def apply(node, **body) -> dict:
    reply = httpx.post(node.url + "/models/apply", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["status"] == f"{node.url}/models/jobs/{answer['uuid']}"
    return wait_job(node, answer["uuid"])


def model_ids(node) -> list[str]:
    return [m["id"] for m in httpx.get(node.url + "/v1/models", timeout=5).json()["data"]]


def test_galleries_apply_serve_and_delete(start_node, gallery, tmp_path: Path) -> None:
    root, server, sha256 = gallery
    models = tmp_path / "models"
    node = start_node("--no-default-model", "--models-dir", str(models), "--gallery", f"local={root / 'index.yaml'}",
                      "--gallery", f"{server.url}/index.yaml", "--threads", "1")
    galleries = httpx.get(node.url + "/models/galleries").json()
    assert [g["name"] for g in galleries] == ["p2pai", "local", "index"]
    available = {m["id"]: m for m in httpx.get(node.url + "/models/available").json()}
    assert {"p2pai@smollm2-135m-instruct", "p2pai@gemma-3-270m", "local@gal-tiny", "index@gal-tiny"} <= set(available)
    assert available["local@gal-tiny"]["installed"] is False
    assert available["local@gal-tiny"]["files"][0]["sha256"] == sha256

    # From the index on disk: fetched from the HTTP server, verified, served.
    status = apply(node, id="local@gal-tiny")
    assert status["error"] is None and status["progress"] == 100.0, status
    assert status["file_name"] == "gal-tiny.gguf" and status["downloaded_bytes"] == status["total_bytes"] > 0
    assert "gal-tiny" in model_ids(node)
    available = {m["id"]: m for m in httpx.get(node.url + "/models/available").json()}
    assert available["local@gal-tiny"]["installed"] is True
    config = yaml.safe_load((models / "gal-tiny.yaml").read_text())
    assert config["origin"] == "local@gal-tiny" and config["context_size"] == 256
    chat = httpx.post(node.url + "/v1/chat/completions", timeout=30,
                      json={"model": "gal-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 3

    # From the index over HTTP, under another name: the file is there already and shared.
    status = apply(node, id="index@gal-tiny", name="gal-tiny-2")
    assert status["error"] is None, status
    assert {"gal-tiny", "gal-tiny-2"} <= set(model_ids(node))
    # Applying an installed model again ends at once.
    again = apply(node, id="local@gal-tiny")
    assert again["error"] is None and again["message"] == "the model is already installed"

    # LocalAI's delete keeps the file another model uses; Jan's delete removes the last user and the file.
    reply = httpx.post(node.url + "/models/delete/gal-tiny-2")
    assert reply.status_code == 200 and wait_job(node, reply.json()["uuid"])["deletion"] is True
    assert (models / "gal-tiny.gguf").exists() and not (models / "gal-tiny-2.yaml").exists()
    reply = httpx.delete(node.url + "/v1/models/gal-tiny")
    assert reply.json() == {"id": "gal-tiny", "object": "model", "deleted": True}
    assert not (models / "gal-tiny.gguf").exists() and not (models / "gal-tiny.yaml").exists()
    assert "gal-tiny" not in model_ids(node)
    assert httpx.delete(node.url + "/v1/models/gal-tiny").status_code == 404

    # Jan's download: GET in its spec, POST in its example.
    download = httpx.get(node.url + "/v1/models/download/gal-tiny").json()
    assert download["state"] == "downloading" and wait_job(node, download["job"])["error"] is None
    assert httpx.post(node.url + "/v1/models/download/gal-tiny").json() == {
        "id": "gal-tiny", "object": "model", "state": "downloaded", "job": None}

    jobs = httpx.get(node.url + "/models/jobs").json()
    assert len(jobs) == 7 and all(job["processed"] for job in jobs.values())
    node.stop()
    node.restart()
    node.wait_ready()
    assert httpx.get(node.url + "/models/jobs").json() == jobs  # kept in the store
    assert "gal-tiny" in model_ids(node)


def test_apply_a_model_definition_by_url(start_node, gallery, tmp_path: Path) -> None:
    """LocalAI's `url`: a model definition (config_file as YAML text, files) over HTTP."""
    _, server, _ = gallery
    models = tmp_path / "models"
    node = start_node("--no-default-model", "--models-dir", str(models))
    status = apply(node, url=f"{server.url}/definition.yaml", overrides={"parameters": {"top_k": 5}})
    assert status["error"] is None and status["gallery_element_name"] == f"{server.url}/definition.yaml", status
    config = yaml.safe_load((models / "defined.yaml").read_text())
    assert config["context_size"] == 128 and config["parameters"] == {
        "model": "gal-tiny.gguf", "temperature": 0.1, "top_k": 5}
    assert "defined" in model_ids(node)


def test_a_wrong_or_missing_hash_never_yields_a_model(start_node, gallery, tmp_path: Path) -> None:
    root, _, _ = gallery
    models = tmp_path / "models"
    node = start_node("--no-default-model", "--models-dir", str(models), "--gallery", f"local={root / 'index.yaml'}")
    status = apply(node, id="local@bad-hash")
    assert status["error"] and "SHA-256" in status["error"], status
    assert "bad-hash" not in model_ids(node)
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == []
    assert list((models / ".pulls").iterdir()) == []

    reply = httpx.post(node.url + "/models/apply", json={"id": "local@no-hash"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "unverifiable_file"


def test_bad_requests_get_clear_errors(start_node, gallery, tmp_path: Path, tiny_path: Path) -> None:
    root, _, _ = gallery
    node = start_node("--models-dir", str(tmp_path / "models"), "--model", str(tiny_path), "--gallery",
                      f"local={root / 'index.yaml'}", "--gallery", f"broken={tmp_path / 'missing.yaml'}")
    cases = [
        ({}, 400, "missing_model"),
        ({"id": "local@nope"}, 404, "model_not_found"),
        ({"name": "nope-anywhere"}, 400, "gallery_unavailable"),  # the broken gallery is named
        ({"url": "/etc/passwd"}, 400, "invalid_url"),
        ({"id": "local@gal-tiny", "name": "tiny"}, 409, "model_exists"),
        ({"id": "local@gal-tiny", "name": "../evil"}, 400, "invalid_name"),
        ({"id": "local@gal-tiny", "overrides": {"context_size": -1}}, 400, "invalid_config"),
    ]
    for body, status, code in cases:
        reply = httpx.post(node.url + "/models/apply", json=body)
        assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), (body, reply.text)
    assert httpx.post(node.url + "/models/apply", content=b"{").status_code == 400
    assert httpx.get(node.url + "/models/jobs/nope").status_code == 404
    reply = httpx.post(node.url + "/models/delete/tiny")
    assert reply.status_code == 409 and reply.json()["error"]["code"] == "not_in_models_dir"


def test_builtin_models_are_in_the_builtin_gallery_and_cannot_be_deleted(start_node) -> None:
    node = start_node()
    reply = httpx.delete(node.url + "/v1/models/smollm2-135m-instruct")
    assert reply.status_code == 409 and reply.json()["error"]["code"] == "builtin_model"
    status = apply(node, id="p2pai@smollm2-135m-instruct")
    assert status["message"] == "the model is already installed"


def test_pull_and_models_commands(start_node, gallery, tmp_path: Path) -> None:
    root, _, _ = gallery
    node = start_node("--no-default-model", "--models-dir", str(tmp_path / "models"), "--gallery",
                      f"local={root / 'index.yaml'}")
    command = [sys.executable, "-m", "p2pai"]
    pulled = subprocess.run([*command, "pull", "local@gal-tiny", "--url", node.url], capture_output=True, text=True,
                            timeout=60)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert "installed gal-tiny" in pulled.stderr  # the console writes to stderr
    listed = subprocess.run([*command, "models", "--url", node.url], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and "gal-tiny" in listed.stderr
    failed = subprocess.run([*command, "pull", "local@bad-hash", "--url", node.url], capture_output=True, text=True,
                            timeout=60)
    assert failed.returncode == 1 and "SHA-256" in failed.stderr
    deleted = subprocess.run([*command, "models", "delete", "gal-tiny", "--url", node.url], capture_output=True,
                             text=True, timeout=30)
    assert deleted.returncode == 0 and "gal-tiny" not in model_ids(node)
