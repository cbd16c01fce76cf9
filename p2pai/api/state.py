"""What the handlers of one node share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..serving.context import Serving
from ..serving.manager import ModelManager
from ..swarm.swarm import Swarm


@dataclass
class NodeState:
    manager: ModelManager
    node_id: str
    version: str
    api_keys: frozenset[str] = frozenset()
    backends: list[str] = field(default_factory=lambda: ["llama-cpp"])
    ready: bool = False
    swarm: Swarm | None = None
    """None only for an app built without an overlay (in-process tests)."""
    token: str | None = None
    started: int = field(default_factory=lambda: int(time.time()))
    serving: Serving = field(init=False)

    def __post_init__(self) -> None:
        self.serving = Serving(self.manager)

    @staticmethod
    def of(request: web.Request) -> "NodeState":
        return request.app[STATE]

    def model_card(self, name: str) -> dict[str, Any]:
        config = self.manager.config(name)
        stats = self.manager.stats(name)
        return {
            "id": name,
            "object": "model",
            "created": self.started,
            "owned_by": "p2pai",
            "backend": "llama-cpp",
            "loaded": stats.loaded,
            "embeddings": config.embeddings,
            "description": config.description,
            "nodes": [self.node_id],
        }


STATE = web.AppKey("p2pai_state", NodeState)
