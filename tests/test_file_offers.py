"""What nodes announce about their model files is data from members: every field is checked, and
a malformed file costs the model only its file (it stays routable, it is not pullable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pai.models.catalog import build_catalog
from p2pai.models.digests import MIN_CHUNK, chunk_size_for, digest_file
from p2pai.overlay.announcement import MAX_PAYLOAD_BYTES
from p2pai.serving.manager import ModelManager
from p2pai.swarm.payload import (
    MAX_ANNOUNCED_MODELS,
    DataEndpoint,
    FileOffer,
    ModelOffer,
    NodePayload,
    _within_limit,
    announced,
    local_payload,
)

GOOD = {"sha256": "a" * 64, "size": 100 << 20, "chunk_size": MIN_CHUNK, "root": "b" * 64}


def test_a_well_formed_file_is_kept() -> None:
    payload = NodePayload.parse({"models": [{"name": "m", "file": GOOD}]})
    assert payload.models[0].file == FileOffer(**GOOD)


@pytest.mark.parametrize("change", [
    {"sha256": "A" * 64}, {"sha256": "a" * 63}, {"sha256": "../../etc/passwd"}, {"sha256": None},
    {"root": "z" * 64}, {"size": 0}, {"size": -1}, {"size": 1 << 62}, {"size": "big"},
    {"chunk_size": 1}, {"chunk_size": MIN_CHUNK * 2},  # not the chunk size for this size
    {"chunk_size": 1 << 40},
], ids=repr)
def test_a_malformed_file_costs_the_model_only_its_file(change: dict) -> None:
    payload = NodePayload.parse({"models": [{"name": "m", "slots": 2, "file": {**GOOD, **change}}]})
    assert payload.models == [ModelOffer(name="m", slots=2)]


@pytest.mark.parametrize("garbage", ["file", 7, [GOOD], {"sha256": "a" * 64}])
def test_garbage_in_place_of_a_file_is_no_file(garbage: object) -> None:
    assert NodePayload.parse({"models": [{"name": "m", "file": garbage}]}).models[0].file is None


def test_chunk_sizes_grow_with_the_file_so_a_hash_list_stays_small(tmp_path: Path) -> None:
    assert chunk_size_for(1) == chunk_size_for(256 << 30) == MIN_CHUNK
    assert chunk_size_for((256 << 30) + 1) == 2 * MIN_CHUNK
    path = tmp_path / "f"
    path.write_bytes(b"x" * (MIN_CHUNK + 1))
    digest = digest_file(path)
    assert (digest.chunks, digest.size) == (2, MIN_CHUNK + 1)
    assert FileOffer.of(digest).root == digest.root


def test_the_payload_stays_announceable_with_every_model_pullable_or_not() -> None:
    """64 models with the longest names and their files would pass the overlay's 32 KiB: the
    files of the last ones are left out, the models are all still announced."""
    models = [ModelOffer(name=f"{i:03d}" + "x" * 253, slots=4, in_flight=9, queued=9, decode_tps=99.9,
                         file=FileOffer(**GOOD)) for i in range(MAX_ANNOUNCED_MODELS)]
    payload = _within_limit(NodePayload(models=models))
    assert len(json.dumps(announced(payload)).encode()) <= MAX_PAYLOAD_BYTES
    assert len(payload.models) == MAX_ANNOUNCED_MODELS
    assert payload.models[0].file is not None and payload.models[-1].file is None


async def test_models_are_offered_only_once_the_data_endpoint_listens(models_dir: Path, tmp_path: Path) -> None:
    """Offered before, a peer would route to them through the tunnel, for want of an address."""
    manager = ModelManager(build_catalog(models_dir, tmp_path, []), threads=1)
    try:
        endpoint = DataEndpoint()
        assert local_payload(manager, endpoint).models == []
        endpoint.hosts, endpoint.port = ["127.0.0.1"], 4443
        assert "tiny" in [offer.name for offer in local_payload(manager, endpoint).models]
    finally:
        await manager.close()
