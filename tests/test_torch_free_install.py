"""The base install (``pip install .``, no extras) is a torch-free runtime: the public names of ``runtime`` import
and compute embeddings there, and ``ruclip-tiny --version`` answers.

Runs with the interpreter of such an install, named by RUCLIP_TINY_TORCH_FREE_PYTHON (``.ci/run`` builds one);
skipped, saying so, where none is given.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

PYTHON = os.environ.get("RUCLIP_TINY_TORCH_FREE_PYTHON")

pytestmark = pytest.mark.skipif(
    not PYTHON, reason="RUCLIP_TINY_TORCH_FREE_PYTHON is not set (.ci/run sets it to a venv made by `pip install .`)"
)


def _run(*args: str) -> subprocess.CompletedProcess:
    # Run outside the checkout, so the install's own copy of the packages is what imports.
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=300, cwd=Path(PYTHON).parent)


def test_the_base_install_has_no_torch_and_no_extra():
    result = _run("-c", "import importlib.util as u; print([m for m in ('torch', 'timm', 'transformers', 'fastapi', "
                  "'onnx') if u.find_spec(m)])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_runtime_public_names_embed_texts_and_images_without_torch(tmp_path):
    from runtime.embedder import Embedder
    from tests.runtime.fake_bundle import build_fake_bundle

    bundle = build_fake_bundle(tmp_path / "bundle")
    texts = ["кошка", "собака на траве"]
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "from runtime import Bundle, Embedder, open_backend, run_parity\n"
        "with Embedder.load(sys.argv[1]) as embedder:\n"
        "    rows = embedder.encode_texts(json.loads(sys.argv[2]))\n"
        "    pixels = embedder.encode_pixels(np.zeros((1, 3, 224, 224), np.float32))\n"
        "print(json.dumps({'texts': rows.tolist(), 'pixels': pixels.tolist(),\n"
        "                  'heavy': sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules)}))\n"
    )
    result = _run("-c", code, str(bundle), json.dumps(texts, ensure_ascii=False))
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["heavy"] == []
    with Embedder.load(bundle) as embedder:
        np.testing.assert_allclose(answer["texts"], embedder.encode_texts(texts), atol=1e-6)
        np.testing.assert_allclose(
            answer["pixels"], embedder.encode_pixels(np.zeros((1, 3, 224, 224), np.float32)), atol=1e-6
        )


def test_the_command_answers_its_version_on_the_base_install():
    from importlib import metadata

    result = _run("-m", "ruclip_tiny", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ruclip-tiny {metadata.version('ruclip-tiny')}"
