"""What a node's peer endpoint answers a peer that pulls one of its models (api/peer_files.py)."""

from __future__ import annotations

from pydantic import BaseModel

from ..models.config import ModelConfig
from ..swarm.payload import FileOffer


class SharedModel(BaseModel):
    """A model's config as its node serves it (the file named without its directory), and its file."""

    name: str
    config: ModelConfig
    file: FileOffer
