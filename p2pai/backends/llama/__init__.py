"""GGUF models through llama.cpp (llama-cpp-python), with continuous batching."""

from ..tasks import Task
from .host import LlamaHost
from .loading import LlamaSettings


def llama_tasks(embeddings: bool) -> tuple[Task, ...]:
    """A GGUF model generates text; it also embeds when its config turns embeddings on."""
    return ("chat", "completion", "embeddings") if embeddings else ("chat", "completion")


__all__ = ["LlamaHost", "LlamaSettings", "llama_tasks"]
