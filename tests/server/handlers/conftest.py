"""A store with the trained digits demo (two versions with labels.json), made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_store.demo import run_demo

ROOT = Path(__file__).resolve().parents[3]
DIGIT_7 = ROOT / "docs" / "digit-7.png"  # the image the README's curl sends


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits") / "models"
    assert run_demo(root) == [1, 2]
    return root
