"""Build the list of models a node serves from its models dir, flags and defaults."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from . import builtin
from .config import ModelConfig, SamplingDefaults

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".gguf",)


class ModelsError(Exception):
    """The model configuration cannot be used; the message says what to fix."""


@dataclass
class ModelCatalog:
    models_dir: Path
    models: dict[str, ModelConfig] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Configs that were skipped, with the reason, to show at startup."""
    default: str | None = None
    """The model a request that names none gets when there are several (the built-in chat model)."""

    def get(self, name: str) -> ModelConfig | None:
        return self.models.get(name)

    def names(self) -> list[str]:
        return list(self.models)


def build_catalog(models_dir: Path, data_dir: Path, cli_models: list[str], default_model: bool = True) -> ModelCatalog:
    """YAML configs and loose GGUF files in `models_dir`, plus `--model` entries (a file, a CTranslate2
    model's directory, or the name of a configured or built-in model).

    With none of these (models installed through the API aside), the built-in models whose files
    are installed are served too: the GGUF ones, the first (SmolLM2 Instruct) as the default, and
    the ONNX and CTranslate2 ones once fetched (builtin.py); unless `default_model` is off (a node that only routes).
    """
    catalog = ModelCatalog(models_dir=models_dir)
    if models_dir.is_dir():
        _add_yaml_configs(catalog)
        _add_loose_files(catalog)
    for entry in cli_models:
        _add_cli_model(catalog, entry, data_dir)
    if default_model and all(config.origin is not None for config in catalog.models.values()):
        for gguf in builtin.BUILTIN_GGUF:
            if gguf.name not in catalog.models and gguf.available(data_dir):
                catalog.models[gguf.name] = gguf.config(data_dir)
        for model in builtin.BUILTIN_MODELS:
            if model.name not in catalog.models and model.present():
                catalog.models[model.name] = builtin_config(model)
        catalog.default = next((g.name for g in builtin.BUILTIN_GGUF if g.name in catalog.models), None)
    return catalog


def _add_yaml_configs(catalog: ModelCatalog) -> None:
    for path in sorted(catalog.models_dir.iterdir()):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        try:
            raw = yaml.safe_load(path.read_text())
            if not isinstance(raw, dict):
                raise ModelsError("the file is not a YAML mapping")
            config = ModelConfig.model_validate({**raw, "source": path})
        except (yaml.YAMLError, ValidationError, ModelsError, OSError) as exc:
            catalog.problems.append(f"{path.name}: {_one_line(exc)}")
            continue
        if config.name in catalog.models:
            catalog.problems.append(f"{path.name}: model name {config.name!r} is already defined")
            continue
        catalog.models[config.name] = config


def _add_loose_files(catalog: ModelCatalog) -> None:
    """Serve GGUF files no config refers to under their file name, as LocalAI does."""
    referenced = {c.model_path(catalog.models_dir).resolve() for c in catalog.models.values()}
    for path in sorted(catalog.models_dir.iterdir()):
        if path.suffix in MODEL_SUFFIXES and path.is_file() and path.resolve() not in referenced:
            catalog.models.setdefault(path.name, _file_config(path.name, path))


def _add_cli_model(catalog: ModelCatalog, entry: str, data_dir: Path) -> None:
    if entry in catalog.models:
        return
    gguf = next((g for g in builtin.BUILTIN_GGUF if g.name == entry), None)
    if gguf is not None:
        if not gguf.available(data_dir):
            raise ModelsError(f"--model {entry}: this built-in model's files are not installed; "
                              "run ./scripts/install.sh")
        catalog.models[entry] = gguf.config(data_dir)
        return
    model = builtin.BY_NAME.get(entry)
    if model is not None:
        if not model.present():
            raise ModelsError(f"--model {entry}: this built-in model's files are not installed; "
                              "run `p2pai models fetch`")
        catalog.models[entry] = builtin_config(model)
        return
    path = Path(entry).expanduser()
    if not _is_model(path):
        path = catalog.models_dir / entry
    if not _is_model(path):
        known = ", ".join(catalog.models) or "none"
        raise ModelsError(f"--model {entry}: no such file or CTranslate2 model directory, and no configured model "
                          f"of that name (known: {known})")
    if path.is_dir():
        catalog.models[path.name] = ModelConfig(name=path.name, backend="ctranslate2",
                                                parameters=SamplingDefaults(model=str(path.resolve())))
        return
    name = path.stem if path.suffix in MODEL_SUFFIXES else path.name
    catalog.models[name] = _file_config(name, path.resolve())


def _is_model(path: Path) -> bool:
    """A model file, or a directory converted to CTranslate2 (it holds model.bin)."""
    return path.is_file() or (path.is_dir() and (path / "model.bin").is_file())


def _file_config(name: str, path: Path) -> ModelConfig:
    return ModelConfig(name=name, parameters=SamplingDefaults(model=str(path)))


def builtin_config(model: builtin.BuiltinModel) -> ModelConfig:
    directory = model.directory()
    fields = {**model.config, "name": model.name, "description": model.description,
              "parameters": {"model": str(directory / model.model_file)}, "builtin": True}
    if model.config["backend"] == "onnx":
        fields["tokenizer"] = str(directory / "tokenizer.json")
    return ModelConfig.model_validate(fields)


def prepare_builtin(config: ModelConfig) -> None:
    """Before a built-in model loads: its files checked (ONNX, CTranslate2), or assembled (GGUF)."""
    model = builtin.BY_NAME.get(config.name)
    if model is not None:
        builtin.verify(model)
    else:
        builtin.ensure_builtin_file(config)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
