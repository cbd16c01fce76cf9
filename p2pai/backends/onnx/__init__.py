"""ONNX models through ONNX Runtime: sentence embeddings and cross-encoder reranking, batched dynamically."""

from ..tasks import Task
from .settings import OnnxSettings, OnnxTask


def onnx_tasks(task: OnnxTask) -> tuple[Task, ...]:
    """An ONNX model does the one thing its config says it is for."""
    return (task,)


__all__ = ["OnnxSettings", "OnnxTask", "onnx_tasks"]
