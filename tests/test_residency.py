"""Memory-aware loading with real model processes: LRU eviction and refusing what cannot fit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from p2pai.backends.base import Engine, GenerationRequest, ModelLoadError
from p2pai.models.catalog import build_catalog
from p2pai.routing.probe import own_figures
from p2pai.serving.manager import FREE_MEMORY_MAX_AGE_S, LoadEvent, ModelManager


async def test_max_loaded_unloads_the_least_recently_used_idle_model(models_dir: Path, tmp_path: Path) -> None:
    events: list[tuple[str, str]] = []
    manager = ModelManager(build_catalog(models_dir, tmp_path, []), threads=1, max_loaded=1,
                           on_load=lambda event: events.append((event.model, event.phase)))
    try:
        await _use(await manager.engine("tiny"))
        await manager.engine("tiny-b")
        assert manager.loaded() == ["tiny-b"]
        assert ("tiny", "unloaded") in events
        assert manager.load_seconds("tiny") > 0 and manager.load_speed.overhead_s is not None  # measured
    finally:
        await manager.close()


async def test_a_busy_model_is_never_unloaded_for_another(models_dir: Path, tmp_path: Path) -> None:
    manager = ModelManager(build_catalog(models_dir, tmp_path, []), threads=1, max_loaded=1)
    try:
        engine = await manager.engine("tiny")

        async def generate() -> None:
            async for _ in engine.generate(GenerationRequest(prompt="the people", max_tokens=400)):
                pass

        work = [asyncio.create_task(generate()) for _ in range(16)]  # a second or so for its 4 slots
        await asyncio.sleep(0.05)
        assert engine.stats().in_flight
        assert not manager.plan("tiny-b").fits
        with pytest.raises(ModelLoadError, match="does not fit"):
            await manager.engine("tiny-b")
        await asyncio.gather(*work)
        await manager.engine("tiny-b")
        assert manager.loaded() == ["tiny-b"]
    finally:
        await manager.close()


async def test_a_model_computing_embeddings_is_not_unloaded(models_dir: Path, tmp_path: Path) -> None:
    manager = ModelManager(build_catalog(models_dir, tmp_path, []), threads=1, max_loaded=1)
    try:
        engine = await manager.engine("tiny")
        embedding = asyncio.create_task(engine.embed(["the people of the world " * 20] * 64))
        await asyncio.sleep(0.01)
        assert not embedding.done()
        with pytest.raises(ModelLoadError, match="does not fit"):
            await manager.engine("tiny-b")
        vectors, _ = await embedding
        assert len(vectors) == 64
    finally:
        await manager.close()


async def test_a_model_just_loaded_for_a_request_is_not_unloaded_before_the_request_reaches_it(
        models_dir: Path, tmp_path: Path) -> None:
    manager = ModelManager(build_catalog(models_dir, tmp_path, []), threads=1, max_loaded=1)
    try:
        # Two loads at once: the second plans its room when the first model is loaded but its
        # request has not used it yet.
        results = await asyncio.gather(manager.engine("tiny"), manager.engine("tiny-b"), return_exceptions=True)
        engines = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(engines) == 1 and len(refused) == 1
        assert isinstance(refused[0], ModelLoadError) and "does not fit" in str(refused[0])
        await _use(engines[0])  # still loaded: it answers
        assert len(manager.loaded()) == 1
    finally:
        await manager.close()


async def _use(engine: Engine) -> None:
    async for _ in engine.generate(GenerationRequest(prompt="the people", max_tokens=2)):
        pass


async def test_a_model_larger_than_the_memory_budget_is_not_loaded(models_dir: Path, tmp_path: Path) -> None:
    events: list[LoadEvent] = []
    manager = ModelManager(build_catalog(models_dir, tmp_path, []), threads=1, memory_budget=1 << 20,
                           on_load=events.append)
    try:
        need = manager.memory_needed("tiny")
        assert need is not None and need > 1 << 20
        with pytest.raises(ModelLoadError, match="does not fit in this node's memory"):
            await manager.engine("tiny")
        assert manager.loaded() == [] and [e.phase for e in events] == ["start", "failed"]
    finally:
        await manager.close()


class MemoryReads:
    """Counts the manager's reads of the system's free memory (psutil's answer is kept)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        read = psutil.virtual_memory

        def counted() -> Any:
            self.count += 1
            return read()

        monkeypatch.setattr(psutil, "virtual_memory", counted)


async def test_own_figures_read_the_free_memory_at_most_once_a_second(models_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The router weighs this node's figures on every request (and answers every probe with them)."""
    reads = MemoryReads(monkeypatch)
    manager = ModelManager(build_catalog(models_dir, tmp_path, []), threads=1)
    started = time.monotonic()
    for _ in range(100):
        assert own_figures(manager, "tiny").fits
    assert reads.count <= 1 + (time.monotonic() - started) / FREE_MEMORY_MAX_AGE_S


async def test_a_load_and_an_unload_read_the_free_memory_again(models_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A model loaded or unloaded took or gave back memory: the figures do not weigh what was free before."""
    reads = MemoryReads(monkeypatch)
    manager = ModelManager(build_catalog(models_dir, tmp_path, []), threads=1, max_loaded=1)
    try:
        own_figures(manager, "tiny-b")
        await manager.engine("tiny")
        before = reads.count
        own_figures(manager, "tiny-b")
        assert reads.count == before + 1
        await manager.remove("tiny")
        own_figures(manager, "tiny-b")
        assert reads.count == before + 2
    finally:
        await manager.close()


def test_a_model_installed_again_under_its_name_is_estimated_again(models_dir: Path, tmp_path: Path) -> None:
    manager = ModelManager(build_catalog(models_dir, tmp_path, []), threads=1)
    small = manager.memory_needed("tiny")
    assert small is not None
    manager.add(manager.config("tiny").model_copy(update={"context_size": 8192}))
    larger = manager.memory_needed("tiny")
    assert larger is not None and larger > small
