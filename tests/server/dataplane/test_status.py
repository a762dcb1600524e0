"""Readiness, metadata, Triton's configuration and statistics, read from a board in-process:
the answers both protocols give, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from server.config import ModelConfig
from server.dataplane.directory import ModelDirectory
from server.dataplane.status import ServingStatus
from server.dataplane.triton import model_config, model_statistics
from server.errors import ServingError
from server.ipc.board import Board
from server.ipc.messages import Listing, WorkerRecord

SIGNATURE = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
}


def ready(version: int = 2, **extra: Any) -> WorkerRecord:
    record: dict[str, Any] = {
        "state": "ready",
        "version": version,
        "loaded": {str(version): "ready", "1": "loading"},
        "labels": {"stable": version},
        "signatures": {str(version): SIGNATURE},
        "platforms": {str(version): "onnxruntime_onnx"},
        "servables": {str(version): {"artifact": "onnx", "device": "cpu"}},
        "signature": SIGNATURE,
        "platform": "onnxruntime_onnx",
        **extra,
    }
    return record  # type: ignore[return-value]


def status(workers: int = 1) -> tuple[ServingStatus, Board]:
    board = Board()
    board.bind({})
    configs = [ModelConfig(name="m", workers=workers, max_batch_size=16), ModelConfig(name="other")]
    return ServingStatus(ModelDirectory(configs, board, {}), board), board


def test_readiness_waits_for_every_worker_and_says_why() -> None:
    s, board = status(workers=2)
    assert s.waiting_for() == ["m", "other"]  # nobody reported: loading
    board.publish("m", 0, ready())
    assert "not ready: loading" in s.model_unready("m")  # worker 1 still loading
    board.publish("m", 1, ready())
    assert s.model_unready("m") == "" and s.waiting_for() == ["other"]
    assert s.model_unready("m", "2") == ""
    assert s.model_unready("m", "1") == "version 1 of 'm' is loading"
    with pytest.raises(ServingError) as e:
        s.model_unready("m", "7")
    assert e.value.status == 404 and "loaded: [1, 2]" in e.value.message


def test_metadata_names_the_signature_and_lists_every_rejection() -> None:
    s, board = status()
    rejected = {"3": "rollout rejected it: shadow: agreement 0.11 < 0.90 over 512 rows", "4": "checksum mismatch"}
    board.publish("m", 0, ready(rejected=rejected))
    meta = s.model_metadata("m")
    assert (meta.name, meta.versions, meta.platform) == ("m", ["1", "2"], "onnxruntime_onnx")
    assert meta.inputs == SIGNATURE["inputs"] and meta.outputs == SIGNATURE["outputs"]
    assert meta.properties["default_version"] == "2" and meta.properties["rejected"] == rejected
    assert meta.properties["artifact"] == "onnx"
    assert s.label_version("m", "stable") == "2"
    with pytest.raises(ServingError) as e:
        s.model_metadata("m", "1")  # loaded but not ready
    assert e.value.status == 503


def test_a_model_not_served_is_a_404_that_says_why() -> None:
    s, board = status()
    with pytest.raises(ServingError) as e:
        s.model_metadata("nope")
    assert e.value.status == 404 and "unknown model 'nope'" in e.value.message
    board.list_models({"other": Listing(ModelConfig(name="other"), pool=False, removed="unloaded by the operator")})
    s.directory._read_at = -1e9  # look at the board now, not after REFRESH_S
    with pytest.raises(ServingError) as e:
        s.model_unready("other")
    assert "unloaded by the operator" in e.value.message
    with pytest.raises(ServingError):
        s.label_version("m", "nope")


def test_tritons_configuration_follows_the_version_in_service() -> None:
    s, board = status()
    board.publish("m", 0, ready())
    doc = model_config(s, "m")
    assert doc["max_batch_size"] == 16 and doc["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}]
    assert doc["instance_group"][0]["kind"] == "KIND_CPU"
    with pytest.raises(ServingError):
        model_config(s, "m", "1")  # not the version in service


def test_statistics_cover_the_served_models_and_refuse_an_unknown_version() -> None:
    s, board = status()
    board.publish("m", 0, ready())
    names = [e["name"] for e in model_statistics(s)["model_stats"]]
    assert names.count("m") == 2 and "other" not in names  # versions 1, 2; other has no record
    with pytest.raises(ServingError) as e:
        model_statistics(s, "m", "9")
    assert e.value.status == 404
