"""``ruclip-tiny bench``: the report holds every configured row with consistent statistics, the text workloads feed
the runtime different sequence lengths, nothing is written into the bundle, and bad options are refused clearly.
No assertion here is about speed: timings on a shared CI machine prove nothing."""

from __future__ import annotations

import importlib.util
import json

import pytest

from ruclip_tiny import spec
from ruclip_tiny.cli import main
from runtime.bench import WORKLOADS, BenchError, parse_batch_sizes

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def quick_report(exported_bundle, tmp_path_factory):
    """``ruclip-tiny bench BUNDLE --quick --threads 2 --out DIR`` run once; (report, out dir, bundle tree before)."""
    out = tmp_path_factory.mktemp("bench")
    before = _tree(exported_bundle)
    assert main(["bench", str(exported_bundle), "--quick", "--threads", "2", "--out", str(out)]) == 0
    return json.loads((out / "bench.json").read_text(encoding="utf-8")), out, before


def test_quick_bench_has_every_configured_row_with_ordered_percentiles(quick_report):
    report, _, _ = quick_report
    runtime_rows = [r for r in report["rows"] if r["pipeline"] == "runtime"]
    got = {(r["workload"], r["backend"], r["precision"], r["batch_size"]) for r in runtime_rows}
    assert got == {(w, "onnxruntime", "fp32", b) for w in WORKLOADS for b in (1, 8)}
    assert len(runtime_rows) == len(got)
    for row in report["rows"]:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"], row
        assert row["throughput_per_s"] > 0 and row["repeats"] >= 1
    assert report["end_to_end"] and all(r["images_per_s"] > 0 for r in report["end_to_end"])
    assert report["machine"]["threads"] == 2 and report["machine"]["cpu_model"]
    assert report["versions"]["onnxruntime"] and report["date"]
    # what the runtime ran is on record: here the CPU provider with its micro-batches
    (runtime,) = report["runtime"]
    assert (runtime["backend"], runtime["precision"]) == ("onnxruntime", "fp32")
    assert "CPUExecutionProvider" in runtime["describe"] and "micro-batches of 2 images" in runtime["describe"]


@pytest.mark.skipif(not HAS_TORCH, reason="no torch: the bench runs without a baseline")
def test_every_runtime_figure_has_a_ratio_against_the_baseline(quick_report):
    report, _, _ = quick_report
    assert report["baseline"]["available"]
    baseline = {(r["workload"], r["batch_size"]) for r in report["rows"] if r["pipeline"] == "baseline"}
    assert baseline == {(w, b) for w in WORKLOADS for b in (1, 8)}
    for row in report["rows"] + report["end_to_end"]:
        assert row["ratio_vs_baseline"] is not None and row["ratio_vs_baseline"] > 0, row
    for row in report["rows"]:
        assert row["baseline_p50_ms"] > 0


def test_the_fused_attention_lever_is_timed_beside_every_onnxruntime_text_row(quick_report):
    report, _, _ = quick_report
    text_rows = [r for r in report["rows"] if r["pipeline"] == "runtime" and r["workload"].startswith("text")]
    assert text_rows
    for row in text_rows:  # the session bundle has a deployable fused graph, and auto uses it on the CPU
        assert row["unfused_p50_ms"] > 0 and row["fused_speedup"] == row["unfused_p50_ms"] / row["p50_ms"]


def test_text_workloads_feed_the_runtime_different_sequence_lengths(quick_report):
    report, _, _ = quick_report
    for row in report["rows"]:
        if row["workload"] == "text-full" or row["pipeline"] == "baseline" and row["workload"].startswith("text"):
            assert row["tokens_fed"] == spec.MAX_TEXT_LENGTH, row  # long texts, and the baseline always pads to 77
        elif row["workload"] == "text-captions":
            assert row["tokens_fed"] < spec.MAX_TEXT_LENGTH and row["mean_tokens"] <= row["tokens_fed"], row
    full = [r["mean_tokens"] for r in report["rows"] if r["workload"] == "text-full"]
    captions = [r["mean_tokens"] for r in report["rows"] if r["workload"] == "text-captions"]
    assert min(full) == spec.MAX_TEXT_LENGTH and max(captions) < spec.MAX_TEXT_LENGTH


def test_bench_writes_its_files_to_out_and_nothing_into_the_bundle(quick_report, exported_bundle):
    _, out, before = quick_report
    assert _tree(exported_bundle) == before
    if HAS_MATPLOTLIB:
        assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("text", ["0", "1,x", "-8", ""])
def test_invalid_batch_sizes_are_refused_naming_the_option(text):
    with pytest.raises(BenchError, match="--batch-sizes"):
        parse_batch_sizes(text)


def test_cli_refuses_invalid_batch_sizes_before_loading_anything(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "no-bundle"), "--batch-sizes", "8,zero"]) == 2
    err = capsys.readouterr().err
    assert "--batch-sizes" in err and "'zero' is not an integer" in err


def test_cli_refuses_an_unknown_backend(tmp_path, capsys):
    assert main(["bench", str(tmp_path), "--backends", "onnxruntime,tflite"]) == 2
    assert "tflite" in capsys.readouterr().err


