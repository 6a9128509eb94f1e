"""The torch backend as a GPU engine: its CUDA-only options are refused where they cannot work (before any weights
load), and on a CUDA machine FP16 passes the fp16 parity bars and CUDA graphs give what eager gives."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from runtime import parity
from runtime.backends import BackendError, plan_backend
from runtime.bundle import Bundle
from tests.runtime.fake_bundle import build_fake_bundle


@pytest.fixture
def fake_bundle(tmp_path):
    return Bundle.load(build_fake_bundle(tmp_path / "bundle"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device": "cpu", "cuda_graphs": True}, r"cuda_graphs=True needs device='cuda', not 'cpu'"),
        (
            {"device": "cpu", "compile": "fastest"},
            r"compile='fastest' is not a torch.compile mode; choose one of default",
        ),
        ({"device": "cuda", "cuda_graphs": True, "compile": "default"}, r"do not stack.*compile='reduce-overhead'"),
    ],
)
def test_speed_options_that_cannot_work_are_refused_when_planning(fake_bundle, options, message):
    with pytest.raises(BackendError, match=message):
        plan_backend(fake_bundle, "torch", "fp32", **options)


def test_speed_options_are_passed_to_the_backend(fake_bundle):
    plan = plan_backend(fake_bundle, "torch", "fp16", device="cuda", cuda_graphs=True)
    assert (plan.precision, plan.device, plan.options["cuda_graphs"]) == ("fp16", "cuda", True)


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def gpu_bundle(exported_bundle):
    if not _cuda():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    return Bundle.load(exported_bundle)


@pytest.mark.gpu
def test_torch_fp16_on_cuda_passes_the_fp16_parity_bars_and_graphs_match_eager(gpu_bundle):
    from runtime.backends.torch import TorchBackend

    probe = parity.load_probe(gpu_bundle)
    thresholds = parity.thresholds_for("fp16")
    eager = TorchBackend.from_bundle(gpu_bundle, "fp16", device="cuda")
    graphs = TorchBackend.from_bundle(gpu_bundle, "fp16", device="cuda", cuda_graphs=True)
    for backend in (eager, graphs):
        images = backend.encode_pixels(probe.inputs["pixels"])
        texts = backend.encode_tokens(probe.inputs["input_ids"], probe.inputs["attention_mask"])
        for features, name in ((images, "image_features"), (texts, "text_features")):
            metrics = parity.feature_metrics(features, probe.reference[name])
            assert not parity.judge(metrics, thresholds), (backend.describe(), name, parity.judge(metrics, thresholds))
    pixels = probe.inputs["pixels"][:3]
    np.testing.assert_allclose(graphs.encode_pixels(pixels), eager.encode_pixels(pixels), rtol=0, atol=1e-2)
