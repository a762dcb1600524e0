"""onnxruntime 1.29+ sends telemetry to Microsoft from Linux unless ORT_DISABLE_TELEMETRY is set
before it starts: importing model_store sets it, unless the user already chose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import model_store, onnxruntime, os; print(os.environ.get('ORT_DISABLE_TELEMETRY'))"


@pytest.mark.parametrize(("given", "seen"), [(None, "1"), ("0", "0")])
def test_importing_the_store_turns_onnxruntime_telemetry_off_unless_chosen(given: str | None, seen: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    if given is not None:
        env["ORT_DISABLE_TELEMETRY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == seen