def test_table_says_no_baseline_when_there_is_none():
    from runtime.bench import format_table

    row = {"workload": "image", "pipeline": "runtime", "backend": "onnxruntime", "precision": "fp32",
           "batch_size": 1, "p50_ms": 2.0, "p90_ms": 3.0, "p99_ms": 4.0, "throughput_per_s": 500.0,
           "ratio_vs_baseline": None}
    assert "no baseline" in format_table({"rows": [row], "end_to_end": []}).splitlines()[1]


def test_rounds_combine_as_medians_of_each_rounds_own_ratio():
    from runtime.bench import combine_rounds

    def report(baseline_ms: float, runtime_ms: float, load: float) -> dict:
        rows = [
            {"workload": "image", "pipeline": "baseline", "backend": "torch-eager", "precision": "fp32",
             "batch_size": 8, "p50_ms": baseline_ms, "ratio_vs_baseline": 1.0},
            {"workload": "image", "pipeline": "runtime", "backend": "onnxruntime", "precision": "fp32",
             "batch_size": 8, "p50_ms": runtime_ms, "ratio_vs_baseline": baseline_ms / runtime_ms},
        ]
        end_to_end = [{"images": 64, "pipeline": "runtime", "backend": "onnxruntime", "precision": "fp32",
                       "batch_size": 32, "images_per_s": 640 / runtime_ms,
                       "ratio_vs_baseline": baseline_ms / runtime_ms}]
        return {"rows": rows, "end_to_end": end_to_end, "elapsed_s": 10.0, "machine": {"load_average_1m_end": load}}

    # the middle round ran on a busy machine: both sides slowed, its ratio is still paired
    combined = combine_rounds([report(100, 80, 0.1), report(300, 150, 3.0), report(110, 85, 0.2)])
    runtime = combined["rows"][1]
    assert runtime["p50_ms"] == 85 and runtime["rounds"] == 3
    assert runtime["ratio_vs_baseline"] == pytest.approx(110 / 85)  # median of 1.25, 2.0, 1.294
    assert runtime["ratio_range"] == [pytest.approx(1.25), pytest.approx(2.0)]
    assert combined["end_to_end"][0]["images_per_s"] == pytest.approx(640 / 85)
    assert combined["end_to_end"][0]["ratio_vs_baseline"] == pytest.approx(110 / 85)
    assert combined["rounds"] == 3 and combined["elapsed_s"] == 30 and combined["machine"]["load_average_1m_end"] == 0.2


def test_alternating_blocks_time_only_calls_that_follow_their_own_kind():
    from runtime.bench import measure_alternating

    log: list[str] = []
    calls = [lambda name=name: log.append(name) for name in "abc"]
    timings = measure_alternating(calls, repeats=4, warmup=2, time_budget_s=10.0, block=2)
    assert [len(t.seconds) for t in timings] == [4, 4, 4]
    warm, rounds = log[:6], log[6:]
    assert warm == ["a", "a", "b", "b", "c", "c"]
    # two rounds of three blocks; a block is one settling call and two timed ones of the same call
    blocks = [rounds[i : i + 3] for i in range(0, len(rounds), 3)]
    assert len(blocks) == 6 and all(len(set(b)) == 1 for b in blocks)
    assert [b[0] for b in blocks] == ["a", "b", "c", "b", "c", "a"]  # every call in every round, first slot rotating


def test_alternating_blocks_stop_on_the_budget_but_not_below_the_floor():
    import time

    from runtime.bench import MIN_REPEATS, measure_alternating

    slow = [lambda: time.sleep(0.02), lambda: time.sleep(0.01)]
    timings = measure_alternating(slow, repeats=1000, warmup=0, time_budget_s=0.0, block=1)
    assert [len(t.seconds) for t in timings] == [MIN_REPEATS, MIN_REPEATS]
    assert min(timings[0].seconds) >= 0.02 and min(timings[1].seconds) >= 0.01  # each timing is its own call's
    assert [len(t.seconds) for t in measure_alternating(slow, repeats=2, warmup=0, time_budget_s=10.0)] == [2, 2]


def test_slow_calls_alternate_one_timed_call_per_block():
    import time

    from runtime.bench import measure_alternating

    log: list[str] = []

    def slow(name):
        time.sleep(0.02)
        log.append(name)

    timings = measure_alternating([lambda: slow("a"), lambda: slow("b")], repeats=20, warmup=1, time_budget_s=0.1)
    # the warm-up says a call takes 20 ms, the budget allows ~5 per call: blocks of one timed call, so the
    # rounds go a a b b / b b a a / ... (settling call, timed call), not five timed calls of a before any of b
    rounds = log[2:]
    assert [len(t.seconds) for t in timings] == [3, 3]
    assert rounds[:8] == ["a", "a", "b", "b", "b", "b", "a", "a"]


def test_a_single_call_is_timed_by_its_timer_without_settling_calls():
    from runtime.bench import measure_alternating

    log: list[str] = []

    def timer(call) -> float:  # a clock of its own, as device_check's CUDA events are
        call()
        return 0.5

    (timing,) = measure_alternating([lambda: log.append("a")], repeats=3, warmup=1, time_budget_s=10.0,
                                    timers=[timer], block=1)
    assert timing.seconds == [0.5, 0.5, 0.5]
    assert len(log) == 4  # one warm-up call and three timed ones: nothing else to settle from
