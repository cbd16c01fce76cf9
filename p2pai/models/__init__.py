"""Which models a node serves: YAML configs, loose GGUF files and the built-in default."""

from .config import ModelConfig, SamplingDefaults, TemplateConfig
from .catalog import ModelCatalog, ModelsError, build_catalog

__all__ = ["ModelCatalog", "ModelConfig", "ModelsError", "SamplingDefaults", "TemplateConfig", "build_catalog"]
