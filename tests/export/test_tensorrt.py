"""``build-engines`` around its TensorRT calls: profiles derived from the spec, the quick refusal without TensorRT or a
GPU, and the build flow (atomic plans, manifest entries, parity verdicts, exit status) with the TensorRT build and
the parity run stood in for, so it runs on a CPU. Building real engines is covered by the GPU test in
``tests/runtime/test_tensorrt_backend.py``."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from export import tensorrt as engines
from ruclip_tiny import cli, spec
from runtime.backends import tensorrt as trt_backend
from runtime.bundle import Bundle, BundleError
from runtime.manifest import ENGINE_FORMAT, ParityRecord
from tests.runtime.fake_bundle import build_fake_bundle, flip_byte

H200 = trt_backend.Machine("11.4.0", True, "90", "NVIDIA H200")


@pytest.fixture
def fake_bundle(tmp_path):
    return build_fake_bundle(tmp_path / "bundle")


# --- profiles --------------------------------------------------------------------------------------------------------


def test_profiles_follow_the_spec_dynamic_dimensions():
    visual = engines.profile_shapes("visual", max_batch=256, opt_batch=32)
    assert list(visual) == [t.name for t in spec.VISUAL.inputs]
    assert visual["pixels"].to_dict() == {"min": [1, 3, 224, 224], "opt": [32, 3, 224, 224], "max": [256, 3, 224, 224]}
    textual = engines.profile_shapes("textual", max_batch=64, opt_batch=8, opt_sequence=77)
    assert list(textual) == ["input_ids", "attention_mask"]
    for shapes in textual.values():
        assert (shapes.min, shapes.opt, shapes.max) == ((1, 1), (8, 77), (64, spec.MAX_TEXT_LENGTH))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_batch": 16, "opt_batch": 32}, r"--opt-batch 32 is outside batch 1\.\.16.*raise --max-batch"),
        ({"opt_batch": 0}, r"--opt-batch 0 is outside batch 1\.\.256"),
        ({"opt_sequence": 78}, r"--opt-seq 78 is outside seq 1\.\.77"),
    ],
)
def test_profiles_tensorrt_would_reject_are_refused_naming_the_option(arguments, message):
    with pytest.raises(engines.EngineBuildError, match=message):
        engines.profile_shapes("textual", **arguments)


# --- refusing quickly ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "message"),
    [
        (
            trt_backend.Machine(None, True, "90"),
            "tensorrt Python package is not installed.*pip install .\\.\\[gpu\\]. in a checkout of ruclip-tiny",
        ),
        (trt_backend.Machine("11.4.0", False, "90"), "polygraphy"),
        (trt_backend.Machine("11.4.0", True, None), "no NVIDIA GPU found.*GPU model that will serve"),
    ],
)
def test_machines_that_cannot_build_are_named(machine, message):
    with pytest.raises(engines.EngineBuildError, match=message):
        engines.check_build_prerequisites(machine)


def test_build_engines_without_tensorrt_fails_with_a_message_no_traceback_and_no_torch(fake_bundle):
    machine = trt_backend.this_machine()
    if machine.tensorrt is not None and machine.compute_capability is not None:
        pytest.skip("this machine has TensorRT and a GPU: build-engines would build")
    code = (
        "import sys\n"
        "from ruclip_tiny.cli import main\n"
        f"code = main(['build-engines', {str(fake_bundle)!r}])\n"
        "assert 'torch' not in sys.modules, 'build-engines imported torch before refusing'\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "ruclip-tiny build-engines: error: cannot build TensorRT engines" in result.stderr
    assert not (fake_bundle / "engines").exists()


# --- the build flow, TensorRT stood in for ---------------------------------------------------------------------------


class FakeBuilder:
    """Returns distinct bytes per graph and records what it was asked to build; fails for ``fail_on`` graphs."""

    def __init__(self, fail_on: str | None = None):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, onnx_path, profiles, workspace_gib, cache, stream=None):
        self.calls.append((onnx_path.name, profiles, workspace_gib, cache))
        if self.fail_on and onnx_path.name.startswith(self.fail_on):
            raise engines.EngineBuildError(f"TensorRT could not build {onnx_path.name}")
        cache.write_bytes(b"timing cache")
        return f"engine built from {onnx_path.name}".encode() * 1000


def parity_passing(*passing):
    """A stand-in for the parity run: marks engines deployable when their encoder is in ``passing``, as parity
    records verdicts in the manifest."""

    def run(root, precision):
        bundle = Bundle.load(root)
        results = {}
        for key, entry in bundle.artifacts.items():
            if entry.format == ENGINE_FORMAT and entry.precision == precision:
                entry.deployable = entry.encoder in passing
                results[key] = {"passed": entry.deployable}
                bundle.manifest.parity[key] = ParityRecord(passed=entry.deployable)
        bundle.write_manifest()
        return {"passed": all(r["passed"] for r in results.values()), "results": results}

    return run


def test_engines_are_written_under_their_key_and_recorded_with_what_they_were_built_for(fake_bundle):
    builder = FakeBuilder()
    result = engines.build_engines(
        fake_bundle, "fp16", max_batch=64, opt_batch=16, workspace_gib=2, machine=H200,
        builder=builder, parity=parity_passing("visual", "textual"), timer=engines.StageTimer(io.StringIO()),
    )
    assert [call[0] for call in builder.calls] == ["visual.fp16.onnx", "textual.fp16.onnx"]
    assert {call[3] for call in builder.calls} == {fake_bundle / "engines/11.4.0_sm90/timing.cache"}
    assert result.failed == []
    manifest = json.loads((fake_bundle / "manifest.json").read_text())
    entry = manifest["artifacts"]["engines/11.4.0_sm90/textual.fp16"]
    assert entry["path"] == "engines/11.4.0_sm90/textual.fp16.plan"
    machine = (entry["tensorrt_version"], entry["compute_capability"], entry["gpu_name"])
    assert machine == ("11.4.0", "90", "NVIDIA H200")
    assert entry["profiles"]["input_ids"] == {"min": [1, 1], "opt": [16, 32], "max": [64, 77]}
    assert entry["source"]["artifact"] == "textual.fp16"
    assert entry["source"]["sha256"] == manifest["artifacts"]["textual.fp16"]["sha256"]
    assert entry["builder"]["workspace_gib"] == 2 and entry["builder"]["strongly_typed"] is True
    assert entry["max_batch"] == 64 and entry["deployable"] is True
    assert "engines/11.4.0_sm90" in manifest["tensorrt_timing_caches"]
    Bundle.load(fake_bundle).verify(list(result.engines))  # size and sha256 match the files
    assert sorted(p.name for p in (fake_bundle / "engines/11.4.0_sm90").iterdir()) == [
        "textual.fp16.plan", "timing.cache", "visual.fp16.plan"
    ]


def test_an_engine_failing_parity_is_kept_but_not_deployable_and_the_command_exits_1(fake_bundle, monkeypatch, capsys):
    monkeypatch.setattr(trt_backend, "this_machine", lambda: H200)
    monkeypatch.setattr(engines, "build_plan", FakeBuilder())
    monkeypatch.setattr(engines, "run_engine_parity", parity_passing("visual"))
    monkeypatch.setattr("runtime.parity.format_table", lambda report: "parity table")
    assert cli.main(["build-engines", str(fake_bundle)]) == 1
    out = capsys.readouterr().out
    assert "PARITY FAILED for engines/11.4.0_sm90/textual.fp16" in out and "kept for inspection" in out
    artifacts = Bundle.load(fake_bundle).artifacts
    assert artifacts["engines/11.4.0_sm90/visual.fp16"].deployable is True
    assert artifacts["engines/11.4.0_sm90/textual.fp16"].deployable is False
    assert (fake_bundle / "engines/11.4.0_sm90/textual.fp16.plan").is_file()

    monkeypatch.setattr(engines, "run_engine_parity", parity_passing("visual", "textual"))
    assert cli.main(["build-engines", str(fake_bundle)]) == 0
    assert Bundle.load(fake_bundle).artifacts["engines/11.4.0_sm90/textual.fp16"].deployable is True


def test_a_failed_build_leaves_no_plan_and_no_manifest_entry(fake_bundle):
    with pytest.raises(engines.EngineBuildError, match="could not build textual"):
        engines.build_engines(fake_bundle, machine=H200, builder=FakeBuilder(fail_on="textual"),
                              check_parity=False, timer=engines.StageTimer(io.StringIO()))
    directory = fake_bundle / "engines/11.4.0_sm90"
    assert sorted(p.name for p in directory.iterdir()) == ["timing.cache", "visual.fp16.plan"]  # no .partial
    artifacts = Bundle.load(fake_bundle).artifacts
    assert "engines/11.4.0_sm90/visual.fp16" in artifacts and "engines/11.4.0_sm90/textual.fp16" not in artifacts


def test_a_rebuild_replaces_the_entry_and_drops_the_old_verdict(fake_bundle):
    quiet = engines.StageTimer(io.StringIO())
    engines.build_engines(fake_bundle, machine=H200, builder=FakeBuilder(), parity=parity_passing("visual", "textual"),
                          timer=quiet)
    engines.build_engines(fake_bundle, machine=H200, builder=FakeBuilder(), check_parity=False, timer=quiet)
    bundle = Bundle.load(fake_bundle)
    assert bundle.artifacts["engines/11.4.0_sm90/visual.fp16"].deployable is False
    assert "engines/11.4.0_sm90/visual.fp16" not in bundle.manifest.parity


def test_engines_are_built_only_from_graphs_that_match_the_manifest(fake_bundle):
    flip_byte(fake_bundle / "visual.onnx")
    with pytest.raises(BundleError, match="visual.fp32.*does not match the manifest"):
        engines.build_engines(fake_bundle, "fp32", machine=H200, builder=FakeBuilder(), check_parity=False,
                              timer=engines.StageTimer(io.StringIO()))
    assert not (fake_bundle / "engines").exists()


def test_the_progress_monitor_prints_the_top_phases_and_never_cancels():
    stream = io.StringIO()
    monitor = engines.progress_monitor_class(object)(stream)
    monitor.phase_start("Building engine", None, 3)
    monitor.phase_start("Tactic selection", "Building engine", 120)
    monitor.phase_start("Timing layer 7", "Tactic selection", 40)  # depth 2: too fine to print
    assert monitor.step_complete("Timing layer 7", 1) is True
    monitor.phase_finish("Timing layer 7")
    monitor.phase_finish("Tactic selection")
    monitor.phase_finish("Building engine")
    lines = stream.getvalue().splitlines()
    assert [line.strip().split(" (")[0].split(" done")[0] for line in lines] == [
        "Building engine", "Tactic selection", "Tactic selection", "Building engine"
    ]
    assert "Timing layer" not in stream.getvalue() and lines[1].startswith("      Tactic selection (120 steps)")
