"""The node's own status routes: /healthz, /readyz and LocalAI's /system."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from ..backends.llama.devices import Device


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "starting"]
    """`starting` (with status 503) until preloading is done and there is a model here or a swarm to ask."""


class LoadedModel(BaseModel):
    id: str
    in_flight: int
    queued: int
    slots: int
    decode_tps: float | None
    crashes: int
    """Times the model's process died since the node started."""
    last_crash: str | None
    pid: int | None
    """The model's process, while it runs."""
    providers: list[str]
    """ONNX Runtime's execution providers in use (CUDAExecutionProvider, CPUExecutionProvider...); empty
    for llama.cpp models."""


class SystemInfo(BaseModel):
    backends: list[str]
    loaded_models: list[LoadedModel]
    version: str
    node_id: str
    devices: list[Device]
    """What llama.cpp can compute on here (the CPU, and GPUs with free and total memory)."""
