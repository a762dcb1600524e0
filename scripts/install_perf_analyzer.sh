#!/usr/bin/env bash
# Installs Triton's load tool perf_analyzer (PyPI `perf-analyzer`) into DEST, default
# .venv/peers/perf_analyzer, as DEST/perf_analyzer (a wrapper to run).
#
# The 2.60.0 wheel is tagged manylinux_2_38: on an older glibc (Debian bookworm has 2.36) pip
# picks a 0.1.0 placeholder instead. Its binary only needs a newer libc, libstdc++ and libgcc_s,
# so on such a host this script unpacks Debian trixie's libc6, libstdc++6 and libgcc-s1
# (`apt-get download` with a private source list and state, then `dpkg-deb -x`) into DEST/runtime
# and starts the binary through that runtime's dynamic loader. The host keeps its own libc;
# libssl, libcrypto and libz still come from the host.
#
# Usage: scripts/install_perf_analyzer.sh [DEST]     (env PIP: the pip to download with)
set -euo pipefail

VERSION=2.60.0
DEST=${1:-.venv/peers/perf_analyzer}
PIP=${PIP:-.venv/bin/pip}
NEEDED_GLIBC=2.38

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)

"$PIP" download --quiet --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
  -d "$work/wheel" "perf-analyzer==$VERSION"
python3 -m zipfile -e "$work"/wheel/perf_analyzer-"$VERSION"-*.whl "$work/unpacked"
install -m 755 "$work/unpacked/perf_analyzer/bin/perf_analyzer" "$DEST/perf_analyzer.bin"

host_glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$NEEDED_GLIBC" "$host_glibc" | sort -V | head -1)" = "$NEEDED_GLIBC" ]; then
  printf '#!/bin/sh\nexec "%s/perf_analyzer.bin" "$@"\n' "$DEST" >"$DEST/perf_analyzer"
else
  apt_dir="$work/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$work/debs"
  echo "deb http://deb.debian.org/debian trixie main" >"$apt_dir/sources.list"
  opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" -qq update
  (cd "$work/debs" && apt-get "${opts[@]}" -qq download libc6 libstdc++6 libgcc-s1)
  rm -rf "$DEST/runtime"
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$DEST/runtime"; done
  loader=$(cd "$DEST/runtime" && find . -name 'ld-linux-x86-64.so.2' | head -1)
  [ -n "$loader" ] || { echo "no dynamic loader in the trixie runtime" >&2; exit 1; }
  libs="$DEST/runtime/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu"
  cat >"$DEST/perf_analyzer" <<EOF
#!/bin/sh
# perf_analyzer $VERSION through Debian trixie's loader and libc (the host has glibc $host_glibc).
exec "$DEST/runtime/${loader#./}" --library-path "$libs" "$DEST/perf_analyzer.bin" "\$@"
EOF
fi
chmod 755 "$DEST/perf_analyzer"
"$DEST/perf_analyzer" --version >/dev/null 2>&1 || "$DEST/perf_analyzer" --help >/dev/null 2>&1 || {
  echo "installed perf_analyzer does not start: $DEST/perf_analyzer" >&2
  exit 1
}
echo "perf_analyzer $VERSION: $DEST/perf_analyzer"
