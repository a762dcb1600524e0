"""The gRPC codec without a server, the status mapping, and the stubs: regenerated from the
checked-in protos they are identical, and Triton's service is wire-compatible with every message
of the Open Inference Protocol's own proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from server.errors import ServingError
from server.grpc.codec import decode_request, encode_response, grpc_code_name
from server.grpc.gen import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parents[3]
PROTOS = ROOT / "server" / "grpc" / "protos"


def request(datatype: str, shape: list[int], raw: bytes | None = None, **contents: list) -> pb.ModelInferRequest:  # type: ignore[type-arg]
    msg = pb.ModelInferRequest(model_name="m", id="i")
    tensor = msg.inputs.add(name="x", datatype=datatype, shape=shape)
    if raw is not None:
        msg.raw_input_contents.append(raw)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return msg


def test_raw_and_typed_inputs_decode_alike() -> None:
    arr = np.arange(8, dtype=np.float32).reshape(2, 4)
    raw = decode_request(request("FP32", [2, 4], arr.tobytes()), 1000)
    typed = decode_request(request("FP32", [2, 4], fp32_contents=arr.ravel().tolist()), 1000)
    assert np.array_equal(raw.inputs["x"], arr) and np.array_equal(typed.inputs["x"], arr)
    assert raw.rows == 2 and raw.binary_default and not typed.binary_default and raw.id == "i"


def test_bytes_raw_and_typed() -> None:
    items = [b"a", b"", "é".encode()]
    framed = b"".join(len(v).to_bytes(4, "little") + v for v in items)
    raw = decode_request(request("BYTES", [3], framed), 1000).inputs["x"]
    typed = decode_request(request("BYTES", [3], bytes_contents=items), 1000).inputs["x"]
    assert raw.tolist() == items and typed.tolist() == items
    with pytest.raises(ServingError, match="runs past the data"):
        decode_request(request("BYTES", [3], framed[:-1]), 1000)


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (request("INT8", [1], int_contents=[300]), "out of range for INT8"),
        (request("FP16", [1], fp32_contents=[1.0]), "FP16 has no typed contents"),
        (request("FP32", [2], fp32_contents=[1.0]), "fp32_contents has 1 values but shape [2] needs 2"),
        (request("FP32", [2], b"\0" * 4), "4 bytes does not match shape [2]"),
        (request("FP99", [1], b""), "datatype 'FP99' is not supported"),
        (request("FP32", [10**6, 10**6], b""), "over the limit of 1000"),
    ],
)
def test_bad_requests_name_the_problem(msg: pb.ModelInferRequest, message: str) -> None:
    with pytest.raises(ServingError) as e:
        decode_request(msg, 1000)
    assert e.value.status == 400 and message in e.value.message


def test_raw_inputs_are_all_or_none() -> None:
    msg = request("FP32", [1], np.zeros(1, np.float32).tobytes())
    msg.inputs.add(name="y", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(ServingError, match="send all inputs raw or none"):
        decode_request(msg, 1000)


def test_outputs_come_back_in_the_form_sent() -> None:
    outputs = {"y": np.array([[1.5, np.inf]], np.float32), "h": np.array([0.5], np.float16)}
    typed_req = decode_request(request("FP32", [1], fp32_contents=[1.0]), 1000)
    typed_req.outputs = ["y"]
    typed = encode_response("m", 3, typed_req, outputs)
    assert typed.model_version == "3" and typed.id == "i" and not typed.raw_output_contents
    assert list(typed.outputs[0].contents.fp32_contents) == [1.5, np.inf]  # +Inf survives
    typed_req.outputs = None  # FP16 has no typed field: everything goes raw
    mixed = encode_response("m", 3, typed_req, outputs)
    assert [o.datatype for o in mixed.outputs] == ["FP32", "FP16"] and len(mixed.raw_output_contents) == 2
    assert np.frombuffer(mixed.raw_output_contents[1], np.float16).tolist() == [0.5]


TRITON_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@pytest.mark.parametrize(("status", "code"), TRITON_CODES.items())
def test_status_mapping(status: int, code: str) -> None:
    assert grpc_code_name(ServingError(status, "x")) == code


def test_checked_in_stubs_are_what_the_generator_makes(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_grpc_stubs.py"), "--out", str(tmp_path)], check=True)
    checked_in = ROOT / "server" / "grpc" / "gen"
    made = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert made == sorted(p.name for p in checked_in.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
    for name in made:
        assert (tmp_path / name).read_text() == (checked_in / name).read_text(), name


def test_triton_service_is_wire_compatible_with_the_open_inference_proto(tmp_path: Path) -> None:
    """Every message and field of the OIP proto has the same number and type in Triton's."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "oip.binpb"
    assert protoc.main(["protoc", f"-I{PROTOS}", f"--descriptor_set_out={out}", "open_inference_grpc.proto"]) == 0
    oip = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(oip)
    triton = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in pool.FindServiceByName("inference.GRPCInferenceService").methods:
        mine = triton.methods_by_name[method.name]
        for ours, theirs in ((method.input_type, mine.input_type), (method.output_type, mine.output_type)):
            _same_fields(ours, theirs)


# In the OIP proto only; a client reading it gets its default (an empty map).
OIP_ONLY = {"inference.ModelMetadataResponse.properties"}


def _same_fields(oip: object, triton: object) -> None:
    for field in oip.fields:  # type: ignore[attr-defined]
        if field.full_name in OIP_ONLY:
            continue
        other = triton.fields_by_name[field.name]  # type: ignore[attr-defined]
        assert (other.number, other.type) == (field.number, field.type), f"{triton.full_name}.{field.name}"  # type: ignore[attr-defined]
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            _same_fields(field.message_type, other.message_type)
