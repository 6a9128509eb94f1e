"""The `ruclip-tiny` command: the demo runs end to end on the built-in default; bad input ends in a clear error."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ruclip_tiny.demo import demo_photos


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruclip_tiny.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_demo_scores_every_demo_photo_and_says_the_weights_are_synthetic():
    result = _run("demo", "--top", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SYNTHETIC weights" in out and "synthetic (seed 0)" in out and "shipped demo vocabulary" in out
    for photo in demo_photos():
        line = next(line for line in out.splitlines() if line.strip().startswith(photo.name))
        scores = [float(x) for x in re.findall(r"\d\.\d{3}", line)]
        assert len(scores) == 2 and 0 < scores[1] <= scores[0] <= 1


def test_missing_checkpoint_is_a_one_line_error_not_a_traceback(tmp_path):
    missing = tmp_path / "ru-clip-tiny.pkl"
    result = _run("demo", "--checkpoint", str(missing))
    assert result.returncode == 2
    assert f"checkpoint {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
