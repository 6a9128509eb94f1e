"""`ruclip-tiny export`: a complete, self-describing bundle, written atomically, gated by parity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from export.bundle import ExportError, export_bundle
from runtime.bundle import Bundle, BundleError
from tests.export.older_bundle import ENGINE, INTERRUPTED_WRITE, RETIRED_ARTIFACT, write_older_bundle


def test_manifest_describes_every_artifact_and_they_verify(exported_bundle):
    bundle = Bundle.load(exported_bundle)
    manifest = bundle.manifest.to_json()
    assert manifest["synthetic"] is True
    assert manifest["checkpoint"] == {"source": "synthetic", "synthetic": True, "seed": 0, "sha256": None}
    assert manifest["embedding_dim"] == 768 and manifest["tokenizer"]["demo_vocabulary"] is True
    graphs = {"visual.fp32", "textual.fp32", "visual.fp16", "textual.fp16", "textual.fp32.fused"}
    assert set(manifest["artifacts"]) == {"reference", *graphs}
    textual = manifest["artifacts"]["textual.fp16"]
    assert textual["path"] == "textual.fp16.onnx" and textual["inputs"][0]["shape"] == ["batch", "seq"]
    assert textual["dims"]["seq"] == {"min": 1, "max": 77}
    bundle.verify()  # sizes and sha256 of every file match
    assert all(manifest["tools"][tool] for tool in ("torch", "onnx", "onnxruntime", "transformers", "timm"))
    assert manifest["export_seconds"] and all(s >= 0 for s in manifest["export_seconds"].values())
    assert (exported_bundle / "tokenizer" / "vocab.txt").is_file()


def test_force_replaced_the_old_directory_with_a_complete_bundle(exported_bundle):
    # the older bundle's files are gone, not merged with the new ones
    for relative in (RETIRED_ARTIFACT, ENGINE, INTERRUPTED_WRITE):
        assert not (exported_bundle / relative).exists(), relative
    assert not (exported_bundle / "engines").exists()
    leftovers = [p.name for p in exported_bundle.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no staging or retired directories left behind


def test_every_graph_passed_parity_and_is_deployable(exported_bundle):
    manifest = Bundle.load(exported_bundle).manifest.to_json()
    for key in ("visual.fp32", "textual.fp32", "visual.fp16", "textual.fp16", "textual.fp32.fused"):
        assert manifest["artifacts"][key]["deployable"] is True, key
        assert manifest["parity"][key]["passed"] is True, key
    assert (exported_bundle / "parity" / "report.json").is_file()


def test_the_library_prints_nothing_and_hands_the_report_lines_to_its_caller(export_output):
    assert export_output["stdout"] == ""
    lines = export_output["lines"]
    assert "SYNTHETIC weights (seed 0)" in lines and "FP16 range, visual" in lines
    assert "combined.fp32" in lines and "PASS" in lines  # the parity table


def test_existing_bundle_is_not_overwritten_without_force(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "manifest.json").write_text("{}")
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_bundle(target)
    assert (target / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_failed_export_leaves_the_old_bundle_intact_and_no_staging(tmp_path, monkeypatch):
    import export.onnx

    target = write_older_bundle(tmp_path / "bundle")
    old_manifest = json.loads((target / "manifest.json").read_text())

    def broken(*args, **kwargs):
        raise RuntimeError("simulated exporter failure")

    monkeypatch.setattr(export.onnx, "export_encoder", broken)
    with pytest.raises(RuntimeError, match="simulated exporter failure"):
        export_bundle(target, force=True)
    assert json.loads((target / "manifest.json").read_text()) == old_manifest
    assert (target / RETIRED_ARTIFACT).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_killed_export_leaves_nothing_that_passes_for_a_bundle(tmp_path):
    target = tmp_path / "bundle"
    process = subprocess.Popen(
        [sys.executable, "-m", "ruclip_tiny.cli", "export", "--out", str(target)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".bundle.partial-") for p in tmp_path.iterdir()):
            assert process.poll() is None and time.monotonic() < deadline, "export never started staging"
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not target.exists()
    with pytest.raises(BundleError, match="is not a bundle"):
        Bundle.load(target)
    for staging in tmp_path.iterdir():
        with pytest.raises(BundleError):
            Bundle.load(staging)


def _copy(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    return copy


def _parity_cli(bundle, *args) -> subprocess.CompletedProcess:
    # torch, timm and transformers are made unimportable: parity must work on a torch-free GPU box.
    code = (
        "import sys\n"
        "for name in ('torch', 'timm', 'transformers', 'torchvision'): sys.modules[name] = None\n"
        "from ruclip_tiny.cli import main\n"
        f"sys.exit(main(['parity', {str(bundle)!r}, *{list(args)!r}]))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def test_parity_cli_runs_without_torch_and_passes_on_the_export(exported_bundle, tmp_path):
    copy = _copy(exported_bundle, tmp_path)
    result = _parity_cli(copy, "--precision", "fp32")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "visual.fp32" in result.stdout and "textual.fp32" in result.stdout


def test_a_flipped_byte_is_caught_by_sha256(exported_bundle, tmp_path):
    copy = _copy(exported_bundle, tmp_path)
    path = copy / "visual.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"visual\.fp32: .*visual\.onnx does not match the manifest"):
        Bundle.load(copy).verify()
    result = _parity_cli(copy, "--precision", "fp32")
    assert result.returncode != 0
    assert "visual.onnx" in result.stdout + result.stderr


def test_parity_fails_when_a_weight_is_scaled_by_one_percent(exported_bundle, tmp_path):
    import onnx
    from onnx import numpy_helper

    from runtime.manifest import FileEntry

    copy = _copy(exported_bundle, tmp_path)
    graph = onnx.load(copy / "textual.onnx")
    # final_ln's weight ([264, 768] or its transpose): scaling it moves every text feature by ~1%.
    (weight,) = [t for t in graph.graph.initializer if sorted(t.dims) == [264, 768]]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.01), weight.name))
    onnx.save(graph, copy / "textual.onnx")
    bundle = Bundle.load(copy)  # the manifest is updated too, so only parity can tell
    entry = bundle.artifact("textual.fp32")
    measured = FileEntry.describe(copy, entry.path)
    entry.size, entry.sha256 = measured.size, measured.sha256
    bundle.write_manifest()
    result = _parity_cli(copy, "--precision", "fp32")
    assert result.returncode == 1, result.stdout + result.stderr
    manifest = Bundle.load(copy).manifest.to_json()
    assert manifest["artifacts"]["textual.fp32"]["deployable"] is False
    assert manifest["artifacts"]["visual.fp32"]["deployable"] is True


def test_bundle_files_are_readable_by_other_users(exported_bundle):
    unreadable = [str(p) for p in exported_bundle.rglob("*") if p.is_file() and not p.stat().st_mode & 0o004]
    assert unreadable == []
