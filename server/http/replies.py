"""Responses as plain data, and the one mapping from ServingError to a reply."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.responses import Response

from ..errors import ServingError
from ..protocol import error_body

JSON = {"content-type": "application/json"}


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    version: str = ""


def error_reply(error: ServingError) -> Reply:
    """The only place an error becomes a response: `{"error": message}` with its status."""
    return Reply(error.status, error_body(error.message), {**JSON, **error.headers})


def to_response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, headers=reply.headers)
