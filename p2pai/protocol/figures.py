"""GET /p2p/figures on the peer endpoint: a node's current figures for one model.

An entry node of a large swarm asks a few candidates for them before sending a request
(routing/probe.py): the announced figures are minutes old there. Bounded like the announced
ones: nothing from the network is trusted.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..swarm.payload import Count, Rate, Seconds


class ModelFigures(BaseModel):
    """What placement weighs of one model on the node that answers, as of now."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=256)
    loaded: bool
    loading: bool
    fits: bool
    """It can be loaded there now (after unloading idle models)."""
    load_s: Seconds | None
    slots: Count
    in_flight: Count
    queued: Count
    decode_tps: Rate | None
    answer_tokens: Rate | None
