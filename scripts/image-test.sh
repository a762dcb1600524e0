#!/usr/bin/env bash
# `make image-test`: build the Dockerfile with podman and run the image the way k8s/ runs it
# (tests/image/). Works without a Docker daemon or a container registry:
#   - the base image is made here with debootstrap (Debian bookworm + python3) instead of
#     pulling python:3.11-slim, and passed as PYTHON_IMAGE;
#   - pip inside the build gets no index: torch and the dependencies are built into wheels on the
#     host (build/wheels/) and installed with PIP_NO_INDEX/PIP_FIND_LINKS.
# Both are cached (a podman image, a folder keyed by pyproject.toml); a fresh machine builds them.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
TORCH=${TORCH:-torch==2.13.0}
IMAGE=${IMAGE:-localhost/modeldock:test-cpu}
BASE=${BASE:-localhost/modeldock-test-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=build/image-test
WHEELS=build/wheels
mkdir -p "$WORK"
t0=$(date +%s)
say() { printf '\n== image-test [%ss]: %s\n' "$(($(date +%s) - t0))" "$*"; }

# Tools: Debian's podman with runc (crun does not run on every cgroup layout).
missing=()
for tool in podman:podman runc:runc debootstrap:debootstrap; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    if [ "$(id -u)" != 0 ]; then
        echo "image-test needs ${missing[*]} (apt-get install ${missing[*]}) and root to run podman" >&2
        exit 2
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# podman's own settings for this test only (never /etc): runc, and no default ulimits, which a
# host that forbids raising RLIMIT_NOFILE refuses.
CONTAINERS_CONF="$PWD/$WORK/containers.conf"
export CONTAINERS_CONF
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
EOF

if ! podman image exists "$BASE"; then
    say "building the base image $BASE with debootstrap (about a minute)"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" "$MIRROR" >"$WORK/debootstrap.log"
    # Leave out apt's caches and docs: nothing at run time reads them.
    tar -C "$root" -c --exclude=./var/cache/apt --exclude=./var/lib/apt/lists --exclude=./usr/share/doc \
        --exclude=./usr/share/man --exclude=./usr/share/locale --exclude=./usr/share/info . |
        podman import --change 'CMD ["python3"]' - "$BASE" >/dev/null
    rm -rf "$root"
    trap - EXIT
fi

stamp=$( (cat pyproject.toml; echo "$TORCH") | sha256sum | cut -c1-16)
if [ "$(cat "$WHEELS/.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "building wheels of $TORCH and the dependencies into $WHEELS"
    rm -rf "$WHEELS"
    "$PY" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        >"$WORK/requirements.txt"
    "$PY" -m pip wheel -q -w "$WHEELS" "$TORCH" "setuptools>=64" -r "$WORK/requirements.txt"
    echo "$stamp" >"$WHEELS/.stamp"
fi

say "building $IMAGE; substituted for this machine (the Dockerfile's defaults are for Docker + public images):
     PYTHON_IMAGE=$BASE          (default python:3.11-slim)
     PIP_NO_INDEX=1, PIP_FIND_LINKS=/context/$WHEELS   (default: unset, torch from TORCH_INDEX, the rest from PyPI)"
build_start=$(date +%s)
podman build --format docker --build-arg PYTHON_IMAGE="$BASE" --build-arg PIP_NO_INDEX=1 \
    --build-arg PIP_FIND_LINKS="/context/$WHEELS" -t "$IMAGE" . >"$WORK/build.log" 2>&1 ||
    { tail -40 "$WORK/build.log"; exit 1; }
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
say "built in $(($(date +%s) - build_start))s: $IMAGE is $((size / 1000000)) MB (base $(($(podman image inspect "$BASE" --format '{{.Size}}') / 1000000)) MB)"

say "running tests/image against $IMAGE"
MODELDOCK_TEST_IMAGE="$IMAGE" "$PY" -m pytest -q -s -p no:cacheprovider tests/image
say "done"
