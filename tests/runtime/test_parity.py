"""Parity engine: metrics on constructed arrays, thresholds per precision, and ``ruclip-tiny parity`` end to end on
a tiny fake bundle (onnx.helper graphs with the real I/O contract) — no torch anywhere."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ruclip_tiny import cli
from runtime import parity
from runtime.backends import BackendError
from runtime.backends.onnxruntime import OnnxRuntimeEncoder
from runtime.bundle import Bundle
from tests.runtime import fake_bundle


def _parity(root, *flags: str) -> int:
    """``ruclip-tiny parity ROOT FLAGS`` through the CLI's entry point: its exit code."""
    return cli.main(["parity", str(root), *flags])


def _features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (rows, 768)).astype(np.float32)


def test_the_parity_engine_imports_without_torch():
    code = "import runtime.parity, sys; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(result.stdout.split())
    assert {"runtime.parity", "runtime.backends.onnxruntime", "onnxruntime"} <= modules
    assert not {"torch", "timm", "transformers", "torchvision", "matplotlib"} & modules


# --- metrics -------------------------------------------------------------------------------------------------------


def test_row_cosine_measures_a_known_rotation():
    reference = _features(3)
    candidate = reference.copy()
    u = reference[1] / np.linalg.norm(reference[1])
    v = np.zeros(768)
    v[0] = 1.0
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    angle = 0.01
    candidate[1] = (math.cos(angle) * u + math.sin(angle) * v) * 5.0  # rotated and rescaled: scale must not count
    cosines = parity.row_cosines(candidate, reference)
    assert cosines[0] == pytest.approx(1.0, abs=1e-12)
    assert cosines[1] == pytest.approx(math.cos(angle), abs=1e-7)
    metrics = parity.feature_metrics(candidate, reference)
    assert metrics["min_cosine"] == pytest.approx(math.cos(angle), abs=1e-7)
    assert metrics["mean_cosine"] == pytest.approx((2 + math.cos(angle)) / 3, abs=1e-7)


def test_abs_and_relative_errors_of_a_known_perturbation():
    reference = np.ones((2, 768), np.float32)
    reference[0, 0] = 4.0  # the peak
    reference[0, 1] = 2.0
    reference[1, 5] = 1e-6  # tiny: below the element-wise floor
    candidate = reference.copy()
    candidate[0, 1] += 0.02  # relative 0.01 on an element of 2.0
    candidate[1, 5] += 1e-5  # relative 10 on a tiny element — must be ignored by the element-wise measure
    assert parity.max_abs_error(candidate, reference) == pytest.approx(0.02, rel=1e-4)
    assert parity.max_relative_error(candidate, reference) == pytest.approx(0.02 / 4.0, rel=1e-4)
    assert parity.max_elementwise_relative_error(candidate, reference) == pytest.approx(0.01, rel=1e-4)
    # with no floor the tiny element dominates: the floor is what keeps the measure meaningful
    assert parity.max_elementwise_relative_error(candidate, reference, floor=0.0) > 5


def test_a_nan_row_is_counted_and_fails_every_precision():
    reference = _features(4)
    candidate = reference.copy()
    candidate[2, 7] = np.nan
    candidate[3, 0] = np.inf
    metrics = {
        **parity.feature_metrics(candidate, reference),
        **parity.similarity_metrics(candidate, _features(5, 1), reference, _features(5, 1)),
    }
    assert (metrics["nan"], metrics["inf"]) == (1, 1)
    assert math.isnan(metrics["min_cosine"]) and math.isnan(metrics["max_similarity_change"])
    for precision in ("fp32", "fp16"):
        failures = parity.judge(metrics, parity.thresholds_for(precision))
        assert any("1 NaN and 1 Inf" in reason for reason in failures)
        assert any("min row cosine" in reason for reason in failures)


