"""Backends on the session's full-size bundle: each agrees with the probe reference and with the others, ``auto``
says what it chose, and the backends that cannot run here say why."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest

from runtime import parity
from runtime.backends import BackendError, open_backend, plan_backend
from runtime.backends import onnxruntime as ort_backend
from runtime.bundle import Bundle


@pytest.fixture(scope="module")
def bundle(exported_bundle):
    return Bundle.load(exported_bundle)


@pytest.fixture(scope="module")
def probe(bundle):
    return parity.load_probe(bundle)


def _features(backend, probe) -> tuple[np.ndarray, np.ndarray]:
    """(image_features, text_features) of the probe through ``backend``'s two encoders."""
    images = backend.encode_pixels(probe.inputs["pixels"])
    texts = backend.encode_tokens(probe.inputs["input_ids"], probe.inputs["attention_mask"])
    return images, texts


@pytest.fixture(scope="module")
def onnx_fp32_features(bundle, probe):
    with open_backend(bundle, "onnxruntime", "fp32") as backend:
        described = (backend.name, backend.precision, backend.device, backend.max_batch)
        assert described == ("onnxruntime", "fp32", "cpu", None)
        return _features(backend, probe)


def _assert_close_to(features, reference, min_cosine: float) -> float:
    cosines = parity.row_cosines(features, reference)
    assert features.dtype == np.float32 and features.shape == reference.shape
    assert cosines.min() >= min_cosine, f"min row cosine {cosines.min():.8f} < {min_cosine}"
    return float(cosines.min())


def test_onnxruntime_fp32_matches_the_probe_reference(onnx_fp32_features, probe):
    images, texts = onnx_fp32_features
    _assert_close_to(images, probe.reference["image_features"], 0.99999)
    _assert_close_to(texts, probe.reference["text_features"], 0.99999)


def test_onnxruntime_fp16_matches_the_probe_reference(bundle, probe):
    with open_backend(bundle, "onnxruntime", "fp16", intra_op_threads=2) as backend:
        assert backend.precision == "fp16"
        images, texts = _features(backend, probe)
    _assert_close_to(images, probe.reference["image_features"], 0.9999)
    _assert_close_to(texts, probe.reference["text_features"], 0.9999)


@pytest.mark.slow
def test_torch_fp32_matches_the_probe_reference_and_onnxruntime(bundle, probe, onnx_fp32_features):
    pytest.importorskip("torch")
    with open_backend(bundle, "torch", "fp32", device="cpu") as backend:
        assert (backend.name, backend.precision, backend.device) == ("torch", "fp32", "cpu")
        images, texts = _features(backend, probe)
    _assert_close_to(images, probe.reference["image_features"], 0.99999)
    _assert_close_to(texts, probe.reference["text_features"], 0.99999)
    _assert_close_to(images, onnx_fp32_features[0], 0.99999)
    _assert_close_to(texts, onnx_fp32_features[1], 0.99999)


def test_auto_picks_onnxruntime_on_the_cpu_here_and_says_so(bundle, caplog):
    if "CUDAExecutionProvider" in ort_backend.available_providers():
        pytest.skip("this onnxruntime build has CUDA: auto picks the GPU")
    with caplog.at_level(logging.INFO, logger="runtime.backends"):
        plan = plan_backend(bundle)
    assert (plan.name, plan.precision, plan.device) == ("onnxruntime", "fp32", "cpu")
    # the fused text graph runs on the CPU provider, so the plan lists it: the embedder verifies what it will read
    assert plan.artifacts == ["visual.fp32", "textual.fp32", "textual.fp32.fused"]
    assert "onnxruntime on the CPU" in plan.reason and "tensorrt" in plan.reason
    assert any("onnxruntime on the CPU" in record.getMessage() for record in caplog.records)


def test_auto_precision_is_fp16_on_a_gpu_provider_and_fp32_on_the_cpu(bundle):
    # planning only: nothing opens a CUDA session here
    gpu = plan_backend(bundle, "onnxruntime", providers=["cuda", "cpu"])
    assert (gpu.device, gpu.precision, gpu.artifacts) == ("cuda", "fp16", ["visual.fp16", "textual.fp16"])
    assert gpu.options["providers"] == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    cpu = plan_backend(bundle, "onnxruntime", providers="cpu")
    assert (cpu.device, cpu.precision) == ("cpu", "fp32")


def test_tensorrt_without_tensorrt_says_what_to_install(bundle):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(BackendError) as caught:
        open_backend(bundle, "tensorrt")
    message = str(caught.value)
    assert message.startswith("TensorRT backend not available")
    assert "pip install '.[gpu]' in a checkout of ruclip-tiny" in message
    assert f"ruclip-tiny build-engines {bundle.root}" in message


def test_torch_fp16_on_the_cpu_is_refused_before_loading(bundle):
    with pytest.raises(BackendError, match=r"does not run fp16 on the CPU.*precision='fp32'"):
        plan_backend(bundle, "torch", "fp16", device="cpu")


def test_unknown_backend_precision_and_option_are_named(bundle):
    with pytest.raises(BackendError, match="unknown backend 'onnx'.*auto, onnxruntime, torch, tensorrt"):
        plan_backend(bundle, "onnx")
    with pytest.raises(BackendError, match="unknown precision 'int8'"):
        plan_backend(bundle, "onnxruntime", "int8")
    with pytest.raises(BackendError, match="no option device.*providers"):
        plan_backend(bundle, "onnxruntime", device="cuda")


