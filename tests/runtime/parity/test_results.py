"""Parity results are typed: a report and its entries read back from their JSON as they were, an entry written by
an older release still reads, and a malformed one is refused with a ParityError naming the field."""

from __future__ import annotations

import copy
import json
import math

import pytest

from ruclip_tiny.errors import RuclipTinyError
from runtime import parity
from runtime.parity import ParityEntry, ParityError, ParityReport, Thresholds
from tests.runtime import fake_bundle

# A manifest's parity entry exactly as the release before typed results wrote it.
OLDER_ENTRY = {
    "artifact": "visual.fp16", "backend": "onnxruntime", "date": "2026-12-05T22:55:37+00:00", "encoder": "visual",
    "error": None, "failures": [], "file": "visual.fp16.onnx", "inf": 0, "kind": "artifact",
    "max_abs_error": 0.004053831100463867, "max_elementwise_rel_error": 0.046831619198061614,
    "max_rel_error": 0.0008665022845124043, "max_similarity_change": 5.527104317668702e-05,
    "mean_cosine": 0.9999996802569578, "mean_reference_norm": 27.989164435453727, "min_cosine": 0.9999994949850439,
    "nan": 0, "onnxruntime_version": "1.32.0", "passed": True, "precision": "fp16", "probe": {"images": 6, "texts": 41},
    "provider": "CPUExecutionProvider", "rows": 6,
    "sha256": "53a682916b11f56257d3d23669ca71dbebbc30827e91b1223b5281e00631fe60",
    "thresholds": {"clear_margin": 0.001, "max_abs_error_per_norm": None, "max_similarity_change": 0.001,
                   "min_cosine": 0.9999, "min_top1_agreement": 1.0},
    "top1": {"image_to_text": {"agree": 6, "clear": 6, "flipped": [], "rows": 6},
             "text_to_image": {"agree": 38, "clear": 38, "flipped": [], "rows": 41}},
}


def test_an_entry_written_by_the_older_release_reads_and_writes_back_the_same():
    entry = ParityEntry.from_json(OLDER_ENTRY)
    assert entry.passed and entry.encoder == "visual" and entry.metrics.top1["text_to_image"].clear == 38
    assert entry.thresholds == parity.thresholds_for("fp16") and entry.metrics.mean_reference_norm > 27
    assert entry.to_json() == OLDER_ENTRY


def test_a_report_and_its_entries_read_back_as_they_were_written(tmp_path):
    root = fake_bundle.build_fake_bundle(tmp_path / "bundle")
    report = parity.run_parity(root)
    written = json.loads((root / "parity/report.json").read_text(encoding="utf-8"))
    assert ParityReport.from_json(written) == report
    assert written == report.to_json()
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    for key, stored in manifest["parity"].items():
        assert ParityEntry.from_json(stored, key) == report.results[key]
    assert {entry.kind for entry in report.results.values()} == {"artifact", "combined"}
    assert report.results["combined.fp32"].artifacts == ["visual.fp32", "textual.fp32"]


def test_nan_is_written_as_null_and_reads_back_as_nan():
    data = copy.deepcopy(OLDER_ENTRY)
    data.update(min_cosine=None, nan=3, passed=False, failures=["3 NaN and 0 Inf values in the features"])
    entry = ParityEntry.from_json(data)
    assert math.isnan(entry.metrics.min_cosine) and entry.metrics.nan == 3
    assert entry.to_json()["min_cosine"] is None
    json.dumps(entry.to_json(), allow_nan=False)  # strict JSON


def test_an_entry_that_did_not_run_has_no_metrics():
    data = {key: OLDER_ENTRY[key] for key in ("kind", "artifact", "encoder", "precision", "backend",
                                              "onnxruntime_version", "provider", "date", "probe", "thresholds")}
    data.update(passed=False, error="visual.fp16 is missing", failures=["visual.fp16 is missing"])
    entry = ParityEntry.from_json(data)
    assert entry.metrics is None and entry.error == "visual.fp16 is missing"
    assert entry.to_json() == {**data, "passed": False}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda entry: entry.pop("passed"), "passed is missing"),
        (lambda entry: entry.update(passed="yes"), "passed must be bool"),
        (lambda entry: entry.update(rows=True), "rows must be int"),
        (lambda entry: entry.update(kind="graph"), "kind must be one of artifact, combined"),
        (lambda entry: entry["top1"].pop("text_to_image"), "top1: text_to_image is missing"),
        (lambda entry: entry["thresholds"].update(min_cosine="high"), "thresholds: min_cosine must be a number"),
        (lambda entry: entry.update(failures=[1]), "failures must be a list of strings"),
    ],
)
def test_a_malformed_entry_is_refused_naming_the_field(edit, message):
    data = copy.deepcopy(OLDER_ENTRY)
    edit(data)
    with pytest.raises(ParityError, match=message) as caught:
        ParityEntry.from_json(data, "manifest parity visual.fp16")
    assert str(caught.value).startswith("manifest parity visual.fp16")


def test_a_report_of_a_schema_version_this_code_does_not_know_is_refused_by_name(tmp_path):
    root = fake_bundle.build_fake_bundle(tmp_path / "bundle", precisions=("fp32",))
    data = parity.run_parity(root, ("fp32",), write=False).to_json()
    data["schema_version"] = 99
    with pytest.raises(ParityError, match="schema_version 99"):
        ParityReport.from_json(data)


def test_parity_errors_are_ruclip_tiny_errors_and_value_errors():
    assert issubclass(ParityError, RuclipTinyError) and issubclass(ParityError, ValueError)
    with pytest.raises(ParityError, match="int8"):
        parity.thresholds_for("int8")
    assert Thresholds.from_json(parity.thresholds_for("fp32").to_json()) == parity.thresholds_for("fp32")
