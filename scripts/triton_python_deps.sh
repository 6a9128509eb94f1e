#!/usr/bin/env bash
# The python-backend dependencies of a ruclip-tiny Triton repository, in one directory for --python-path DIR.
#
# Usage: scripts/triton_python_deps.sh DIR
#
# The Triton python stub (nvidia-pytriton 0.7, tritonserver 2.51) is built against numpy 1.x: with numpy 2 on its
# path any BYTES input crashes it. So the models' dependencies live in their own directory, numpy<2 included, never
# in the project's environment: numpy<2, onnxruntime, tokenizers, pillow, and ruclip-tiny itself (--no-deps; its
# torch-free parts are all the models import). Built in DIR.tmp and renamed, so an interrupted run leaves no half
# directory; an existing DIR is left alone (remove it to rebuild).
set -euo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
project=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
if [[ -d "$dir" ]]; then
    echo "$dir exists: kept (remove it to rebuild)" >&2
    exit 0
fi
staging="$dir.tmp.$$"
trap 'rm -rf "$staging"' EXIT
# numpy<2 is the one pin: onnxruntime, tokenizers and Pillow wheels run on numpy 1.x (checked by the tests).
"$python" -m pip install --quiet --disable-pip-version-check --target "$staging" \
    "numpy>=1.24,<2" "onnxruntime>=1.17" "tokenizers>=0.15" "pillow>=10"
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$staging" "$project"
mv "$staging" "$dir"
trap - EXIT
echo "$dir"
