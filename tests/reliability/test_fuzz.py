"""Property-based fuzzing of the /v2 API from the Open Inference Protocol's own OpenAPI spec
(schemathesis), bounded for CI: no 5xx, no crash, every 4xx body is {"error": ...}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.server.conftest import ServerProcess

SPEC = Path(__file__).resolve().parents[1] / "data" / "open_inference_rest.yaml"
SCHEMA = schemathesis.openapi.from_path(str(SPEC))
OPERATIONS = [op.ok() for op in SCHEMA.get_all_operations()]
EXAMPLES = 60


def check(response: requests.Response, label: str, tally: dict[int, int]) -> None:
    tally[response.status_code] = tally.get(response.status_code, 0) + 1
    assert response.status_code < 500 or response.status_code == 503, (
        f"{label}: {response.status_code} {response.text[:300]}"
    )
    if response.status_code >= 400:
        body: Any = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), f"{label}: {response.text[:300]}"


@pytest.mark.parametrize("operation", OPERATIONS, ids=[f"{op.method.upper()} {op.path}" for op in OPERATIONS])
@pytest.mark.parametrize("model", ["random", "tiny"])
def test_no_input_makes_the_server_fail(tiny_server: ServerProcess, operation: Any, model: str) -> None:
    tally: dict[int, int] = {}
    session = requests.Session()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        if model == "tiny" and case.path_parameters and "MODEL_NAME" in case.path_parameters:
            case.path_parameters["MODEL_NAME"] = "tiny"  # reach the decoder, not just the 404
        response = case.call(base_url=tiny_server.url, session=session, timeout=30)
        check(response, f"{case.method} {case.formatted_path}", tally)

    run()
    assert sum(tally.values()) >= 1
    # The live server is still fine afterwards.
    assert tiny_server.get("/v2/health/ready").status_code == 200
    # 503 only for overload/not-ready: never seen here.
    assert 503 not in tally or operation.path.endswith("/ready")