def test_top1_ignores_a_near_tie_flip_but_catches_a_clear_margin_flip():
    reference = np.array([[0.50, 0.4995, 0.10], [0.90, 0.20, 0.10]])
    near_tie_flipped = np.array([[0.4990, 0.4996, 0.10], [0.90, 0.20, 0.10]])
    counts = parity.top1_rows(near_tie_flipped, reference)
    assert counts == {"rows": 2, "clear": 1, "agree": 1, "flipped": []}

    clear_flipped = np.array([[0.50, 0.4995, 0.10], [0.20, 0.90, 0.10]])
    counts = parity.top1_rows(clear_flipped, reference)
    assert counts == {"rows": 2, "clear": 1, "agree": 0, "flipped": [1]}
    failures = parity.judge({"top1": {"image_to_text": counts}}, parity.thresholds_for("fp16"))
    assert failures and "0/1 clear-margin rows" in failures[0]


def test_top1_is_checked_in_both_directions():
    reference = np.array([[0.9, 0.1], [0.5, 0.3]])
    # every image keeps its best text, but text 1 now prefers image 0 over image 1 (a clear 0.2 margin before)
    candidate = np.array([[0.9, 0.35], [0.5, 0.3]])
    agreement = parity.top1_agreement(candidate, reference)
    assert agreement["image_to_text"] == {"rows": 2, "clear": 2, "agree": 2, "flipped": []}
    assert agreement["text_to_image"] == {"rows": 2, "clear": 2, "agree": 1, "flipped": [1]}
    failures = parity.judge({"top1": agreement}, parity.thresholds_for("fp32"))
    assert len(failures) == 1 and "text to image" in failures[0]


def test_similarity_change_is_the_largest_moved_cosine():
    image, text = _features(3, 1), _features(4, 2)
    moved = image.copy()
    moved[0] += 0.05 * text[2]  # pulls image 0 towards text 2
    metrics = parity.similarity_metrics(moved, text, image, text)
    expected = np.abs(parity.cosine_similarities(moved, text) - parity.cosine_similarities(image, text)).max()
    assert metrics["max_similarity_change"] == pytest.approx(expected)
    assert metrics["max_similarity_change"] > 1e-3


# --- thresholds ----------------------------------------------------------------------------------------------------


def test_thresholds_are_per_precision():
    fp32, fp16 = parity.thresholds_for("fp32"), parity.thresholds_for("fp16")
    assert (fp32.min_cosine, fp32.max_abs_error_per_norm, fp32.max_similarity_change) == (0.99999, 1e-4, 1e-4)
    assert (fp16.min_cosine, fp16.max_abs_error_per_norm, fp16.max_similarity_change) == (0.9999, None, 1e-3)
    assert fp32.clear_margin == fp16.clear_margin == 1e-3
    assert fp32.min_top1_agreement == fp16.min_top1_agreement == 1.0
    with pytest.raises(ValueError, match="int8"):
        parity.thresholds_for("int8")

    # what FP16 rounding looks like: fine for fp16, far outside the fp32 bars
    fp16_like = {
        "min_cosine": 0.99995,
        "max_abs_error": 0.01,
        "mean_reference_norm": 10.0,
        "max_similarity_change": 5e-4,
        "nan": 0,
        "inf": 0,
    }
    assert parity.judge(fp16_like, fp16) == []
    reasons = parity.judge(fp16_like, fp32)
    assert len(reasons) == 3
    assert any("max abs error 0.01 > 0.001" in reason for reason in reasons)


def test_plain_cuda_provider_gets_tf32_switched_off():
    assert parity.parity_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"use_tf32": "0"}),
        "CPUExecutionProvider",
    ]
    explicit = ("CUDAExecutionProvider", {"use_tf32": "1"})
    assert parity.parity_providers([explicit]) == [explicit]
    assert "CPUExecutionProvider" in parity.parity_providers(None)


# --- the ONNX Runtime runner -----------------------------------------------------------------------------------------


