"""OpenAI's error shape: every failure of every API family leaves in it."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    """invalid_request_error, authentication_error, permission_error, server_overloaded, server_error"""
    param: str | None
    """The request field (or header) at fault, when one is."""
    code: str | None
    """A stable machine-readable reason: model_not_found, invalid_grammar, token_out_of_range..."""


class ErrorResponse(BaseModel):
    error: ErrorDetail
