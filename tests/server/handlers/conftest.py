"""The digits demo's shipped image, for the handler tests (the store is tests/server/conftest.py's)."""

from __future__ import annotations

from tests.server.conftest import DIGIT_7

__all__ = ["DIGIT_7"]
