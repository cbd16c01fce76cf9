"""Every failure leaves as OpenAI's error JSON with the status a client expects."""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import ValidationError

from ..backends.base import (
    InvalidRequestError,
    ModelCrashedError,
    ModelLoadError,
    ModelRestartingError,
    QueueFullError,
    WorkerLostError,
)
from ..protocol import anthropic
from ..protocol.errors import ErrorDetail, ErrorResponse
from ..routing.router import ERROR_CODE_HEADER, NoNodeAvailable, UnknownNodeError
from ..serving.manager import UnknownModelError
from ..serving.responses import ResponseNotFound
from .replies import json_reply, sse_event

log = logging.getLogger(__name__)

_ANTHROPIC_TYPES: dict[int, anthropic.ErrorType] = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "request_too_large", 421: "api_error", 429: "rate_limit_error",
    503: "overloaded_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code))

    def anthropic_body(self) -> anthropic.ErrorResponse:
        """Anthropic's shape: its error types follow from the status."""
        kind = _ANTHROPIC_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "api_error")
        return anthropic.ErrorResponse(error=anthropic.ErrorDetail(type=kind, message=self.message))

    def response(self, anthropic_shape: bool = False) -> web.Response:
        headers = {**self.headers, ERROR_CODE_HEADER: self.code} if self.code else self.headers
        body = self.anthropic_body() if anthropic_shape else self.body()
        return json_reply(body, status=self.status, headers=headers)


def from_validation(exc: ValidationError) -> APIError:
    """The first problem, named by its field path, as OpenAI reports one problem at a time."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return APIError(400, f"We could not parse the JSON body of your request: {first['msg']}", code="invalid_json")
    location = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {location}", param=location)
    message = first["msg"].removeprefix("Value error, ")
    return APIError(400, f"Invalid value for '{location}': {message}" if location else message, param=location or None)


def from_exception(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation(exc)
    if isinstance(exc, UnknownModelError):
        return APIError(404, f"The model `{exc.name}` does not exist", code="model_not_found", param="model")
    if isinstance(exc, ResponseNotFound):
        return APIError(404, str(exc), code="response_not_found", param="response_id")
    if isinstance(exc, UnknownNodeError):
        return APIError(404, str(exc), code="node_not_found", param="X-P2PAI-Node")
    if isinstance(exc, NoNodeAvailable):
        return APIError(
            503, str(exc), "server_overloaded", "no_node_available", headers={"Retry-After": str(exc.retry_after)}
        )
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), code=exc.code, param=exc.param)
    if isinstance(exc, QueueFullError):
        return APIError(
            503, str(exc), "server_overloaded", "overloaded", headers={"Retry-After": str(exc.retry_after)}
        )
    if isinstance(exc, ModelCrashedError):
        return APIError(500, str(exc), "server_error", "model_crashed")
    if isinstance(exc, ModelRestartingError):
        return APIError(
            503, str(exc), "server_overloaded", "model_restarting", headers={"Retry-After": str(exc.retry_after)}
        )
    if isinstance(exc, WorkerLostError):
        return APIError(502, f"{exc}; retry to run the model on the remaining workers", "server_error", "worker_lost")
    if isinstance(exc, ModelLoadError):
        return APIError(500, f"The model could not be loaded: {exc}", "server_error", "model_load_failed")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return APIError(413, "The request body is too large", code="request_too_large")
    if isinstance(exc, web.HTTPException):
        return APIError(exc.status, exc.reason, code=exc.reason.lower().replace(" ", "_"))
    log.exception("unexpected error", exc_info=exc)
    return APIError(500, f"Internal error: {type(exc).__name__}: {exc}", "server_error", "internal_error")


def error_event(exc: BaseException) -> bytes:
    """An error after a stream began: sent as its own SSE event so the client cannot mistake it for an ending."""
    return sse_event(from_exception(exc).body())
