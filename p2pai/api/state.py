"""What the handlers of one node share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from ..backends.tasks import Task
from ..models.fetch import RateLimit
from ..models.file_index import FileIndex
from ..models.installer import Installer
from ..protocol.openai import ModelCard
from ..routing.router import Router
from ..serving.context import Serving
from ..serving.limits import Limits
from ..serving.manager import ModelManager
from ..serving.responses import Responses
from ..store import Store
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
    backends: list[str] = field(default_factory=lambda: ["llama-cpp", "onnx", "ctranslate2"])
    ready: bool = False
    swarm: Swarm | None = None
    """None only for an app built without an overlay (in-process tests)."""
    router: Router | None = None
    token: str | None = field(default=None, repr=False)
    started: int = field(default_factory=lambda: int(time.time()))
    limits: Limits = field(default_factory=Limits)
    files: FileIndex | None = None
    """This node's model files that peers may pull (None: it shares none)."""
    installer: Installer | None = None
    """Model galleries and jobs (None: the node installs nothing)."""
    serve_rate: RateLimit = field(default_factory=lambda: RateLimit(None))
    """Bytes per second this node sends to peers pulling its models, all together."""
    store: Store | None = None
    """None only for an app built without a data dir (in-process tests): responses are then kept in memory."""
    traces: TraceBuffer = field(default_factory=TraceBuffer)
    serving: Serving = field(init=False)
    responses: Responses = field(init=False)

    def __post_init__(self) -> None:
        self.serving = Serving(self.manager, self.limits)
        self.responses = Responses(self.store, self.node_id)

    @staticmethod
    def of(request: web.Request) -> NodeState:
        return request.app[STATE]

    def model_cards(self, swarm_wide: bool = True) -> list[ModelCard]:
        """OpenAI model objects plus where each model is served (our extra fields)."""
        if swarm_wide and self.router is not None:
            return [
                self._card(m.name, m.backend, m.tasks, list(m.nodes), list(m.loaded_on), list(m.on_disk),
                           m.file.sha256 if m.file else None, m.file.size if m.file else None)
                for m in self.router.models()
            ]
        cards = []
        for name in self.manager.names():
            loaded = self.manager.stats(name).loaded
            config = self.manager.config(name)
            digest = self.files.digest(config.model_path(self.manager.catalog.models_dir)) if self.files else None
            cards.append(self._card(name, config.backend_name, self.manager.tasks(name), [self.node_id],
                                    [self.node_id] if loaded else [], [self.node_id] if digest else [],
                                    digest.sha256 if digest else None, digest.size if digest else None))
        return cards

    def _card(self, name: str, backend: str, tasks: tuple[Task, ...], nodes: list[str], loaded_on: list[str],
              on_disk: list[str], sha256: str | None, size: int | None) -> ModelCard:
        return ModelCard(id=name, created=self.started, owned_by="p2pai", backend=backend, loaded=bool(loaded_on),
                         tasks=list(tasks), embeddings="embeddings" in tasks, nodes=nodes, loaded_on=loaded_on,
                         on_disk=on_disk, pullable=bool(on_disk), sha256=sha256, size=size)


STATE = web.AppKey("p2pai_state", NodeState)
