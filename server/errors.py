"""The one error type of the request path: it carries the HTTP status a client gets.

Raised anywhere between the edge and the worker's answer; `http.replies.error_reply` is the one
place that turns it into a response (MLServer's `MLServerError(status_code)`).
"""

from __future__ import annotations

from collections.abc import Mapping


class ServingError(Exception):
    """A request the server refuses or cannot answer; the message names the problem."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def bad_request(message: str) -> ServingError:
    return ServingError(400, message)


def not_found(message: str) -> ServingError:
    return ServingError(404, message)


def unavailable(message: str, retry_after_s: int | None = None) -> ServingError:
    headers = {"retry-after": str(retry_after_s)} if retry_after_s is not None else None
    return ServingError(503, message, headers)


def refused(status: int, error: str, retry_after_s: int = 0) -> ServingError:
    """A worker's non-200 answer as the error the client gets (Retry-After when it said when)."""
    return unavailable(error, retry_after_s) if retry_after_s else ServingError(status, error)
