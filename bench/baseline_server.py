"""The baseline: the best v2 server a user could hand-write on the stack modeldock uses, without
batching: FastAPI on uvicorn with uvloop and httptools, orjson both ways (numpy outputs written
by orjson directly, no `.tolist()`), binary tensors through `np.frombuffer`, onnxruntime with an
explicit intra-op thread count, and as many uvicorn worker processes as asked for.

    python -m bench.baseline_server MODEL.onnx --port 8001 [--threads 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
HEADER = "inference-header-content-length"


def build(model_path: str, threads: int) -> FastAPI:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        body = await request.body()
        header_len = request.headers.get(HEADER)
        blob = b""
        if header_len is not None:
            body, blob = body[: int(header_len)], body[int(header_len) :]
        req = orjson.loads(body)
        feeds, offset = {}, 0
        for spec in req["inputs"]:
            dtype = DTYPES[spec["datatype"]]
            size = spec.get("parameters", {}).get("binary_data_size")
            if size is not None:
                arr = np.frombuffer(blob, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=offset)
                offset += size
            else:
                arr = np.asarray(spec["data"], dtype=dtype)
            feeds[spec["name"]] = arr.reshape(spec["shape"])
        outs = session.run(out_names, feeds)
        binary = req.get("parameters", {}).get("binary_data_output", False)
        entries: list[dict[str, Any]] = []
        blobs = []
        for n, o in zip(out_names, outs, strict=True):
            e: dict[str, Any] = {"name": n, "datatype": NAMES[o.dtype], "shape": list(o.shape)}
            if binary:
                raw = o.tobytes()
                e["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                e["data"] = o.reshape(-1)
            entries.append(e)
        head = orjson.dumps(
            {"model_name": name, "model_version": "1", "outputs": entries}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        if not blobs:
            return Response(head, media_type="application/json")
        return Response(head + b"".join(blobs), media_type="application/octet-stream", headers={HEADER: str(len(head))})

    return app


def create_app() -> FastAPI:
    """Factory for uvicorn's worker processes (each loads its own session)."""
    return build(os.environ["BASELINE_MODEL"], int(os.environ["BASELINE_THREADS"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per process")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = ap.parse_args()
    os.environ["BASELINE_MODEL"], os.environ["BASELINE_THREADS"] = args.model, str(args.threads)
    uvicorn.run(
        "bench.baseline_server:create_app",
        factory=True,
        workers=args.workers,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