def test_a_provider_this_build_lacks_is_named(bundle):
    if "TensorrtExecutionProvider" in ort_backend.available_providers():
        pytest.skip("this onnxruntime build has the TensorRT provider")
    with pytest.raises(BackendError, match="TensorrtExecutionProvider is not available.*onnxruntime-gpu"):
        open_backend(bundle, "onnxruntime", "fp32", providers=["tensorrt"])


def test_provider_aliases_and_comma_lists():
    assert "CPUExecutionProvider" in ort_backend.available_providers()
    assert ort_backend.resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert ort_backend.resolve_providers("tensorrt, cpu") == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    custom = ("CUDAExecutionProvider", {"use_tf32": "1"})
    assert ort_backend.resolve_providers([custom]) == [custom]


def test_a_closed_backend_refuses_to_run(bundle, probe):
    backend = open_backend(bundle, "onnxruntime", "fp16")
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.encode_pixels(probe.inputs["pixels"][:1])


def _spy_rows(monkeypatch, encoder) -> list[int]:
    """The number of rows of every ONNX Runtime call ``encoder`` makes from now on."""
    rows: list[int] = []
    run = encoder.run

    def counted(feeds):
        rows.append(len(next(iter(feeds.values()))))
        return run(feeds)

    monkeypatch.setattr(encoder, "run", counted)
    return rows


def test_cpu_micro_batches_split_each_call_and_keep_every_row_in_place(bundle, probe, monkeypatch):
    pixels = probe.inputs["pixels"]
    ids, mask = probe.inputs["input_ids"], probe.inputs["attention_mask"]
    # five different images and seven texts, so that the last part is short and a shifted row would show
    pixels = np.concatenate([pixels, pixels[::-1] * 0.5])[:5]
    ids, mask = np.concatenate([ids, ids[::-1]])[:7], np.concatenate([mask, mask[::-1]])[:7]
    assert len(pixels) == 5 and len(ids) == 7 and len({row.tobytes() for row in pixels}) == 5
    with open_backend(bundle, "onnxruntime", "fp32", image_micro_batch=0, text_micro_batch_tokens=0) as whole:
        assert (whole.image_micro_batch, whole.text_micro_batch_tokens) == (None, None)
        expected_images = whole.encode_pixels(pixels)
        expected_texts = whole.encode_tokens(ids, mask)
        one_by_one = np.concatenate([whole.encode_pixels(pixels[i : i + 1]) for i in range(len(pixels))])
    width = ids.shape[1]
    with open_backend(bundle, "onnxruntime", "fp32", image_micro_batch=2, text_micro_batch_tokens=3 * width,
                      fused_attention=False) as parts:
        image_rows = _spy_rows(monkeypatch, parts.visual)
        text_rows = _spy_rows(monkeypatch, parts.textual)
        images = parts.encode_pixels(pixels)
        texts = parts.encode_tokens(ids, mask)
        assert parts.text_micro_batch(width) == 3 and parts.text_micro_batch(width * 100) == 1
    assert image_rows == [2, 2, 1] and text_rows == [3, 3, 1]
    assert images.shape == expected_images.shape and texts.shape == expected_texts.shape
    np.testing.assert_allclose(images, expected_images, rtol=0, atol=1e-5)
    np.testing.assert_allclose(images, one_by_one, rtol=0, atol=1e-5)
    np.testing.assert_allclose(texts, expected_texts, rtol=0, atol=1e-5)


def test_micro_batches_are_on_for_the_cpu_and_off_for_a_gpu_provider(bundle):
    auto = ort_backend.resolve_micro_batch
    assert auto("auto", "image_micro_batch", 2, "cpu") == 2 and auto("auto", "image_micro_batch", 2, "cuda") is None
    assert auto(None, "x", 2, "cpu") is None and auto(0, "x", 2, "cpu") is None and auto(5, "x", 2, "cuda") == 5
    # 1024 tokens at 36 wide is 28 rows; 128 rows then run as 5 even calls of 26, not 4 x 28 and a call of 16
    assert ort_backend.rows_for_tokens(1024, 36) == 28 and ort_backend.even_part_rows(128, 28) == 26
    assert ort_backend.even_part_rows(7, None) == 7 and ort_backend.even_part_rows(7, 8) == 7
    with open_backend(bundle, "onnxruntime", "fp32") as backend:
        assert backend.image_micro_batch == ort_backend.CPU_IMAGE_MICRO_BATCH
        assert backend.text_micro_batch_tokens == ort_backend.CPU_TEXT_MICRO_BATCH_TOKENS
        assert "micro-batches of 2 images / 1024 tokens" in backend.describe()


@pytest.mark.parametrize("value", [-1, 2.5, "big", True])
def test_a_bad_micro_batch_is_refused_with_the_option_named(bundle, value):
    with pytest.raises(BackendError, match=r"image_micro_batch must be 'auto', a positive int.*" + str(value)):
        open_backend(bundle, "onnxruntime", "fp32", image_micro_batch=value)
    with pytest.raises(BackendError, match="text_micro_batch_tokens must be"):
        open_backend(bundle, "onnxruntime", "fp32", text_micro_batch_tokens=value)
