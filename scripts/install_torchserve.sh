#!/bin/sh
# Real TorchServe 0.12 for `make bench-torchserve`, in its own venv (.venv/peers/torchserve): its
# image_classifier handler imports torchvision and captum, and torchvision needs the torch it was
# built for (2.14.1), not the project's. Several GB; `make test` never needs it. Java 17 must be
# installed (Debian: openjdk-17-jre-headless).
set -eu
VENV=${VENV:-.venv/peers/torchserve}
command -v java >/dev/null || { echo "TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 torchserve==0.12.0 torch-model-archiver==0.12.0 captum==0.9.0 pyyaml
