"""``polygraphy_command``: the Polygraphy check of a bundle's graph that the README prints, run for real with
``--onnxrt`` against the session bundle; its tolerances come from ``THRESHOLDS``."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.parity import THRESHOLDS, polygraphy_command

pytestmark = pytest.mark.skipif(importlib.util.find_spec("polygraphy") is None,
                                reason="polygraphy is not installed (export extra)")
README = Path(__file__).resolve().parents[3] / "README.md"


def _polygraphy(argv: list[str]) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).with_name("polygraphy")
    return subprocess.run([str(executable), *argv[1:]], capture_output=True, text=True, timeout=300)


def test_the_fp16_check_passes_a_correct_fp16_graph(exported_bundle):
    argv = polygraphy_command(exported_bundle, "visual", "fp16", runner="--onnxrt")
    result = _polygraphy(argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASSED" in result.stdout + result.stderr
    default = _polygraphy(argv[: argv.index("--check-error-stat")])  # Polygraphy's own default tolerance
    assert default.returncode != 0  # why the README must give tolerances: a correct FP16 graph looks broken


def test_the_fp16_check_fails_outputs_ten_times_further_off_than_the_cosine_bar(exported_bundle, tmp_path):
    from polygraphy.comparator import RunResults

    argv = polygraphy_command(exported_bundle, "visual", "fp16", runner="--onnxrt")
    stored = RunResults.load(argv[argv.index("--load-outputs") + 1])
    ((runner, iterations),) = stored.items()
    reference = np.asarray(iterations[0]["image_features"], np.float64)
    # each row turned away from itself so that 1 - cosine is ten times what the fp16 bar allows
    noise = np.random.default_rng(0).normal(size=reference.shape)
    noise -= (noise * reference).sum(1, keepdims=True) / (reference * reference).sum(1, keepdims=True) * reference
    noise *= (np.linalg.norm(reference, axis=1) / np.linalg.norm(noise, axis=1))[:, None]
    angle = np.arccos(1 - 10 * (1 - THRESHOLDS["fp16"].min_cosine))
    moved = (np.cos(angle) * reference + np.sin(angle) * noise).astype(np.float32)
    results = RunResults()
    results.add([{"image_features": moved}], runner_name=runner)
    path = tmp_path / "moved_outputs.json"
    results.save(str(path))
    argv[argv.index("--load-outputs") + 1] = str(path)
    result = _polygraphy(argv)
    assert result.returncode != 0, result.stdout[-3000:]


def test_the_readme_prints_the_command_for_the_default_bundle(exported_bundle):
    readme = README.read_text()
    for encoder in ("visual", "textual"):
        command = shlex.join(polygraphy_command(exported_bundle, encoder, "fp16"))
        assert command.replace(str(exported_bundle), "bundle") in " ".join(readme.split())
