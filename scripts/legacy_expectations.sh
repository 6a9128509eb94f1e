#!/usr/bin/env bash
# Regenerates tests/data/legacy_expectations.npz with the ORIGINAL 2022 stack (timm 0.5.4, transformers 4.12.3,
# torchvision transforms) in a side venv. The side venv is never a project dependency.
#
#   scripts/legacy_expectations.sh            # side venv in .legacy-venv, project python from .venv
#   LEGACY_VENV=/tmp/legacy PYTHON=python3 scripts/legacy_expectations.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LEGACY_VENV=${LEGACY_VENV:-.legacy-venv}
PYTHON=${PYTHON:-.venv/bin/python}
PILLOW=$("$PYTHON" -c 'import PIL; print(PIL.__version__)')  # same decoder/resampler on both sides

if [ ! -x "$LEGACY_VENV/bin/python" ]; then
  python3 -m venv "$LEGACY_VENV"
  "$LEGACY_VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 "numpy<2" "pillow==$PILLOW"
  # transformers 4.12.3 pins tokenizers<0.11 (no wheel for today's Python); its slow tokenizer does not need it.
  "$LEGACY_VENV/bin/pip" install -q --no-deps timm==0.5.4 transformers==4.12.3
  "$LEGACY_VENV/bin/pip" install -q "huggingface-hub<0.11" sacremoses regex requests filelock packaging pyyaml tqdm
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
seed=$("$PYTHON" -c 'from tests.legacy_inputs import SYNTHETIC_SEED; print(SYNTHETIC_SEED)')
"$PYTHON" -c "
import torch
from ruclip_tiny.synthetic import synthetic_checkpoint
torch.save(synthetic_checkpoint($seed), '$tmp/synthetic.pt')
"
"$LEGACY_VENV/bin/python" scripts/legacy_reference.py --checkpoint "$tmp/synthetic.pt" --out tests/data/legacy_expectations.npz
