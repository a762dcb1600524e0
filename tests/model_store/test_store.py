"""The store: publish, numbering, pending/rejected/valid states, policies, safe loading."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import jsonschema
import pytest
import torch

from model_store import (
    ExportMismatch,
    ModelStore,
    StoreError,
    UntrustedPickle,
    VersionState,
)
from model_store.manifest import SCHEMA_PATH
from model_store.runtimes import load_runtime
from model_store.verify import load_examples
from tests.conftest import publish_tiny
from tests.fakes import Malicious, NoisyModel, TinyMLP, example_input, make_tiny


def rewrite_manifest(folder: Path, **changes: object) -> dict:
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(m))
    return m


def test_publish_lands_a_verified_version_with_a_schema_valid_manifest(store: ModelStore) -> None:
    v = publish_tiny(store, metrics={"val_acc": 0.97})
    assert v == 1 and store.versions("tiny") == [1] and store.models() == ["tiny"]
    m = store.manifest("tiny", 1)
    jsonschema.validate(m, json.loads(SCHEMA_PATH.read_text()))
    assert {a["format"] for a in m["artifacts"]} == {"onnx", "torchscript", "state_dict"}
    assert m["signature"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert m["signature"]["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
    assert m["metrics"] == {"val_acc": 0.97}
    assert m["model_factory"] == {"callable": "tests.fakes:TinyMLP", "kwargs": {"seed": 0}}
    assert m["framework"]["onnx_opset"] >= 17 and m["parameter_count"] == 4 * 8 + 8 + 8 * 3 + 3
    report = store.verify("tiny", 1)
    assert report.ok and report.servable == ["onnx", "torchscript", "state_dict"]
    # Nothing but the version folders is visible; staging is gone.
    assert sorted(p.name for p in (store.root / "tiny").iterdir()) == ["1"]


def test_every_exported_artifact_reproduces_the_eager_model(store: ModelStore) -> None:
    publish_tiny(store, seed=3)
    folder = store.path("tiny", 1)
    manifest = store.status("tiny", 1).manifest
    assert manifest is not None
    x = torch.randn(7, 4)  # a batch size the exports never saw
    want = TinyMLP(seed=3).eval()(x).detach().numpy()
    for artifact in manifest.artifacts:
        rt = load_runtime(
            artifact.format,
            folder / artifact.path,
            manifest.signature,
            factory=manifest.model_factory,
        )
        got = rt.predict({"input": x.numpy()})["output"]
        assert got.shape == (7, 3)
        assert abs(got - want).max() < 1e-4, artifact.format


def test_publish_refuses_an_export_that_does_not_reproduce_golden_outputs(
    store: ModelStore,
) -> None:
    with pytest.raises(ExportMismatch, match=r"refusing to publish: onnx: .*max error"):
        store.publish("noisy", NoisyModel(), example_inputs=example_input(), formats=("onnx",))
    assert store.versions("noisy") == []
    assert list((store.root / "noisy").iterdir()) == []  # the staging folder was removed


def test_numbers_are_never_reused(store: ModelStore) -> None:
    for seed in range(3):
        publish_tiny(store, seed=seed, formats=("state_dict",))
    shutil.rmtree(store.path("tiny", 3))
    (store.root / "tiny" / "7").mkdir()  # a garbage folder still takes its number
    (store.root / "tiny" / ".staging-9").mkdir()  # so does another publisher's reservation
    assert publish_tiny(store, formats=("state_dict",)) == 10
    assert store.versions("tiny") == [1, 2, 10]


def _publish_three(root: str) -> list[int]:
    store = ModelStore(root)
    return [publish_tiny(store, seed=i, formats=("state_dict",)) for i in range(3)]


def test_concurrent_publishers_get_distinct_numbers(tmp_path: Path) -> None:
    root = str(tmp_path / "models")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_publish_three, [root, root])
    numbers = sorted(results[0] + results[1])
    assert numbers == [1, 2, 3, 4, 5, 6]
    assert ModelStore(root).versions("tiny") == numbers


def test_a_hand_copied_version_is_pending_until_complete(tiny_store: ModelStore) -> None:
    src, dst = tiny_store.path("tiny", 2), tiny_store.root / "tiny" / "3"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "manifest.json":
            shutil.copy(f, dst / f.name)
    assert tiny_store.status("tiny", 3).state is VersionState.PENDING  # no manifest yet
    (dst / "manifest.json").write_text('{"schema_version": 1, "na')
    assert tiny_store.status("tiny", 3).state is VersionState.PENDING  # unparsable: still copying
    onnx = dst / "model.onnx"
    data = onnx.read_bytes()
    onnx.write_bytes(data[: len(data) // 2])
    shutil.copy(src / "manifest.json", dst / "manifest.json")
    rewrite_manifest(dst, version=3)
    status = tiny_store.status("tiny", 3)
    assert status.state is VersionState.PENDING and "arriving" in status.reason  # truncated file
    assert tiny_store.versions("tiny") == [1, 2]
    onnx.write_bytes(data)
    assert tiny_store.versions("tiny") == [1, 2, 3]


def test_tampered_version_is_rejected_with_its_reason_until_it_changes(
    tiny_store: ModelStore,
) -> None:
    folder = tiny_store.path("tiny", 2)
    path = folder / "model.torchscript.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    status = tiny_store.status("tiny", 2)
    assert status.state is VersionState.REJECTED
    assert "model.torchscript.pt: sha256 mismatch" in status.reason
    assert tiny_store.status("tiny", 2) is status  # unchanged files: not examined again
    assert tiny_store.versions("tiny") == [1]
    shutil.copy(tiny_store.path("tiny", 1) / "manifest.json", folder / "manifest.json")
    assert "describes tiny:1" in tiny_store.status("tiny", 2).reason  # manifest changed: re-examined


def test_artifacts_of_another_model_fail_the_golden_check(tiny_store: ModelStore) -> None:
    publish_tiny(tiny_store, name="other", seed=42)
    dst = tiny_store.path("tiny", 2)
    m = json.loads((dst / "manifest.json").read_text())
    other = tiny_store.manifest("other", 1)
    for name in ("model.onnx", "model.torchscript.pt", "model.state_dict.pt"):
        shutil.copy(tiny_store.path("other", 1) / name, dst / name)
    m["artifacts"] = other["artifacts"]
    m["model_factory"] = other["model_factory"]
    (dst / "manifest.json").write_text(json.dumps(m))
    status = tiny_store.status("tiny", 2)
    assert status.state is VersionState.REJECTED
    assert "outputs differ from the golden outputs" in status.reason and "onnx" in status.reason
    assert tiny_store.resolve("tiny", "latest") == 1


def test_policies_pick_latest_best_and_pinned(tiny_store: ModelStore) -> None:
    publish_tiny(tiny_store, seed=2)  # v3 has no metrics: ignored by best:
    assert tiny_store.resolve("tiny", "latest") == 3
    assert tiny_store.resolve("tiny", "best:val_acc") == 1
    assert tiny_store.resolve("tiny", "best:val_loss:min") == 2
    assert tiny_store.resolve("tiny", "pinned:2") == 2
    with pytest.raises(StoreError, match="no valid version"):
        tiny_store.resolve("tiny", "pinned:9")
    with pytest.raises(StoreError, match="no valid version"):
        tiny_store.resolve("tiny", "best:f1")
    with pytest.raises(ValueError, match="version policy"):
        tiny_store.resolve("tiny", "newest")


def test_state_dict_without_factory_verifies_but_is_not_servable(store: ModelStore) -> None:
    store.publish("raw", TinyMLP(), example_inputs=example_input(), formats=("state_dict",))
    report = store.verify("raw", 1)
    assert report.ok and report.servable == []
    assert "state_dict: not servable: no model_factory" in report.notes
    assert store.manifest("raw", 1)["model_factory"] is None
    with pytest.raises(StoreError, match="no valid version"):
        store.resolve("raw", servable=True)


def test_factory_function_and_its_guard(store: ModelStore) -> None:
    store.publish(
        "f",
        TinyMLP(seed=5),
        example_inputs=example_input(),
        model_factory=make_tiny,
        factory_kwargs={"seed": 5},
        formats=("state_dict",),
    )
    assert store.verify("f", 1).servable == ["state_dict"]
    folder = store.path("f", 1)
    rewrite_manifest(folder, model_factory={"callable": "os:system", "kwargs": {"command": "true"}})
    status = store.status("f", 1)
    assert status.state is VersionState.REJECTED and "neither a torch.nn.Module subclass" in status.reason


def test_pickles_need_trust_and_a_malicious_one_never_runs(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="trust_pickle"):
        store.publish("p", TinyMLP(), example_inputs=example_input(), formats=("pickle",))
    v = store.publish(
        "p",
        TinyMLP(),
        example_inputs=example_input(),
        formats=("pickle", "state_dict"),
        model_factory=TinyMLP,
        trust_pickle=True,
    )
    folder = store.path("p", v)
    marker = tmp_path / "pwned"
    for name in ("model.pickle.pt", "model.state_dict.pt"):
        torch.save(Malicious(str(marker)), folder / name)
    m = json.loads((folder / "manifest.json").read_text())
    for a in m["artifacts"]:
        p = folder / a["path"]
        a["size"], a["sha256"] = p.stat().st_size, store.hashes.sha256(p)
    (folder / "manifest.json").write_text(json.dumps(m))
    status = ModelStore(store.root).status("p", v)  # a fresh store, as a server would look
    assert status.state is VersionState.REJECTED and "not a safe state_dict" in status.reason
    manifest = status.manifest
    assert manifest is not None
    with pytest.raises(UntrustedPickle, match="runs code"):
        load_runtime("pickle", folder / "model.pickle.pt", manifest.signature)
    assert not marker.exists()


def test_examples_hold_inputs_and_golden_outputs(store: ModelStore) -> None:
    publish_tiny(store)
    ins, outs = load_examples(store.path("tiny", 1) / "examples.npz")
    assert list(ins) == ["input"] and list(outs) == ["output"]
    assert (abs(outs["output"] - TinyMLP().eval()(torch.from_numpy(ins["input"])).detach().numpy()) < 1e-6).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda s: s.publish("tiny", TinyMLP(), example_inputs=example_input(), formats=("tflite",)),
            "unknown format",
        ),
        (lambda s: s.publish("../x", TinyMLP(), example_inputs=example_input()), "model name"),
        (lambda s: s.path("tiny", "latest"), "not a positive integer"),
        (lambda s: s.manifest("tiny", 4), "does not exist"),
        (
            lambda s: s.publish("t", TinyMLP(), example_inputs=example_input(), model_factory="nomod:X"),
            "cannot be imported",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(store: ModelStore, call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StoreError, match=message):
        call(store)


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        ModelStore(f)


def test_a_url_root_needs_a_store_for_its_scheme(tmp_path: Path) -> None:
    # A URL is never taken for a folder name: an unknown scheme is an error naming it.
    with pytest.raises(StoreError, match=r"no store handles gs:// URLs \(known: s3://\)"):
        ModelStore("gs://bucket/models")
    assert not Path("gs:").exists()
    assert type(ModelStore(tmp_path / "s3:")) is ModelStore  # a path object is always a folder
