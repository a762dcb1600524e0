"""The rollout decision in-process: a fake source, the workers' evidence as plain dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.config import ModelConfig, RolloutConfig
from server.control.decisions import Decisions
from server.control.models import ModelControl
from server.ipc.messages import Command
from tests.fakes import FakeSource


def control(tmp_path: Path, **rollout: Any) -> tuple[ModelControl, FakeSource]:
    source = FakeSource()
    cfg = ModelConfig(name="m", rollout=RolloutConfig(**{"min_rows": 100, **rollout}))
    return ModelControl(cfg, source, Decisions(tmp_path / "decisions.json")), source  # type: ignore[arg-type]


def evidence(c: ModelControl, **counts: Any) -> list[dict[str, Any]]:
    """What the workers report on the current candidate (for the next poll)."""
    return [{"key": c.record.rollout_key, **counts}]


def start_trial(c: ModelControl, source: FakeSource) -> None:
    source.offer(1)
    c.poll()  # the first version: served at once
    source.offer(2, valid=[1, 2])
    c.poll()


def test_the_first_version_serves_at_once_and_a_new_one_is_only_a_candidate(tmp_path: Path) -> None:
    c, source = control(tmp_path)
    start_trial(c, source)
    r = c.record
    assert (r.default, r.candidate, r.phase) == (1, 2, "shadow")
    assert sorted(r.verdicts) == [1, 2]  # both loaded: the candidate answers its own URL only
    assert (
        c.poll(evidence(c, rows=40, agree=40)).default == 1 and "40/100 rows" in c.record.rollout
    )  # not enough evidence yet


def test_agreement_promotes_and_disagreement_rejects_with_the_reason(tmp_path: Path) -> None:
    c, source = control(tmp_path)
    start_trial(c, source)
    r = c.poll(evidence(c, rows=120, agree=119, batches=4, serving_s=1.0, candidate_s=1.1))
    assert (r.default, r.candidate) == (2, None) and "promoted" in r.rollout

    source.offer(3, valid=[1, 2, 3])
    c.poll()
    r = c.poll(evidence(c, rows=512, agree=56, batches=10, serving_s=1.0, candidate_s=1.0))
    assert r.default == 2 and r.candidate is None
    assert r.rollout == "version 3 rejected: shadow: agreement 0.11 < 0.90 over 512 rows"
    # Listed with the store's rejections (the metadata's properties.rejected), at once and after.
    assert r.rejected == {3: "rollout rejected it: shadow: agreement 0.11 < 0.90 over 512 rows"}
    c.poll()  # the policy skips a rejected version: no new trial for it
    assert (c.record.default, c.record.candidate) == (2, None)
    assert 3 in c.record.rejected


def test_a_slow_or_failing_candidate_is_rejected(tmp_path: Path) -> None:
    c, source = control(tmp_path)
    start_trial(c, source)
    assert (
        "9.0x the serving version's time"
        in c.poll(evidence(c, rows=200, agree=200, batches=5, serving_s=1.0, candidate_s=9.0)).rollout
    )
    c2, source2 = control(tmp_path / "b")
    start_trial(c2, source2)
    assert "failed on 3 of 5 batches" in c2.poll(evidence(c2, rows=10, agree=10, batches=5, errors=3)).rollout


def test_canary_follows_shadow_and_rolls_back_on_errors(tmp_path: Path) -> None:
    c, source = control(tmp_path, mode="canary", canary_requests=50)
    start_trial(c, source)
    assert (c.poll(evidence(c, rows=150, agree=150)).phase, c.record.default) == ("canary", 1)
    r = c.poll(evidence(c, rows=150, agree=150, canary=40, canary_failed=9))
    assert r.default == 1 and r.candidate is None and "canary: error rate 0.23" in r.rollout


def test_a_newer_version_supersedes_the_candidate(tmp_path: Path) -> None:
    c, source = control(tmp_path)
    start_trial(c, source)
    first_key = c.record.rollout_key
    source.offer(3, valid=[1, 2, 3])
    r = c.poll()
    assert (r.default, r.candidate) == (1, 3) and r.rollout_key != first_key
    assert 2 not in r.verdicts  # the superseded candidate is unloaded


def test_operator_promote_and_abort(tmp_path: Path) -> None:
    c, source = control(tmp_path)
    start_trial(c, source)
    r = c.poll(command=Command("m", "abort"))
    assert (r.default, r.candidate) == (1, None) and "aborted by the operator" in r.rollout
    source.offer(3, valid=[1, 2, 3])
    c.poll()
    assert c.poll(command=Command("m", "promote")).default == 3


def test_rollback_and_an_operator_pin_apply_at_once(tmp_path: Path) -> None:
    c, source = control(tmp_path)
    start_trial(c, source)
    source.offer(2, valid=[2])  # the serving version 1 was deleted: no trial for 2
    assert (c.poll().default, c.record.candidate) == (2, None)
    c.reconfigure(ModelConfig(name="m", policy="pinned:3", rollout=c.cfg.rollout))
    source.offer(3, valid=[2, 3])
    assert c.poll().default == 3  # the operator pinned it


def test_decisions_survive_a_restart(tmp_path: Path) -> None:
    c, source = control(tmp_path)
    start_trial(c, source)
    c.poll(evidence(c, rows=100, agree=100))  # 2 promoted
    source.offer(3, valid=[1, 2, 3])
    c.poll()
    c.poll(evidence(c, rows=100, agree=0))  # 3 rejected
    # A restarted server (or a replica sharing the file) reads the same decisions.
    again, source2 = control(tmp_path)
    source2.offer(3, valid=[1, 2, 3])
    r = again.poll()
    assert (r.default, r.candidate) == (2, None)  # not the rejected 3, not the older 1
    # A republished 3 (other files) is judged afresh.
    source2.offer(3, valid=[1, 2, 3], stamp=9)
    assert again.poll().candidate == 3


def test_a_candidate_a_worker_cannot_load_is_rejected_with_the_reason(tmp_path: Path) -> None:
    c, source = control(tmp_path)
    start_trial(c, source)
    reports = [{"key": c.record.rollout_key, "load_failed": "labels.json: missing"}]
    r = c.poll(reports)
    assert (r.default, r.candidate) == (1, None)
    assert r.rollout == "version 2 rejected: the candidate could not load: labels.json: missing"
