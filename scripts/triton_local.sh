#!/usr/bin/env bash
# A real Triton Inference Server on 127.0.0.1, on a CPU, for the tests and for a try on a laptop.
#
# Usage: scripts/triton_local.sh REPO [--http-port P] [--grpc-port G] [--metrics-port M]
#
# Runs in the foreground: it execs tritonserver, so its pid is the server's (stop it with SIGTERM/SIGINT).
# The binary is tritonserver 2.51 from the nvidia-pytriton wheel (PyPI), unpacked once with
# `pip install --no-deps --target` into ${RUCLIP_TINY_CACHE:-~/.cache/ruclip-tiny}/pytriton and run from there:
# the wheel pins numpy<2, so it never goes into the project's environment. It holds only the python backend
# (no onnxruntime or tensorrt backend): serve repositories written with `ruclip-tiny triton-repo --platform python
# --python-path DIR`, DIR from scripts/triton_python_deps.sh. PYTHON (default python3) picks the python stub, which
# must match the Python that DIR was built for.
set -euo pipefail

usage() {
    echo "usage: $0 REPO [--http-port P] [--grpc-port G] [--metrics-port M]" >&2
    exit 2
}
[[ $# -ge 1 && "$1" != -* ]] || usage
repo=$1
shift
http_port=8000 grpc_port=8001 metrics_port=8002
while [[ $# -gt 0 ]]; do
    case $1 in
        --http-port) [[ $# -ge 2 ]] || usage; http_port=$2; shift 2 ;;
        --grpc-port) [[ $# -ge 2 ]] || usage; grpc_port=$2; shift 2 ;;
        --metrics-port) [[ $# -ge 2 ]] || usage; metrics_port=$2; shift 2 ;;
        *) usage ;;
    esac
done
if [[ ! -d "$repo" ]]; then
    echo "$0: model repository $repo is not a directory; write one with: ruclip-tiny triton-repo BUNDLE --out $repo --platform python --python-path DIR" >&2
    exit 2
fi

cache=${RUCLIP_TINY_CACHE:-$HOME/.cache/ruclip-tiny}/pytriton
python=${PYTHON:-python3}
server=$cache/pytriton/tritonserver
if [[ ! -x "$server/bin/tritonserver" ]]; then
    echo "$0: unpacking the nvidia-pytriton wheel into $cache (once)" >&2
    mkdir -p "$(dirname "$cache")"
    staging="$cache.tmp.$$"
    trap 'rm -rf "$staging"' EXIT
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$staging" nvidia-pytriton
    rm -rf "$cache"
    mv "$staging" "$cache"
    trap - EXIT
fi

version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
stub=$server/python_backend_stubs/$version/triton_python_backend_stub
if [[ ! -x "$stub" ]]; then
    echo "$0: the nvidia-pytriton wheel has no python backend stub for Python $version (it has: $(ls "$server/python_backend_stubs"))" >&2
    exit 2
fi
# The python backend runs the stub that lies next to libtriton_python.so.
target=$server/backends/python/triton_python_backend_stub
if ! cmp -s "$stub" "$target"; then
    cp "$stub" "$target.tmp.$$"
    mv "$target.tmp.$$" "$target"
fi

export LD_LIBRARY_PATH=$cache/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# --disable-auto-complete-config: the stub's auto-complete step imports numpy before any model code puts the
# models' own directories on sys.path.
exec "$server/bin/tritonserver" \
    --model-repository="$(cd "$repo" && pwd)" \
    --backend-directory="$server/backends" \
    --http-address=127.0.0.1 --http-port="$http_port" \
    --grpc-address=127.0.0.1 --grpc-port="$grpc_port" \
    --metrics-address=127.0.0.1 --metrics-port="$metrics_port" \
    --allow-gpu-metrics=false \
    --disable-auto-complete-config
