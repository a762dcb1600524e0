"""The alerting rules: one source (the PrometheusRule), a generated plain file, promtool's verdicts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ops.harness import ROOT

MONITORING = ROOT / "k8s/monitoring"
ALERTS = {
    "ModeldockDown",
    "ModeldockHighErrorRatio",
    "ModeldockHighLatencyP99",
    "ModeldockVersionRejected",
    "ModeldockModelNotReady",
    "ModeldockQueueFull",
    "ModeldockRolloutRejected",
    "ModeldockRolloutStuck",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return path


def test_plain_rules_file_is_generated_from_the_prometheusrule() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/prometheus-rules.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    plain = yaml.safe_load((MONITORING / "modeldock-rules.yml").read_text())
    assert plain == rule["spec"]
    rules = [r for g in plain["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert r["labels"]["severity"] in {"critical", "warning"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_rules_are_valid_and_fire_exactly_when_their_unit_tests_say() -> None:
    tool = promtool()
    check = subprocess.run(
        [tool, "check", "rules", str(MONITORING / "modeldock-rules.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = Path(__file__).parent / "data/rules.test.yml"
    covered = {t["alertname"] for case in yaml.safe_load(tests.read_text())["tests"] for t in case["alert_rule_test"]}
    assert covered == ALERTS, f"alerts without a promtool test: {ALERTS - covered}"
    done = subprocess.run([tool, "test", "rules", tests.name], cwd=tests.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
