"""Which models a node serves: LocalAI YAML, loose GGUF files, --model and the default."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from p2pai.models.builtin import (
    BUILTIN_MAX_TOKENS,
    BUILTIN_MODELS,
    GEMMA,
    SMOLLM2,
    BuiltinError,
    ensure_builtin_file,
)
from p2pai.models.catalog import ModelsError, build_catalog


def test_localai_yaml_fields(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        "name: my-model\nbackend: llama-cpp\nparameters:\n  model: sub/file.gguf\n  temperature: 0.2\n  top_k: 10\n"
        "context_size: 1024\nthreads: 3\nf16: true\nmmap: false\nembeddings: true\nstopwords: END\n"
        "template:\n  chat_format: chatml\nunknown_localai_field: [1, 2]\n"
    )
    catalog = build_catalog(tmp_path, tmp_path / "data", [])
    config = catalog.get("my-model")
    assert config is not None and catalog.problems == []
    assert config.model_path(tmp_path) == tmp_path / "sub" / "file.gguf"
    assert (config.parameters.temperature, config.parameters.top_k) == (0.2, 10)
    assert (config.context_size, config.threads, config.mmap, config.embeddings) == (1024, 3, False, True)
    assert config.stopwords == ["END"]
    assert config.effective_chat_format() == "chatml"


def test_broken_configs_are_reported_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: [unclosed\n")
    (tmp_path / "b.yaml").write_text("- a list\n")
    (tmp_path / "c.yaml").write_text("name: c\n")
    (tmp_path / "d.yaml").write_text("name: d\nparameters:\n  model: d.gguf\ncontext_size: -5\n")
    (tmp_path / "e.yaml").write_text("name: e\nparameters:\n  model: e.gguf\n")
    (tmp_path / "f.yaml").write_text("name: e\nparameters:\n  model: f.gguf\n")
    catalog = build_catalog(tmp_path, tmp_path / "data", [])
    assert catalog.names() == ["e"]
    assert [p.split(":")[0] for p in catalog.problems] == ["a.yaml", "b.yaml", "c.yaml", "d.yaml", "f.yaml"]


def test_loose_gguf_files_are_served_under_their_file_name(tmp_path: Path, tiny_path: Path) -> None:
    (tmp_path / "loose.gguf").write_bytes(tiny_path.read_bytes())
    (tmp_path / "used.gguf").write_bytes(tiny_path.read_bytes())
    (tmp_path / "used.yaml").write_text("name: used\nparameters:\n  model: used.gguf\n")
    catalog = build_catalog(tmp_path, tmp_path / "data", [])
    assert sorted(catalog.names()) == ["loose.gguf", "used"]


def test_model_flag_takes_a_path_or_a_file_in_the_models_dir(tmp_path: Path, tiny_path: Path) -> None:
    catalog = build_catalog(tmp_path / "none", tmp_path / "data", [str(tiny_path)])
    assert catalog.names() == ["tiny"]
    with pytest.raises(ModelsError, match="no such file"):
        build_catalog(tmp_path, tmp_path / "data", ["missing.gguf"])


def test_builtin_models_only_when_nothing_is_configured(tmp_path: Path, tiny_path: Path) -> None:
    catalog = build_catalog(tmp_path / "empty", tmp_path / "data", [])
    onnx = [model.name for model in BUILTIN_MODELS if model.present()]  # once fetched (p2pai models fetch)
    assert catalog.names() == [SMOLLM2.name, GEMMA.name, *onnx]
    assert catalog.default == SMOLLM2.name
    smollm2, gemma = catalog.get(SMOLLM2.name), catalog.get(GEMMA.name)
    assert smollm2.builtin and smollm2.embeddings and smollm2.effective_chat_format() is None  # the GGUF's template
    assert gemma.builtin and gemma.embeddings and gemma.effective_chat_format() == "gemma"
    assert smollm2.parameters.max_tokens == gemma.parameters.max_tokens == BUILTIN_MAX_TOKENS
    assert build_catalog(tmp_path / "empty", tmp_path / "data", [str(tiny_path)]).names() == ["tiny"]
    assert build_catalog(tmp_path / "empty", tmp_path / "data", [], default_model=False).names() == []


def test_models_installed_through_the_api_keep_the_builtins(tmp_path: Path, tiny_path: Path) -> None:
    """A config with `origin:` (written by a model job) is not the operator's own: the built-ins stay."""
    (tmp_path / "pulled.yaml").write_text(f"name: pulled\norigin: swarm:pulled\nparameters:\n  model: {tiny_path}\n")
    catalog = build_catalog(tmp_path, tmp_path / "data", [])
    onnx = [model.name for model in BUILTIN_MODELS if model.present()]
    assert catalog.names() == ["pulled", SMOLLM2.name, GEMMA.name, *onnx] and catalog.default == SMOLLM2.name
    (tmp_path / "own.yaml").write_text(f"name: own\nparameters:\n  model: {tiny_path}\n")
    assert sorted(build_catalog(tmp_path, tmp_path / "data", []).names()) == ["own", "pulled"]


@pytest.mark.parametrize("builtin", [SMOLLM2, GEMMA], ids=lambda b: b.name)
def test_builtin_model_file_is_assembled_verified_and_repaired(tmp_path: Path, builtin) -> None:
    config = builtin.config(tmp_path / "data")
    target = Path(config.parameters.model)
    ensure_builtin_file(config)
    assert target.stat().st_size == builtin.size
    target.write_bytes(b"damaged")
    ensure_builtin_file(config)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == builtin.sha256
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no partial file left


def test_damaged_pieces_never_become_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    piece = tmp_path / "piece"
    piece.write_bytes(b"x" * 1000)
    damaged = replace(SMOLLM2, pieces=lambda: [piece])
    monkeypatch.setattr("p2pai.models.builtin.BUILTIN_GGUF", (damaged,))
    config = damaged.config(tmp_path / "data")
    with pytest.raises(BuiltinError, match="SHA-256"):
        ensure_builtin_file(config)
    assert list((tmp_path / "data" / "builtin").iterdir()) == []
