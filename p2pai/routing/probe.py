"""Asking candidates for their current figures before sending a request (large swarms).

Beyond `SMALL_SWARM` nodes the gossip announces each node's figures at most every
N x size / budget seconds, minutes at a thousand nodes, and a router that trusts them
sends every entry's requests to the nodes that looked idle then (bench/simulate_swarm.py:
188 x an oracle's time to first token). So the router asks a round of candidates
(placement.to_probe) for their figures over the peer data plane, one small signed GET each,
all at once. A round ends at the first answer that can start the request at once
(placement.settled), when every candidate answered, or at the timeout: a slow or dead
candidate costs at most that, and keeps its announced figures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from urllib.parse import quote

from pydantic import ValidationError

from ..metrics import PROBES
from ..overlay.gossip import SMALL_SWARM
from ..protocol.figures import ModelFigures
from ..serving.manager import FREE_MEMORY_MAX_AGE_S, ModelManager
from .answer import AnswerBroken
from .forward import Forwarder, PeerUnavailable

log = logging.getLogger(__name__)

FIGURES_PATH = "/p2p/figures"
PROBE_ABOVE = SMALL_SWARM
"""Nodes in the swarm above which the router probes (up to it, figures are at most a second old)."""
PROBE_TIMEOUT = 0.25
"""Seconds a round waits for answers: a LAN round trip takes milliseconds."""
MAX_FIGURES_BYTES = 4096


def own_figures(manager: ModelManager, model: str) -> ModelFigures:
    """This node's current figures for ``model``: what it answers a probe, and what it places itself by
    (on every request: the free memory they weigh may be a second old)."""
    stats = manager.stats(model)
    loading = manager.loading(model)
    return ModelFigures(name=model, loaded=stats.loaded, loading=loading,
                        fits=stats.loaded or loading or manager.plan(model, FREE_MEMORY_MAX_AGE_S).fits,
                        load_s=manager.load_seconds(model), slots=stats.slots, in_flight=stats.in_flight,
                        queued=stats.queued, decode_tps=stats.decode_tps, answer_tokens=stats.answer_tokens)


Asked = tuple[str, tuple[str, ...]]
"""A peer and its endpoint URLs."""


class Prober:
    def __init__(self, forwarder: Forwarder, timeout: float = PROBE_TIMEOUT) -> None:
        self._forwarder = forwarder
        self.timeout = timeout

    async def round(self, model: str, asked: list[Asked], enough: Callable[[str, ModelFigures], bool]
                    ) -> dict[str, ModelFigures]:
        """The figures of the peers in ``asked`` that answered, by peer; returns early once one
        answer is ``enough``."""
        tasks = {asyncio.ensure_future(self._ask(peer, urls, model)): peer for peer, urls in asked}
        answers: dict[str, ModelFigures] = {}
        deadline = asyncio.get_running_loop().time() + self.timeout
        pending = set(tasks)
        try:
            while pending:
                left = deadline - asyncio.get_running_loop().time()
                done, pending = await asyncio.wait(pending, timeout=max(0.0, left),
                                                   return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break
                for task in done:
                    figures = task.result()
                    if figures is not None:
                        answers[tasks[task]] = figures
                if any(enough(tasks[task], answers[tasks[task]]) for task in done if tasks[task] in answers):
                    break
        finally:
            for task in pending:
                task.cancel()
        return answers

    async def _ask(self, peer: str, urls: tuple[str, ...], model: str) -> ModelFigures | None:
        """Its figures, or None (it cannot be reached, refused, does not serve the model, answered garbage)."""
        outcome = "failed"
        try:
            answer = await self._forwarder.send(peer, list(urls), "GET", f"{FIGURES_PATH}?model={quote(model)}",
                                                b"", None)
            try:
                if answer.status != 200:
                    log.debug("%s answered a probe with %d", peer, answer.status)
                    return None
                figures = ModelFigures.model_validate_json(await answer.read_at_most(MAX_FIGURES_BYTES))
                if figures.name != model:
                    return None
                outcome = "answered"
                return figures
            finally:
                answer.release()
        except (PeerUnavailable, AnswerBroken, ValidationError) as exc:
            log.debug("probe of %s failed: %s", peer, exc)
            return None
        except asyncio.CancelledError:
            outcome = "abandoned"  # the round timed out, or another answer was enough
            raise
        finally:
            PROBES.labels(outcome).inc()
