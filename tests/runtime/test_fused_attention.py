"""The fused text graph (``textual.fused.onnx``: ONNX Runtime's Attention, SkipLayerNorm, BiasGelu kernels) is exact
for right-padded masks only; the guard in the onnxruntime backend sends every other mask to ``textual.onnx``."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from runtime.backends import BackendError, open_backend
from runtime.backends.onnxruntime import right_padded
from runtime.bundle import Bundle, NotDeployableError
from runtime.embedder import Embedder

FUSED_KEY = "textual.fp32.fused"


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _texts(rows: int = 6, length: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ids and a right-padded mask of rows with lengths 20, 17, 14, …"""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 2000, (rows, length)).astype(np.int64)
    mask = np.zeros((rows, length), np.int64)
    for row in range(rows):
        mask[row, : length - 3 * row] = 1
    ids[:, 0] = 101
    return ids, mask


def _left_padded(mask: np.ndarray) -> np.ndarray:
    return mask[:, ::-1].copy()


def test_right_padded_accepts_only_ones_then_zeros():
    assert right_padded(np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]]))
    assert not right_padded(np.array([[0, 1, 1]]))  # left padding
    assert not right_padded(np.array([[1, 0, 1]]))  # a hole
    assert not right_padded(np.array([[0, 0, 0]]))  # nothing to attend to
    assert not right_padded(np.array([[1, 2, 0]]))  # not a 0/1 mask
    assert not right_padded(np.ones((2, 0), np.int64)) and not right_padded(np.ones(3, np.int64))


def test_the_export_fused_every_self_attention_layer_and_parity_marked_it_deployable(exported_bundle):
    entry = Bundle.load(exported_bundle).artifacts[FUSED_KEY].to_json()
    assert entry["fused_variant_of"] == "textual.fp32" and entry["mask"] == "right-padded"
    # layers 1-2 are self-attention; the last computes one query row ([CLS]) and stays unfused
    assert entry["export"]["fused_operators"]["Attention"] == 2 and entry["export"]["last_layer"] == "cls-only"
    assert entry["export"]["fused_operators"]["BiasGelu"] == 3
    assert entry["deployable"] is True
    manifest = json.loads((exported_bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["parity"][FUSED_KEY]["passed"] is True
    assert manifest["parity"][FUSED_KEY]["min_cosine"] >= 0.99999


def test_fused_graph_is_exact_when_right_padded_and_wrong_otherwise(exported_bundle):
    """Why the guard exists: the same texts left-padded are off by far more than any parity bar in the fused graph,
    while the unfused graph gives the same features for both paddings."""
    plain, fused = _session(exported_bundle / "textual.onnx"), _session(exported_bundle / "textual.fused.onnx")
    ids, mask = _texts()
    right = plain.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert np.abs(fused.run(None, {"input_ids": ids, "attention_mask": mask})[0] - right).max() < 1e-4

    left_ids, left_mask = ids[:, ::-1].copy(), _left_padded(mask)
    left_plain = plain.run(None, {"input_ids": left_ids, "attention_mask": left_mask})[0]
    left_fused = fused.run(None, {"input_ids": left_ids, "attention_mask": left_mask})[0]
    padded_rows = mask.sum(axis=1) < mask.shape[1]
    errors = np.abs(left_fused - left_plain).max(axis=1)
    assert errors[padded_rows].min() > 0.05, errors
    assert errors[~padded_rows].max() < 1e-4


def test_the_guard_sends_only_right_padded_masks_to_the_fused_graph(exported_bundle):
    bundle = Bundle.load(exported_bundle)
    ids, mask = _texts()
    with open_backend(bundle, "onnxruntime", "fp32", fused_attention=False) as plain:
        assert plain.textual_fused is None
        expected_right = plain.encode_tokens(ids, mask)
        left_ids, left_mask = ids[:, ::-1].copy(), _left_padded(mask)
        expected_left = plain.encode_tokens(left_ids, left_mask)
    with open_backend(bundle, "onnxruntime", "fp32", fused_attention=True) as backend:
        assert "fused attention" in backend.describe()
        assert np.abs(backend.encode_tokens(ids, mask) - expected_right).max() < 1e-4
        assert (backend.fused_calls, backend.unfused_calls) == (1, 0)
        np.testing.assert_array_equal(backend.encode_tokens(left_ids, left_mask), expected_left)
        assert (backend.fused_calls, backend.unfused_calls) == (1, 1)


@pytest.fixture
def linked_bundle(exported_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(exported_bundle, copy, copy_function=os.link)
    return copy


def _set_deployable(root, key: str, value: bool) -> None:
    bundle = Bundle.load(root)
    bundle.artifacts[key].deployable = value
    bundle.write_manifest()


def test_auto_uses_the_fused_graph_only_on_the_cpu_when_deployable(linked_bundle):
    with open_backend(Bundle.load(linked_bundle), "onnxruntime", "fp32") as backend:
        assert backend.textual_fused is not None  # auto, deployable, CPU
    with open_backend(Bundle.load(linked_bundle), "onnxruntime", "fp16") as backend:
        assert backend.textual_fused is None  # fused for fp32 only
    _set_deployable(linked_bundle, FUSED_KEY, False)
    with open_backend(Bundle.load(linked_bundle), "onnxruntime", "fp32") as backend:
        assert backend.textual_fused is None
    # asked for by name, it is gated like every artifact: refused with the one not-deployable message unless allowed
    with pytest.raises(NotDeployableError, match="artifact textual.fp32.fused .* is marked not deployable"):
        Embedder.load(linked_bundle, "onnxruntime", "fp32", verify=False, fused_attention=True)
    with Embedder.load(linked_bundle, "onnxruntime", "fp32", verify=False, allow_not_deployable=True) as embedder:
        assert embedder.backend.textual_fused is not None  # auto, allowed: used although not deployable
    with pytest.raises(BackendError, match="fused_attention must be"):
        open_backend(Bundle.load(linked_bundle), "onnxruntime", "fp32", fused_attention="yes")
