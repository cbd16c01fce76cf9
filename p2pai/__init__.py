"""p2pai: a peer-to-peer federated inference node with an OpenAI-compatible API."""

__version__ = "0.1.0"
