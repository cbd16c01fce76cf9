"""Build the list of models a node serves from its models dir, flags and defaults."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from .builtin import BUILTINS
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
    """YAML configs and loose GGUF files in `models_dir`, plus `--model` entries.

    With none of these (models installed through the API aside), the built-in models whose files
    are installed are served too, the first (SmolLM2 Instruct) as the default, unless
    `default_model` is off (a node that only routes).
    """
    catalog = ModelCatalog(models_dir=models_dir)
    if models_dir.is_dir():
        _add_yaml_configs(catalog)
        _add_loose_files(catalog)
    for entry in cli_models:
        _add_cli_model(catalog, entry)
    if default_model and all(config.origin is not None for config in catalog.models.values()):
        for builtin in BUILTINS:
            if builtin.name not in catalog.models and builtin.available(data_dir):
                catalog.models[builtin.name] = builtin.config(data_dir)
        catalog.default = next((b.name for b in BUILTINS if b.name in catalog.models), None)
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


def _add_cli_model(catalog: ModelCatalog, entry: str) -> None:
    if entry in catalog.models:
        return
    path = Path(entry).expanduser()
    if not path.is_file():
        path = catalog.models_dir / entry
    if not path.is_file():
        known = ", ".join(catalog.models) or "none"
        raise ModelsError(f"--model {entry}: no such file, and no configured model of that name (known: {known})")
    name = path.stem if path.suffix in MODEL_SUFFIXES else path.name
    catalog.models[name] = _file_config(name, path.resolve())


def _file_config(name: str, path: Path) -> ModelConfig:
    return ModelConfig(name=name, parameters=SamplingDefaults(model=str(path)))


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
