"""What a model can be asked to do: the task of each API family, as models announce them.

A backend declares the tasks a configured model serves (backends/llama, backends/onnx...);
the manager, /v1/models and the router match requests on (model, task), never on a backend
name. The names are lowercase and shared by every backend and every node of a swarm.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from .base import InvalidRequestError

Task = Literal["chat", "completion", "embeddings", "rerank", "transcription", "translation"]
TASKS: tuple[Task, ...] = get_args(Task)


def task_not_served(model: str, task: Task, served: Iterable[Task]) -> InvalidRequestError:
    """The model exists but does not do this; the code names the task (embeddings_not_supported...)."""
    tasks = ", ".join(served) or "nothing"
    return InvalidRequestError(f"the model {model!r} does not serve {task} (it serves: {tasks})",
                               code=f"{task}_not_supported", param="model")
