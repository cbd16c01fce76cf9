"""Inference backends. They know nothing of peers, HTTP or OpenAI's wire format."""
