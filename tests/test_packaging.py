"""What `pip install .` puts in site-packages holds every module of the source tree.

The image runs the installed copy, not the checkout: a subpackage the install misses passes every
in-tree test and fails at import in the container.
"""

from __future__ import annotations

from pathlib import Path

import tomllib
from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def installed_packages() -> set[str]:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    if isinstance(packages, list):  # a hand-written list
        return set(packages)
    return set(find_packages(str(ROOT), include=packages["find"]["include"]))


def source_packages() -> set[str]:
    found = set()
    for top in ("server", "model_store"):
        for path in (ROOT / top).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found.add(".".join(path.parent.relative_to(ROOT).parts))
    return found


def test_every_folder_with_modules_is_installed() -> None:
    missing = source_packages() - installed_packages()
    assert not missing, f"not installed by pip install . (no __init__.py or not included): {sorted(missing)}"


def test_only_our_packages_are_installed() -> None:
    assert {name.split(".")[0] for name in installed_packages()} == {"server", "model_store"}
