"""GGUF models through llama.cpp (llama-cpp-python)."""

from .engine import LlamaEngine, LlamaSettings

__all__ = ["LlamaEngine", "LlamaSettings"]
