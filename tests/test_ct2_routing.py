"""Audio uploads travel through the swarm like JSON requests: real `p2pai start` processes on 127.0.0.1.

A routes only (no model at all); B serves the built-in Whisper base over the direct TLS path; C serves it
too but announces a closed port, so it is reached only through the libp2p tunnel; E has a `whisper` of
its own that cannot load and routes local-first, so its requests fail over to B or C.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import openai
import pytest

from p2pai.token import new_token
from ports import free_port
from speech import JFK, JFK_TEXT, SPANISH, whisper_dir, words, write_whisper_config
from test_routing import client
from test_swarm import online_peers, wait_for

pytestmark = pytest.mark.e2e


def broken_whisper(models: Path) -> Path:
    """A `whisper` that looks like Whisper (its config.json) but whose weights are garbage: it cannot load."""
    directory = models / "broken-whisper"
    directory.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(whisper_dir() / name, directory / name)
    (directory / "model.bin").write_bytes(os.urandom(4096))
    (models / "whisper.yaml").write_text(f"name: whisper\nbackend: ctranslate2\nparameters:\n  model: {directory}\n")
    return models


def test_uploads_are_routed_over_the_direct_path_and_the_tunnel_with_failover(start_node, tmp_path: Path) -> None:
    token = new_token()
    a = start_node("--token", token, "--no-default-model", "--models-dir", str(tmp_path / "none"), name="a")
    common = ("--token", token, "--bootstrap", a.bootstrap_addr(), "--threads", "1")
    models = str(write_whisper_config(tmp_path / "whisper-models"))
    b = start_node(*common, "--models-dir", models, "--name", "b", name="b", ready=False)
    closed = free_port()  # nobody listens there: every direct attempt fails, the tunnel carries C's requests
    c = start_node(*common, "--models-dir", models, "--peer-advertise", f"127.0.0.1:{closed}", "--name", "c",
                   name="c", ready=False)
    e = start_node(*common, "--models-dir", str(broken_whisper(tmp_path / "e-models")), "--routing", "local-first",
                   "--name", "e", name="e", ready=False)
    for node in (b, c, e):
        node.wait_ready()
    # Online first, then their endpoints with their models: a node offers models only once it listens.
    wait_for(lambda: len(online_peers(a)) == 3 and all(n["address"] for n in online_peers(a).values()), 10.0)
    ids = {b.peer_id(): "b", c.peer_id(): "c"}
    assert online_peers(a)[c.peer_id()]["address"] == f"https://127.0.0.1:{closed}"
    api = client(a)
    assert [m.model_extra["tasks"] for m in api.models.list().data] == [["transcription", "translation"]]

    for pin in ("b", "c"):  # signed, over TLS to B, through the tunnel to C
        raw = api.audio.transcriptions.with_raw_response.create(
            model="whisper", file=("jfk.wav", JFK.read_bytes()), extra_headers={"X-P2PAI-Node": pin})
        assert ids[raw.headers["X-P2PAI-Served-By"]] == pin
        assert words(raw.parse().text) == words(JFK_TEXT)
        verbose = api.audio.translations.create(model="whisper", file=("es.wav", SPANISH.read_bytes()),
                                                response_format="verbose_json", extra_headers={"X-P2PAI-Node": pin})
        assert verbose.language == "english" and "brother" in words(verbose.text)
        streamed = list(api.audio.transcriptions.create(model="whisper", file=("jfk.wav", JFK.read_bytes()),
                                                        stream=True, extra_headers={"X-P2PAI-Node": pin}))
        assert streamed[-1].type == "transcript.text.done" and words(streamed[-1].text) == words(JFK_TEXT)
        # A 20 MiB upload crosses too (the tunnel takes bodies up to the upload limit); the peer's 400 comes back.
        big = b"RIFF\xff\xff\xff\xffWAVEfmt " + os.urandom(20 * 1024 * 1024)
        with pytest.raises(openai.BadRequestError) as refused:
            api.audio.transcriptions.create(model="whisper", file=("big.wav", big), extra_headers={"X-P2PAI-Node": pin})
        assert refused.value.code == "invalid_audio"

    with pytest.raises(openai.BadRequestError) as not_served:  # A knows the model serves no chat
        api.chat.completions.create(model="whisper", messages=[{"role": "user", "content": "hi"}])
    assert not_served.value.code == "chat_not_supported"

    # E's own whisper fails to load: the same upload goes on to a node whose whisper works.
    with httpx.Client(timeout=60) as http:
        answer = http.post(e.url + "/v1/audio/transcriptions", data={"model": "whisper"},
                           files={"file": ("jfk.wav", JFK.read_bytes(), "audio/wav")})
    assert answer.status_code == 200, answer.text
    assert ids[answer.headers["X-P2PAI-Served-By"]] in ("b", "c")
    assert words(answer.json()["text"]) == words(JFK_TEXT)