def test_runner_batches_in_order_and_names_bad_feeds(tmp_path):
    root = fake_bundle.build_fake_bundle(tmp_path / "bundle", images=7)
    probe = np.load(root / "probe/inputs.npz")
    encoder = OnnxRuntimeEncoder(root / "visual.onnx")
    assert (encoder.input_names, encoder.output_names) == (["pixels"], ["image_features"])
    whole = encoder.run({"pixels": probe["pixels"]})
    batched = encoder.run_batched({"pixels": probe["pixels"]}, batch_size=3)  # 3 + 3 + 1 rows
    assert whole.dtype == batched.dtype == np.float32 and batched.shape == (7, 768)
    np.testing.assert_allclose(batched, whole, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(batched, np.load(root / "probe/reference.npz")["image_features"], rtol=1e-6, atol=1e-6)

    with pytest.raises(BackendError, match=r"takes inputs \['pixels'\]"):
        encoder.run({"image": probe["pixels"]})
    with pytest.raises(BackendError, match="NoSuchExecutionProvider is not available"):
        OnnxRuntimeEncoder(root / "visual.onnx", providers=["NoSuchExecutionProvider"])


# --- end to end on a fake bundle -----------------------------------------------------------------------------------


ARTIFACTS = ("visual.fp32", "textual.fp32", "visual.fp16", "textual.fp16")


@pytest.fixture
def bundle_dir(tmp_path):
    return fake_bundle.build_fake_bundle(tmp_path / "bundle")


def _manifest(root) -> dict:
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))


def _strict_json(path) -> dict:
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_untouched_bundle_passes_and_is_marked_deployable(bundle_dir, capsys):
    assert _parity(bundle_dir) == 0
    out = capsys.readouterr().out
    for key in (*ARTIFACTS, "combined.fp32", "combined.fp16"):
        assert key in out
    assert "FAIL" not in out and str(bundle_dir / "parity/report.json") in out

    report = _strict_json(bundle_dir / "parity/report.json")
    assert report["passed"] is True and report["precisions"] == ["fp32", "fp16"]
    assert sorted(report["results"]) == sorted([*ARTIFACTS, "combined.fp32", "combined.fp16"])
    manifest = _manifest(bundle_dir)
    for key in ARTIFACTS:
        entry = manifest["parity"][key]
        assert entry["passed"] is True and entry["failures"] == [] and entry["error"] is None
        assert entry["sha256"] == manifest["artifacts"][key]["sha256"]
        assert entry["backend"] == "onnxruntime" and entry["provider"] == "CPUExecutionProvider"
        assert entry["thresholds"] == report["thresholds"][entry["precision"]]
        assert manifest["artifacts"][key]["deployable"] is True
    # FP16 compute really differs from the reference, and stays inside the fp16 bars
    fp16 = manifest["parity"]["textual.fp16"]
    assert 0 < fp16["max_abs_error"] and 1 - fp16["min_cosine"] < 1e-4 and fp16["max_similarity_change"] < 1e-3
    # the probe has near-tie texts: they are left out of the text→image top-1, not counted as agreeing
    text_to_image = fp16["top1"]["text_to_image"]
    assert text_to_image["clear"] < text_to_image["rows"] == 8
    assert text_to_image["agree"] == text_to_image["clear"]


@pytest.mark.parametrize(
    ("key", "initializer"),
    [("visual.fp32", fake_bundle.VISUAL_W1), ("textual.fp16", fake_bundle.TEXTUAL_W1)],
)
def test_a_weight_scaled_by_one_percent_fails_that_artifact_only(bundle_dir, capsys, key, initializer):
    graph = bundle_dir / Bundle.load(bundle_dir).artifact(key).path
    fake_bundle.scale_initializer(graph, initializer, 1.01)
    fake_bundle.refresh_manifest_entry(bundle_dir, key)  # so the sha256 check does not catch it first

    assert _parity(bundle_dir) == 1
    captured = capsys.readouterr()
    assert f"FAIL {key}: min row cosine" in captured.out or f"FAIL {key}: max abs error" in captured.out
    assert "PARITY FAILED" in captured.err

    manifest = _manifest(bundle_dir)
    assert manifest["artifacts"][key]["deployable"] is False
    entry = manifest["parity"][key]
    assert entry["passed"] is False and entry["error"] is None and entry["failures"]
    assert any("similarity moved" in reason for reason in entry["failures"])
    for other in ARTIFACTS:
        if other != key:
            assert manifest["artifacts"][other]["deployable"] is True, other
            assert manifest["parity"][other]["passed"] is True, other
    precision = key.split(".")[1]
    other_precision = "fp16" if precision == "fp32" else "fp32"
    assert manifest["parity"][f"combined.{precision}"]["passed"] is False
    assert manifest["parity"][f"combined.{other_precision}"]["passed"] is True


