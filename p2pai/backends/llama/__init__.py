"""GGUF models through llama.cpp (llama-cpp-python), with continuous batching."""

from .host import LlamaHost
from .loading import LlamaSettings

__all__ = ["LlamaHost", "LlamaSettings"]
