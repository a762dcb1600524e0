"""The API key and admin key checks, over a request's headers (REST) or metadata (gRPC)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from ..errors import ServingError, not_found


def _given(headers: Mapping[str, str], header: str) -> str:
    return headers.get(header) or headers.get("authorization", "").removeprefix("Bearer ")


def api_key_problem(expected: str, headers: Mapping[str, str]) -> ServingError | None:
    """401 unless the request carries the key (X-API-Key or Authorization: Bearer)."""
    if not expected:
        return None
    if hmac.compare_digest(_given(headers, "x-api-key").encode(), expected.encode()):
        return None
    return ServingError(401, "missing or wrong API key (send X-API-Key or Authorization: Bearer)")


def check_api_key(expected: str, headers: Mapping[str, str]) -> None:
    problem = api_key_problem(expected, headers)
    if problem is not None:
        raise problem


def check_admin_key(expected: str, headers: Mapping[str, str]) -> None:
    if not expected:  # registered only with a key; kept as a guard against misuse
        raise not_found("admin routes are off (no admin_api_key)")
    if not hmac.compare_digest(_given(headers, "x-admin-key").encode(), expected.encode()):
        raise ServingError(401, "missing or wrong admin key (send X-Admin-Key or Authorization: Bearer)")