def test_a_flipped_byte_is_caught_by_the_sha256_check(bundle_dir, capsys):
    fake_bundle.flip_byte(bundle_dir / "visual.fp16.onnx")
    assert _parity(bundle_dir) == 1
    out = capsys.readouterr().out

    report = _strict_json(bundle_dir / "parity/report.json")
    entry = report["results"]["visual.fp16"]
    assert entry["passed"] is False and "does not match the manifest" in entry["error"]
    assert "sha256 differs" in entry["error"] and "FAIL visual.fp16" in out
    assert "not judged: visual.fp16" in report["results"]["combined.fp16"]["error"]
    manifest = _manifest(bundle_dir)
    assert manifest["artifacts"]["visual.fp16"]["deployable"] is False
    assert manifest["artifacts"]["textual.fp16"]["deployable"] is True


def test_nan_output_is_reported_and_report_stays_valid_json(bundle_dir):
    fake_bundle.scale_initializer(bundle_dir / "textual.onnx", "textual.b1", float("nan"))
    fake_bundle.refresh_manifest_entry(bundle_dir, "textual.fp32")
    report = parity.run_parity(bundle_dir, precisions=("fp32",))
    entry = report.results["textual.fp32"]
    assert entry.metrics.nan == 8 * 768 and not entry.passed
    assert math.isnan(entry.metrics.min_cosine)
    written = _strict_json(bundle_dir / "parity/report.json")["results"]["textual.fp32"]
    assert written["min_cosine"] is None and written["nan"] == 8 * 768
    assert report.results["visual.fp32"].passed is True


def test_missing_artifacts_of_a_precision_are_failures(tmp_path, capsys):
    root = fake_bundle.build_fake_bundle(tmp_path / "bundle", precisions=("fp32",))
    assert _parity(root, "--precision", "all") == 1
    report = _strict_json(root / "parity/report.json")
    assert "has no artifact 'visual.fp16'" in report["results"]["visual.fp16"]["error"]
    assert report["results"]["visual.fp32"]["passed"] is True
    manifest = _manifest(root)
    assert "visual.fp16" not in manifest["artifacts"] and "visual.fp16" not in manifest["parity"]
    assert manifest["artifacts"]["visual.fp32"]["deployable"] is True
    # asking for fp32 only judges what exists
    assert _parity(root, "--precision", "fp32") == 0
    capsys.readouterr()


def test_a_directory_without_manifest_exits_2_naming_it(tmp_path, capsys):
    assert _parity(tmp_path) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "no manifest.json" in err and len(err.strip().splitlines()) == 1


def test_a_bundle_without_probe_reference_exits_2(bundle_dir, capsys):
    (bundle_dir / "probe/reference.npz").unlink()
    assert _parity(bundle_dir) == 2
    assert "probe/reference.npz is missing" in capsys.readouterr().err


def test_a_changed_probe_reference_is_caught_by_its_sha256(bundle_dir, capsys):
    path = bundle_dir / "probe/reference.npz"
    with np.load(path) as data:
        reference = dict(data)
    reference["text_features"][0] *= 1.01  # a tampered reference would silently move every verdict
    np.savez(path, **reference)
    assert _parity(bundle_dir) == 2
    assert "probe/reference.npz does not match the manifest" in capsys.readouterr().err


def test_unknown_precision_exits_2(bundle_dir, capsys):
    with pytest.raises(SystemExit) as exited:
        _parity(bundle_dir, "--precision", "int8")
    assert exited.value.code == 2
    assert "int8" in capsys.readouterr().err


def test_write_false_leaves_the_bundle_untouched(bundle_dir):
    before = (bundle_dir / "manifest.json").read_bytes()
    report = parity.run_parity(bundle_dir, write=False)
    assert report.passed and report.written is None
    assert (bundle_dir / "manifest.json").read_bytes() == before
    assert not (bundle_dir / "parity").exists()


