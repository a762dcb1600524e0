"""`import_mar` on archives made by the real torch-model-archiver: what lands, and what is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from model_store import ModelStore, StoreError
from model_store.manifest import Manifest
from model_store.mar import ArchiveError
from model_store.mar_import import import_mar
from model_store.runtimes import load_runtime
from model_store.verify import load_examples

from .conftest import LABELS, Archives, make_mar

MODEL_CLASS = "tests.torchserve.models:TinyNet"
ROOT = Path(__file__).resolve().parents[2]


def store_files(store: ModelStore) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")) if store.root.exists() else []


def outputs(store: ModelStore, name: str, version: int, x: np.ndarray) -> np.ndarray:
    folder = store.path(name, version)
    manifest = Manifest.load(folder)
    art = manifest.artifacts[0]
    kw = {"factory": manifest.model_factory} if art.format == "state_dict" else {}
    runtime = load_runtime(art.format, folder / art.path, manifest.signature, **kw)  # type: ignore[arg-type]
    return next(iter(runtime.predict({manifest.signature.inputs[0].name: x}).values()))


def test_torchscript_archive_lands_as_is_with_its_own_golden_outputs(archives: Archives, store: ModelStore) -> None:
    report = import_mar(store, archives.torchscript, example_input=archives.example)
    assert (report.name, report.version, report.formats, report.kind) == ("tinyts", 1, ("torchscript",), "torchscript")
    assert store.verify("tinyts", 1).ok
    folder = store.path("tinyts", 1)
    with zipfile.ZipFile(archives.torchscript) as zf:  # the archive's bytes, not a re-export
        assert (folder / "model.torchscript.pt").read_bytes() == zf.read("tiny_ts.pt")
    inputs, golden = load_examples(folder / Manifest.load(folder).examples.path)
    x = np.load(archives.example)
    assert np.array_equal(next(iter(inputs.values())), x)
    expected = archives.tiny(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(next(iter(golden.values())), expected, atol=1e-6)
    assert "torchserve" in Manifest.load(folder).tags


def test_eager_archive_needs_the_users_copy_of_its_class(archives: Archives, store: ModelStore) -> None:
    with pytest.raises(StoreError, match=r"defines \['TinyNet'\].*--model-class yourpkg.module:TinyNet"):
        import_mar(store, archives.eager, example_input=archives.example)
    with pytest.raises(StoreError, match=r"defines .* not that class"):
        import_mar(store, archives.eager, example_input=archives.example, model_class="torch.nn:Linear")
    assert store_files(store) == []
    report = import_mar(store, archives.eager, example_input=archives.example, model_class=MODEL_CLASS)
    assert report.formats == ("state_dict",) and report.todo == []
    manifest = Manifest.load(store.path("tiny", 1))
    assert manifest.model_factory is not None and manifest.model_factory.callable == MODEL_CLASS
    x = np.load(archives.example)
    assert np.allclose(outputs(store, "tiny", 1, x), archives.tiny(torch.from_numpy(x)).detach().numpy(), atol=1e-6)


def test_image_classifier_archive_gets_its_handler_labels_and_a_derived_example(
    archives: Archives, store: ModelStore
) -> None:
    report = import_mar(store, archives.image)  # no --example-input: image handlers take [n, 3, 224, 224]
    assert report.handler == "server.handlers.torchserve:ImageClassifier"
    assert report.data_files == ["index_to_name.json"]
    manifest = Manifest.load(store.path("vision", 1))
    assert [d.path for d in manifest.data_files] == ["index_to_name.json"]
    assert json.loads((store.path("vision", 1) / "index_to_name.json").read_text()) == LABELS
    assert tuple(manifest.signature.inputs[0].shape[1:]) == (3, 224, 224)
    assert "handler: server.handlers.torchserve:ImageClassifier" in report.serve_yaml()


def test_without_an_example_the_import_stops_and_says_what_to_give(archives: Archives, store: ModelStore) -> None:
    with pytest.raises(StoreError, match=r"tinyts.mar: the example inputs cannot be derived.*--example-input FILE"):
        import_mar(store, archives.torchscript)
    bad = archives.example.with_name("x.txt")
    bad.write_text("1 2 3")
    with pytest.raises(StoreError, match=r"expected a \.npy or \.pt"):
        import_mar(store, archives.torchscript, example_input=bad)
    assert store_files(store) == []


def _rezip(src: Path, dst: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of the archive with members replaced, added, or (None) removed."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename in change:
                continue
            zout.writestr(info, zin.read(info))
        for name, data in change.items():
            if data is not None:
                zout.writestr(name, data)
    return dst


def _manifest(src: Path) -> dict:  # type: ignore[type-arg]
    with zipfile.ZipFile(src) as zf:
        return json.loads(zf.read("MAR-INF/MANIFEST.json"))  # type: ignore[no-any-return]


def test_bad_archives_are_refused_naming_the_problem_and_the_store_is_untouched(
    archives: Archives, store: ModelStore, tmp_path: Path
) -> None:
    src = archives.torchscript
    no_serialized = _manifest(src)
    del no_serialized["model"]["serializedFile"]
    text = tmp_path / "notes.mar"
    text.write_text("not a zip")
    cases: list[tuple[Path, str]] = [
        (text, "not a zip archive, so not a .mar"),
        (_rezip(src, tmp_path / "a.mar", {"MAR-INF/MANIFEST.json": None}), "no MAR-INF/MANIFEST.json"),
        (
            _rezip(src, tmp_path / "b.mar", {"MAR-INF/MANIFEST.json": json.dumps(no_serialized).encode()}),
            "has no model.serializedFile",
        ),
        (_rezip(src, tmp_path / "c.mar", {"../evil.py": b"import os"}), "member '../evil.py' escapes the archive"),
        (_rezip(src, tmp_path / "d.mar", {"zeros.bin": bytes(8 << 20)}), "member 'zeros.bin' inflates .*zip bomb"),
        (
            _rezip(src, tmp_path / "e.mar", {"tiny_ts.pt": b"PK\x03\x04 not torchscript"}),
            "neither TorchScript nor ONNX",
        ),
    ]
    for path, message in cases:
        with pytest.raises(ArchiveError, match=message):
            import_mar(store, path, example_input=archives.example)
    # A serialized file that is TorchScript by its members but does not load.
    with zipfile.ZipFile(src) as zf:
        ts = tmp_path / "ts.pt"
        ts.write_bytes(zf.read("tiny_ts.pt"))
    broken_ts = _rezip(
        ts, tmp_path / "ts_broken.pt", {n: b"garbage" for n in zipfile.ZipFile(ts).namelist() if n.endswith("data.pkl")}
    )
    broken = _rezip(src, tmp_path / "f.mar", {"tiny_ts.pt": broken_ts.read_bytes()})
    with pytest.raises(StoreError, match=r"f\.mar: torchscript: tiny_ts\.pt does not run on the example inputs"):
        import_mar(store, broken, example_input=archives.example)
    eager_bad = _rezip(archives.eager, tmp_path / "g.mar", {"tiny.pt": b"garbage"})
    with pytest.raises(StoreError, match=r"g\.mar: .*tiny\.pt"):
        import_mar(store, eager_bad, example_input=archives.example, model_class=MODEL_CLASS)
    assert store_files(store) == [], "a failed import leaves nothing in the store"


def test_cli_imports_and_prints_the_config_to_serve_it(archives: Archives, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "server", "import-mar", str(archives.image), "--store", str(tmp_path / "models")]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "imported" in done.stdout and "vision:1" in done.stdout
    assert "handler: server.handlers.torchserve:ImageClassifier" in done.stdout
    bad = subprocess.run(
        [*args[:4], str(tmp_path / "missing.mar"), *args[5:]], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 1 and "missing.mar: no such file" in bad.stderr


def test_onnx_archive_derives_its_example_from_the_declared_shapes(
    archives: Archives, store: ModelStore, tmp_path: Path
) -> None:
    onnx_file = tmp_path / "tiny.onnx"
    torch.onnx.export(
        archives.tiny, (torch.rand(2, 4),), str(onnx_file), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    mar = make_mar(tmp_path, "tinyonnx", onnx_file, "base_handler")
    report = import_mar(store, mar)  # [batch, 4]: 2 rows of 4
    assert report.formats == ("onnx",) and store.verify("tinyonnx", 1).ok
    manifest = Manifest.load(store.path("tinyonnx", 1))
    assert [s.name for s in manifest.signature.inputs] == ["x"] and [s.name for s in manifest.signature.outputs] == [
        "y"
    ]
    x = np.random.default_rng(2).random((5, 4), dtype=np.float32)
    assert np.allclose(outputs(store, "tinyonnx", 1, x), archives.tiny(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
