"""GGUF models through llama.cpp (llama-cpp-python), with continuous batching."""

from .engine import LlamaEngine
from .loading import LlamaSettings

__all__ = ["LlamaEngine", "LlamaSettings"]
