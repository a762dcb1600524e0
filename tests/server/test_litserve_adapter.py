"""The LitServe contract: the installed LitServe has every hook the adapter relies on, and a
LitServe whose hooks moved or changed shape is refused with the hook's name."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from server import litserve_adapter as adapter

ROOT = Path(__file__).resolve().parents[2]


def test_the_pinned_litserve_fits_the_adapter() -> None:
    assert adapter.contract_problems() == []
    adapter.check_contract()


def test_every_hook_the_adapter_overrides_or_calls_is_in_the_contract() -> None:
    named = {(h.owner, h.name) for h in adapter.CONTRACT}
    for hook in ("_init_manager", "_perform_graceful_shutdown", "_start_server", "_register_internal_endpoints"):
        assert ("LitServer", hook) in named
    assert ("LitLoop", "run") in named and ("HttpToolsProtocol", "connection_made") in named


def _parts_without(owner: str, hook: str) -> dict[str, object]:
    parts = adapter._litserve_parts()
    real = parts[owner]
    stand_in = type(f"StandIn{owner}", (), {k: v for k, v in vars(real).items() if k != hook})
    return {**parts, owner: stand_in}


def test_a_litserve_missing_a_hook_is_refused_by_name() -> None:
    problems = adapter.contract_problems(_parts_without("LitServer", "_init_manager"))
    assert problems == ["LitServer._init_manager is missing"]


def test_a_hook_whose_signature_changed_is_refused() -> None:
    parts = adapter._litserve_parts()

    class Moved(parts["LitServer"]):  # type: ignore[misc,valid-type]
        def _start_server(self, port, sockets, num_uvicorn_servers):  # type: ignore[no-untyped-def]
            pass

    [problem] = adapter.contract_problems({**parts, "LitServer": Moved})
    assert problem.startswith("LitServer._start_server takes ('port', 'sockets', 'num_uvicorn_servers')")


def test_a_hook_that_stopped_setting_the_process_index_is_refused() -> None:
    parts = adapter._litserve_parts()

    class Server:
        def run(self, worker_id, sockets):  # type: ignore[no-untyped-def]
            return None

    [problem] = adapter.contract_problems({**parts, "_Server": Server})
    assert "no longer uses LITSERVE_WORKER_ID" in problem


def test_check_contract_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _parts_without("LitLoop", "run")
    monkeypatch.setattr(adapter, "_litserve_parts", lambda: broken)
    with pytest.raises(
        adapter.LitServeContractError, match=r"does not fit modeldock's adapter: LitLoop\.run is missing"
    ):
        adapter.check_contract()


def test_only_the_adapter_touches_litserve() -> None:
    out = subprocess.run(
        ["grep", "-rlE", r"^\s*(import|from) litserve|LITSERVE_", "server/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert [p for p in out if not re.search(r"__pycache__", p)] == ["server/litserve_adapter.py"]
