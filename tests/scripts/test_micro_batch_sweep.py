"""``scripts/micro_batch_sweep.py`` at tiny sizes on the session's bundle: every size is timed against the whole
batch side by side, the rows say how many texts each call took, and the JSON and the plot are written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("micro_batch_sweep", ROOT / "scripts" / "micro_batch_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_sweep_times_each_size_against_whole_batches_and_writes_json_and_plot(exported_bundle, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sweep"
    code = _script().main([str(exported_bundle), "--out", str(out), "--threads", "1", "--image-batches", "3",
                           "--image-sizes", "1,2,8", "--text-batches", "4", "--text-tokens", "40", "--repeats", "1"])
    assert code == 0
    report = json.loads((out / "micro_batch_sweep.json").read_text(encoding="utf-8"))
    # sizes at or above the batch are not micro-batches and are left out; 0 is the whole batch
    assert [row["size"] for row in report["images"]] == [0, 1, 2]
    whole = report["images"][0]
    assert whole["speedup_vs_whole"] == 1.0 and all(row["p50_ms"] > 0 and row["calls"] >= 1 for row in report["images"])
    for row in report["images"][1:]:
        assert row["speedup_vs_whole"] == pytest.approx(whole["p50_ms"] / row["p50_ms"])
    texts = {(row["texts"], row["size"]): row for row in report["texts"]}
    assert set(name for name, _ in texts) == {"77 tokens", "captions"}
    long_text = texts[("77 tokens", 40)]
    assert long_text["width"] == 77 and long_text["rows_per_call"] == 1
    assert texts[("77 tokens", 0)]["rows_per_call"] == 4
    assert (out / "micro-batch-sweep.png").stat().st_size > 10_000
    assert "micro-batches of" in report["backend"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["workload", "size", "p50", "ms", "x", "whole"] and len(printed) == 1 + len(
        report["images"]) + len(report["texts"])
