"""Responses as plain data, the API key check, and the one mapping from ServingError to a reply."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
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


def api_key_problem(expected: str, headers: Mapping[str, str]) -> ServingError | None:
    """401 unless the request carries the key (X-API-Key or Authorization: Bearer)."""
    if not expected:
        return None
    given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    if hmac.compare_digest(given.encode(), expected.encode()):
        return None
    return ServingError(401, "missing or wrong API key (send X-API-Key or Authorization: Bearer)")


def check_api_key(expected: str, headers: Mapping[str, str]) -> None:
    problem = api_key_problem(expected, headers)
    if problem is not None:
        raise problem
