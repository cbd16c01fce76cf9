"""Which models a node serves: YAML configs, loose GGUF files and the built-in default."""

from .catalog import ModelCatalog, ModelsError, build_catalog
from .config import ModelConfig, SamplingDefaults, TemplateConfig

__all__ = ["ModelCatalog", "ModelConfig", "ModelsError", "SamplingDefaults", "TemplateConfig", "build_catalog"]
