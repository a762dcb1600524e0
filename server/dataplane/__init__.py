"""The data plane: what every protocol serves, as plain typed calls over our own types.

REST (`server.http`) and gRPC (`server.grpc`) are codecs and transports over it; nothing here
imports FastAPI, Starlette or grpc, so protocol behaviour is testable without a server.

- `endpoint.py`    one model's inference in a submitting process: limits, submit, cancel
- `directory.py`   the models served now and their endpoints
- `status.py`      health, readiness, server and model metadata, read from the board
- `triton.py`      Triton's model configuration and statistics documents
- `repository.py`  repository and rollout commands (`Command` -> supervisor -> `Ack`)
- `events.py`      request events and their observers (traces, payload log)
- `auth.py`        the API and admin key checks
"""
