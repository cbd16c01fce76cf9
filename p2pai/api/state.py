"""What the handlers of one node share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from ..backends.tasks import Task
from ..protocol.openai import ModelCard
from ..routing.router import Router
from ..serving.context import Serving
from ..serving.limits import Limits
from ..serving.manager import ModelManager
from ..swarm.swarm import Swarm
from .traces import TraceBuffer


@dataclass
class NodeState:
    manager: ModelManager
    node_id: str
    version: str
    api_keys: frozenset[str] = field(default=frozenset(), repr=False)
    """Empty: the API is open. When set, admin keys are accepted too."""
    admin_keys: frozenset[str] = field(default=frozenset(), repr=False)
    """Keys that may also read the swarm token."""
    backends: list[str] = field(default_factory=lambda: ["llama-cpp", "onnx"])
    ready: bool = False
    swarm: Swarm | None = None
    """None only for an app built without an overlay (in-process tests)."""
    router: Router | None = None
    token: str | None = field(default=None, repr=False)
    started: int = field(default_factory=lambda: int(time.time()))
    limits: Limits = field(default_factory=Limits)
    traces: TraceBuffer = field(default_factory=TraceBuffer)
    serving: Serving = field(init=False)

    def __post_init__(self) -> None:
        self.serving = Serving(self.manager, self.limits)

    @staticmethod
    def of(request: web.Request) -> NodeState:
        return request.app[STATE]

    def model_cards(self, swarm_wide: bool = True) -> list[ModelCard]:
        """OpenAI model objects plus where each model is served (our extra fields)."""
        if swarm_wide and self.router is not None:
            return [self._card(m.name, m.backend, m.tasks, list(m.nodes), list(m.loaded_on))
                    for m in self.router.models()]
        cards = []
        for name in self.manager.names():
            loaded = self.manager.stats(name).loaded
            cards.append(self._card(name, self.manager.config(name).backend_name, self.manager.tasks(name),
                                    [self.node_id], [self.node_id] if loaded else []))
        return cards

    def _card(self, name: str, backend: str, tasks: tuple[Task, ...], nodes: list[str], loaded_on: list[str]
              ) -> ModelCard:
        return ModelCard(id=name, created=self.started, owned_by="p2pai", backend=backend, loaded=bool(loaded_on),
                         tasks=list(tasks), embeddings="embeddings" in tasks, nodes=nodes, loaded_on=loaded_on)


STATE = web.AppKey("p2pai_state", NodeState)
