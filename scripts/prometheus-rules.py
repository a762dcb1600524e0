"""Write k8s/monitoring/modeldock-rules.yml (a plain Prometheus rules file) from the PrometheusRule
in k8s/monitoring/prometheusrule.yaml, the one source of both. Run it after editing the rules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "k8s/monitoring/prometheusrule.yaml"
TARGET = ROOT / "k8s/monitoring/modeldock-rules.yml"
HEADER = (
    "# Generated from prometheusrule.yaml by `python scripts/prometheus-rules.py`: edit that file.\n"
    "# A plain Prometheus rules file: list it under `rule_files:` in prometheus.yml.\n"
)


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # multi-line PromQL stays readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def render() -> str:
    spec: dict[str, Any] = yaml.safe_load(SOURCE.read_text())["spec"]
    dumper = type("Dumper", (yaml.SafeDumper,), {})
    dumper.add_representer(str, _block_strings)
    return HEADER + yaml.dump(spec, Dumper=dumper, sort_keys=False, width=1000)


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        sys.exit(0 if TARGET.read_text() == render() else f"{TARGET} is out of date: run {sys.argv[0]}")
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(ROOT)}")
