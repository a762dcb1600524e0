"""The baseline: a hand-written FastAPI + onnxruntime v2 server, no batching, on the same
uvicorn, uvloop and httptools the project installs. What a user would write in an afternoon.

    python -m bench.baseline_server MODEL.onnx --port 8001 [--threads 1]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


def build(model_path: str, threads: int) -> FastAPI:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        body = await request.body()
        header_len = request.headers.get("inference-header-content-length")
        blob = b""
        if header_len is not None:
            body, blob = body[: int(header_len)], body[int(header_len) :]
        req = json.loads(body)
        feeds, offset = {}, 0
        for spec in req["inputs"]:
            dtype = DTYPES[spec["datatype"]]
            size = spec.get("parameters", {}).get("binary_data_size")
            if size is not None:
                arr = np.frombuffer(blob[offset : offset + size], dtype=dtype)
                offset += size
            else:
                arr = np.asarray(spec["data"], dtype=dtype)
            feeds[spec["name"]] = arr.reshape(spec["shape"])
        outs = session.run(out_names, feeds)
        binary = req.get("parameters", {}).get("binary_data_output", False)
        entries, blobs = [], []
        for n, o in zip(out_names, outs, strict=True):
            e: dict[str, object] = {"name": n, "datatype": "FP32", "shape": list(o.shape)}
            if binary:
                raw = o.tobytes()
                e["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                e["data"] = o.ravel().tolist()
            entries.append(e)
        head = json.dumps({"model_name": name, "outputs": entries}).encode()
        if not blobs:
            return Response(head, media_type="application/json")
        return Response(
            head + b"".join(blobs),
            media_type="application/octet-stream",
            headers={"inference-header-content-length": str(len(head))},
        )

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    uvicorn.run(
        build(args.model, args.threads),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