def test_plot_is_skipped_without_matplotlib(bundle_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail as if not installed
    assert _parity(bundle_dir, "--precision", "fp16") == 0
    assert "plot:     skipped — matplotlib is not installed" in capsys.readouterr().out
    assert not (bundle_dir / "parity/errors.png").exists()
    assert "matplotlib" in _strict_json(bundle_dir / "parity/report.json")["written"]["plot_skipped"]


def test_plot_is_written_with_matplotlib(bundle_dir):
    pytest.importorskip("matplotlib", reason="matplotlib is optional (ruclip-tiny[plots]); the plot is not drawn")
    report = parity.run_parity(bundle_dir)
    assert report.written.plot == "parity/errors.png"
    assert (bundle_dir / "parity/errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- parity of any backend -----------------------------------------------------------------------------------------

ENGINE_KEYS = {"visual": "engine/test_sm90/visual.fp16", "textual": "engine/test_sm90/textual.fp16"}


def _fake_engine_module(noise: float = 0.0):
    """A backend module in the shape ``plan_backend`` loads, that runs the fake bundle's fp16 graphs but reports
    its own manifest artifacts (as the TensorRT backend reports its engines); ``noise`` perturbs the image
    features."""
    from types import SimpleNamespace

    from runtime.backends import Backend
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    class EngineLike(Backend):
        name, device, max_batch = "tensorrt", "cuda", None

        def __init__(self, bundle, precision):
            self.inner = OnnxRuntimeBackend.from_bundle(bundle, precision, providers=["cpu"])
            self.precision = precision

        def artifact_key(self, encoder):
            return ENGINE_KEYS[encoder]

        def _encode_pixels(self, pixels):
            features = self.inner.encode_pixels(pixels)
            return features + noise * np.abs(features).max()

        def _encode_tokens(self, input_ids, attention_mask):
            return self.inner.encode_tokens(input_ids, attention_mask)

    return SimpleNamespace(
        plan_device=lambda options: ("cuda", options),
        check_precision=lambda precision, device: None,
        plan_artifacts=lambda bundle, precision, options, allow: (list(ENGINE_KEYS.values()), options),
        from_bundle=lambda bundle, precision, **options: EngineLike(bundle, precision),
    )


@pytest.fixture
def engine_bundle(bundle_dir, monkeypatch):
    """The fake bundle with two 'engine' artifacts in its manifest, and the tensorrt backend slot taken by a fake
    that reports them."""
    import runtime.backends

    manifest = _manifest(bundle_dir)
    for encoder, key in ENGINE_KEYS.items():
        path = bundle_dir / f"{key}.plan"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{encoder} engine bytes".encode())
        manifest["artifacts"][key] = {
            "path": f"{key}.plan",
            "format": "tensorrt",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "size": path.stat().st_size,
            "deployable": False,
        }
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    real_module = runtime.backends.backend_module
    state = {"noise": 0.0}
    monkeypatch.setattr(
        runtime.backends,
        "backend_module",
        lambda name: _fake_engine_module(state["noise"]) if name == "tensorrt" else real_module(name),
    )
    return bundle_dir, state


def test_a_backend_that_runs_manifest_artifacts_gets_them_marked_deployable(engine_bundle, capsys):
    root, _ = engine_bundle
    before = _manifest(root)
    assert _parity(root, "--precision", "fp16", "--backend", "tensorrt") == 0
    out = capsys.readouterr().out
    assert "tensorrt:combined.fp16" in out and "FAIL" not in out

    report = _strict_json(root / "parity/report.tensorrt.json")
    assert sorted(report["results"]) == sorted([*ENGINE_KEYS.values(), "tensorrt:combined.fp16"])
    manifest = _manifest(root)
    for key in ENGINE_KEYS.values():
        assert manifest["artifacts"][key]["deployable"] is True
        entry = manifest["parity"][key]
        assert entry["passed"] is True and entry["backend"] == "tensorrt" and entry["device"] == "cuda"
        assert entry["sha256"] == manifest["artifacts"][key]["sha256"] and entry["min_cosine"] > 0.9999
    # the ONNX graphs' own flags and the onnxruntime report are not touched by another backend's run
    for key in ARTIFACTS:
        assert manifest["artifacts"][key] == before["artifacts"][key]
    assert not (root / "parity/report.json").exists()


def test_a_backend_off_by_one_percent_gets_its_artifact_marked_not_deployable(engine_bundle, capsys):
    root, state = engine_bundle
    state["noise"] = 0.01
    assert _parity(root, "--precision", "fp16", "--backend", "tensorrt") == 1
    captured = capsys.readouterr()
    assert f"FAIL {ENGINE_KEYS['visual']}" in captured.out and "PARITY FAILED" in captured.err
    manifest = _manifest(root)
    assert manifest["artifacts"][ENGINE_KEYS["visual"]]["deployable"] is False
    assert manifest["artifacts"][ENGINE_KEYS["textual"]]["deployable"] is True
    assert manifest["parity"]["tensorrt:combined.fp16"]["passed"] is False


def test_a_changed_engine_file_is_caught_before_the_backend_runs(engine_bundle, capsys):
    root, _ = engine_bundle
    fake_bundle.flip_byte(root / f"{ENGINE_KEYS['textual']}.plan")
    assert _parity(root, "--precision", "fp16", "--backend", "tensorrt") == 1
    report = _strict_json(root / "parity/report.tensorrt.json")
    for entry in report["results"].values():
        assert entry["passed"] is False
    assert any("sha256" in reason for reason in report["results"]["tensorrt:textual.fp16"]["failures"])


def test_backend_options_are_checked_per_backend(bundle_dir, capsys):
    assert _parity(bundle_dir, "--backend", "torch", "--providers", "cpu") == 2
    assert "--providers is for --backend onnxruntime" in capsys.readouterr().err
    assert _parity(bundle_dir, "--device", "cuda") == 2
    assert "--device is for --backend torch" in capsys.readouterr().err


@pytest.fixture
def linked_bundle(exported_bundle, tmp_path):
    """A copy of the exported bundle made of hard links: parity rewrites files by rename, never in place."""
    copy = tmp_path / "bundle"
    shutil.copytree(exported_bundle, copy, copy_function=os.link)
    return copy


@pytest.mark.slow
def test_torch_backend_parity_on_the_cpu_skips_fp16_and_passes_fp32(linked_bundle, capsys):
    before = _manifest(linked_bundle)
    assert _parity(linked_bundle, "--backend", "torch", "--device", "cpu") == 0
    out = capsys.readouterr().out
    assert "skipped fp16: the torch backend does not run fp16 on the CPU" in out

    report = _strict_json(linked_bundle / "parity/report.torch.json")
    assert report["skipped"].keys() == {"fp16"} and report["precisions"] == ["fp32"]
    assert sorted(report["results"]) == ["torch:combined.fp32", "torch:textual.fp32", "torch:visual.fp32"]
    for entry in report["results"].values():
        assert entry["passed"] is True and entry["min_cosine"] >= 0.99999 and entry["device"] == "cpu"
    manifest = _manifest(linked_bundle)
    assert manifest["artifacts"] == before["artifacts"]  # the reference rebuilt in torch marks no artifact
    assert manifest["parity"]["torch:visual.fp32"]["passed"] is True
    assert manifest["parity"]["visual.fp32"] == before["parity"]["visual.fp32"]


def test_torch_fp16_asked_for_by_name_on_the_cpu_fails_with_the_reason(linked_bundle, capsys):
    assert _parity(linked_bundle, "--precision", "fp16", "--backend", "torch", "--device", "cpu") == 1
    out = capsys.readouterr().out
    assert "FAIL torch:visual.fp16: the torch backend does not run fp16 on the CPU" in out


# --- the probe is trusted only as the manifest describes it, and never unpickled ------------------------------------


class _OpensAFileWhenUnpickled:
    """Pickles as ``open(path, "w")``: if anything unpickles it, ``path`` appears."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_probe_holding_an_object_array_is_refused_and_never_unpickled(bundle_dir, tmp_path, capsys):
    marker = tmp_path / "unpickled"
    path = bundle_dir / "probe/inputs.npz"
    with np.load(path) as data:
        arrays = dict(data)
    arrays["texts"] = np.array([_OpensAFileWhenUnpickled(str(marker))] * len(arrays["texts"]), dtype=object)
    np.savez(path, **arrays)
    fake_bundle.refresh_probe_entries(bundle_dir)  # its sha256 is right: only allow_pickle=False stands in the way
    assert cli.main(["parity", str(bundle_dir)]) == 2
    err = capsys.readouterr().err
    assert "probe/inputs.npz: texts is an object array" in err and "never loads" in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_probe_files_the_manifest_does_not_describe_are_refused(bundle_dir, capsys):
    fake_bundle.edit_manifest(bundle_dir, lambda manifest: manifest["probe"].update(files=[]))
    assert cli.main(["parity", str(bundle_dir)]) == 2
    assert "probe.files lists no size and sha256 for probe/inputs.npz" in capsys.readouterr().err


# --- --no-write, and bundles that cannot be written -----------------------------------------------------------------


def test_no_write_reports_and_leaves_every_byte_and_mtime_of_the_bundle_alone(bundle_dir, capsys):
    before = fake_bundle.snapshot(bundle_dir)
    assert cli.main(["parity", str(bundle_dir), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "combined.fp32" in out and "combined.fp16" in out and "PASS" in out
    assert f"nothing written (--no-write): {bundle_dir} is unchanged" in out
    assert fake_bundle.snapshot(bundle_dir) == before


def test_no_write_reports_a_failure_without_marking_anything(bundle_dir, capsys):
    fake_bundle.scale_initializer(bundle_dir / "visual.onnx", fake_bundle.VISUAL_W1, 1.01)
    fake_bundle.refresh_manifest_entry(bundle_dir, "visual.fp32")
    before = fake_bundle.snapshot(bundle_dir)
    assert cli.main(["parity", str(bundle_dir), "--no-write"]) == 1
    captured = capsys.readouterr()
    assert "FAIL visual.fp32" in captured.out and "nothing was marked (--no-write)" in captured.err
    assert fake_bundle.snapshot(bundle_dir) == before


def test_a_write_that_fails_is_one_line_suggesting_no_write(bundle_dir, capsys):
    """The parity directory replaced by a file makes the write fail for real (root ignores permission bits)."""
    (bundle_dir / "parity").write_text("a file where the parity directory goes\n")
    before = fake_bundle.snapshot(bundle_dir)
    assert cli.main(["parity", str(bundle_dir)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"ruclip-tiny parity: error: cannot write the parity results into {bundle_dir}")
    assert f"ruclip-tiny parity {bundle_dir} --no-write" in lines[0]
    assert fake_bundle.snapshot(bundle_dir) == before


def test_a_parity_directory_leading_out_of_the_bundle_is_not_written_through(bundle_dir, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (bundle_dir / "parity").symlink_to(outside, target_is_directory=True)
    assert cli.main(["parity", str(bundle_dir)]) == 2
    assert "leads outside the bundle" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


@pytest.fixture
def read_only_bundle(bundle_dir, tmp_path):
    """The fake bundle through a read-only bind mount: writes fail with EROFS even for root. Skipped where this
    process may not mount (not root, or no CAP_SYS_ADMIN); the test above makes a write fail another way."""
    mount_point = tmp_path / "read-only"
    mount_point.mkdir()
    bound = subprocess.run(["mount", "--bind", str(bundle_dir), str(mount_point)], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")
    try:
        remounted = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(mount_point)], capture_output=True, text=True
        )
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remounted.stderr.strip()}")
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_read_only_bundle_is_refused_in_one_line_naming_no_write_which_then_works(read_only_bundle, capsys):
    with pytest.raises(OSError):
        (read_only_bundle / "probe-write").write_text("x")  # the mount really is read-only
    assert cli.main(["parity", str(read_only_bundle)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Read-only file system" in lines[0] and "--no-write" in lines[0]
    assert cli.main(["parity", str(read_only_bundle), "--no-write"]) == 0
    assert "nothing written (--no-write)" in capsys.readouterr().out
