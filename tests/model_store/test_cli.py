"""The `modeldock` store commands as a user runs them: demo, ls, verify, publish, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def modeldock(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from server.cli import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("demo")
    r = modeldock("demo", "--store", "models", "--epochs", "4", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert "published digits versions [1, 2]" in r.stdout
    return cwd / "models"


def test_demo_then_ls_shows_two_verified_versions(demo_store: Path) -> None:
    r = modeldock("ls", "--store", str(demo_store), cwd=demo_store.parent)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("digits")]
    assert len(lines) == 2 and all("verified" in line and "val_acc=" in line for line in lines)


def test_verify_and_publish_from_a_checkpoint(demo_store: Path) -> None:
    r = modeldock("verify", "digits:2", "--store", str(demo_store), cwd=demo_store.parent)
    assert r.returncode == 0 and "digits:2 ok" in r.stdout
    best = demo_store / ".checkpoints" / "digits" / "best.pt"
    r = modeldock(
        "publish",
        str(best),
        "--store",
        str(demo_store),
        "--name",
        "digits2",
        "--factory",
        "model_store.demo:ConvNet",
        "--input-shape",
        "2,1,8,8",
        "--formats",
        "onnx,state_dict",
        cwd=demo_store.parent,
    )
    assert r.returncode == 0, r.stderr
    assert "published digits2:1" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "digits:abc"], "not a positive integer"),
        (["verify", "nosuch"], "has no versions"),
        (["ls", "--store", "afile"], "is a file"),
        (
            [
                "publish",
                "x.pt",
                "--name",
                "d",
                "--factory",
                "model_store.demo:ConvNet",
                "--input-shape",
                "1,1,8,8",
                "--formats",
                "onnx,tflite",
            ],
            "unknown format",
        ),
        (
            [
                "publish",
                "x.pt",
                "--name",
                "d",
                "--factory",
                "model_store.demo:Nope",
                "--input-shape",
                "1,1,8,8",
            ],
            "cannot be imported",
        ),
    ],
)
def test_bad_input_is_one_line_and_nonzero(demo_store: Path, args: list[str], message: str) -> None:
    (demo_store.parent / "afile").write_text("x")
    if "--store" not in args:
        args = [*args, "--store", str(demo_store)]
    r = modeldock(*args, cwd=demo_store.parent)
    assert r.returncode != 0
    assert r.stderr.startswith("modeldock: error:") and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_demo_versions_carry_their_labels(demo_store: Path) -> None:
    """The demo's handler reads labels.json: every version the demo publishes has it, verified."""
    import json

    for version in (1, 2):
        folder = demo_store / "digits" / str(version)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["schema_version"] == 2
        assert [f["path"] for f in manifest["data_files"]] == ["labels.json"]
        assert json.loads((folder / "labels.json").read_text()) == [str(d) for d in range(10)]
