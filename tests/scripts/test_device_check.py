"""``scripts/device_check.sh``: its dry run (every step, on the CPU at tiny sizes, on the session's bundle) writes
the JSON and prints the table last; a missing module stops it at the preflight; a step stopped by its budget is
reported, not hidden."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_check.sh"


def _helper():
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "scripts" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _environment() -> dict:
    # the script runs `python3` from PATH (or $PYTHON): make it this interpreter, as on the test machine
    return {**os.environ, "PYTHON": sys.executable}


@pytest.mark.slow
def test_dry_run_runs_every_step_on_the_cpu_and_prints_the_table_last(exported_bundle, tmp_path):
    manifest_before = (exported_bundle / "manifest.json").read_bytes()
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--dry-run", "--bundle", str(exported_bundle)],
        capture_output=True, text=True, timeout=300, env=_environment(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    assert all(step["status"] == "ok" for step in report["steps"].values()), report["steps"]
    assert set(report["steps"]) == {"preflight", "parity", "bench:eager", "bench:graphs", "tensorrt", "bench:compile"}

    parity = report["parity"]["results"]["torch-cpu-fp32"]
    assert parity["passed"] and parity["probe"]["passed"] and parity["stress"]["passed"]
    assert "CUDA only" in report["parity"]["skipped"]["torch-cpu-fp16"]

    measured = {(r["encoder"], r["variant"], r["precision"], r["batch"]) for r in report["rows"]}
    assert measured == {(e, "eager", "fp32", b) for e in ("visual", "textual") for b in (1, 2)}
    assert all(r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["throughput_per_s"] > 0 for r in report["rows"])
    assert "CUDA-only" in report["not_measured"]["graphs"] and "compil" in report["not_measured"]["compile"]
    if importlib.util.find_spec("tensorrt") is None:
        assert "no TensorRT" in report["not_measured"]["tensorrt"]

    lines = result.stdout.strip().splitlines()
    table_start = next(i for i, line in enumerate(lines) if line.startswith("encoder  backend"))
    assert lines[table_start - 1].startswith("parity torch-cpu-fp16: skipped")
    assert all(not line.startswith("==") for line in lines[table_start:])  # nothing printed after the table
    assert (exported_bundle / "manifest.json").read_bytes() == manifest_before  # the dry run writes nothing there


def test_a_missing_module_stops_the_run_at_the_preflight(tmp_path, monkeypatch, capsys):
    helper = _helper()
    monkeypatch.setitem(helper.NEEDS, "bench", {"no_such_module_for_the_check": "a test's stand-in"})
    args = helper.main.__globals__["argparse"].Namespace(out=str(tmp_path), bundle=None, dry_run=True)
    assert helper.step_preflight(args) == 2
    assert "missing Python modules: no_such_module_for_the_check (a test's stand-in)" in capsys.readouterr().out
    assert json.loads((tmp_path / "preflight.json").read_text())["missing"] == [
        "no_such_module_for_the_check (a test's stand-in)"
    ]


def test_the_report_names_steps_stopped_by_their_budget_and_keeps_their_rows(tmp_path, capsys):
    helper = _helper()
    row = {"backend": "torch", "variant": "graphs", "precision": "fp16", "encoder": "visual", "batch": 8,
           "p50_ms": 1.5, "p99_ms": 2.0, "throughput_per_s": 5333.3}
    (tmp_path / "bench-graphs.json").write_text(json.dumps({"rows": [row], "skipped": {}, "errors": {
        "torch graphs fp16 textual batch 1": "RuntimeError: capture failed"}}))
    (tmp_path / "steps.json").write_text(json.dumps({"bench:compile": {"status": "timed out after 90s"}}))
    args = helper.main.__globals__["argparse"].Namespace(out=str(tmp_path), dry_run=False)
    assert helper.step_report(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["rows"] == [row]
    assert report["not_measured"]["step bench:compile"] == "timed out after 90s"
    assert report["not_measured"]["torch graphs fp16 textual batch 1"] == "failed: RuntimeError: capture failed"
    assert "visual   torch    graphs   fp16  8      1.500   2.000   5333" in printed
    assert printed.strip().splitlines()[-1].startswith("not measured:")


def test_the_script_without_an_outdir_prints_its_usage():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage:" in result.stderr
