"""The ``tensorrt`` backend around its TensorRT calls: engine keys and paths, the decision whether this machine can run
a bundle's engines (other TensorRT, other GPU, missing, corrupt, not deployable), ``auto`` falling back with the
reason, refusals that name what was found, what is needed and the rebuild command, and the runner wrapper's
chunking, dtypes, copies and locking. Machines are described by ``Machine`` values, so every decision is exercised
on a CPU; the one test that runs real engines skips without TensorRT and a GPU."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from export import tensorrt as engines
from ruclip_tiny import spec
from runtime import manifest as layout
from runtime.backends import BackendError, plan_backend
from runtime.backends import tensorrt as trt_backend
from runtime.bundle import Bundle, BundleError
from runtime.embedder import Embedder
from tests.runtime.fake_bundle import build_fake_bundle, flip_byte

H200 = trt_backend.Machine("11.4.0", True, "90", "NVIDIA H200")


@pytest.fixture
def fake_bundle(tmp_path):
    return build_fake_bundle(tmp_path / "bundle")


def add_fake_engines(root, machine=H200, precision="fp16", deployable=True) -> list[str]:
    """Write two plan files (not real engines) with manifest entries, as build-engines records them."""
    keys = []
    bundle = Bundle.load(root)
    for encoder in spec.ENCODERS:
        relative = layout.engine_path(encoder, precision, machine.tensorrt, machine.compute_capability)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(f"plan of {encoder} {machine}".encode() * 100)
        profiles = engines.profile_shapes(encoder)
        source = bundle.artifact(f"{encoder}.{precision}")
        entry = engines.engine_entry(root, encoder, precision, machine, profiles, source, {"max_batch": 256}, 1.0)
        entry.deployable = deployable
        key = layout.engine_key(encoder, precision, machine.tensorrt, machine.compute_capability)
        engines.record_engine(root, key, entry)
        keys.append(key)
    return keys


def on_machine(monkeypatch, machine: trt_backend.Machine) -> None:
    monkeypatch.setattr(trt_backend, "this_machine", lambda: machine)


# --- keys and paths ------------------------------------------------------------------------------------------------


def test_engine_keys_paths_and_cache_are_keyed_by_tensorrt_version_and_compute_capability():
    key = layout.engine_key("visual", "fp16", "11.4.0", "90")
    assert key == "engines/11.4.0_sm90/visual.fp16"
    assert layout.engine_path("textual", "fp32", "10.13.3.9", "86") == "engines/10.13.3.9_sm86/textual.fp32.plan"
    assert layout.timing_cache_path("11.4.0", "90") == "engines/11.4.0_sm90/timing.cache"
    assert layout.parse_engine_key(key) == ("11.4.0", "90", "visual", "fp16")
    for other in ("visual.fp16", "engines/11.4.0/visual.fp16", "engines/11.4.0_sm90/audio.fp16", "reference"):
        assert layout.parse_engine_key(other) is None


# --- decisions -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        (
            trt_backend.Machine(None, True, "90"),
            "tensorrt package is not installed (pip install '.[gpu]' in a checkout of ruclip-tiny)",
        ),
        (trt_backend.Machine("11.4.0", False, "90"), "polygraphy package"),
        (trt_backend.Machine("11.4.0", True, None), "no NVIDIA GPU found"),
    ],
)
def test_status_names_the_missing_package_or_gpu(fake_bundle, machine, expected):
    status = trt_backend.engine_status(Bundle.load(fake_bundle), "fp16", machine)
    assert expected in status.problem


def test_engines_of_another_gpu_or_tensorrt_are_refused_saying_what_was_found_and_needed(fake_bundle):
    add_fake_engines(fake_bundle, trt_backend.Machine("11.4.0", True, "86", "NVIDIA A10"))
    add_fake_engines(fake_bundle, trt_backend.Machine("10.13.3", True, "90", "NVIDIA H200"))
    bundle = Bundle.load(fake_bundle)
    problem = trt_backend.engine_status(bundle, "fp16", H200).problem
    assert "no fp16 engines for TensorRT 11.4.0 on sm_90 (NVIDIA H200)" in problem
    assert "TensorRT 10.13.3 on sm_90 (fp16)" in problem and "TensorRT 11.4.0 on sm_86 (fp16)" in problem
    assert problem.endswith(f"build them with: ruclip-tiny build-engines {fake_bundle}")
    # the same engines at fp32 are not fp16 engines
    add_fake_engines(fake_bundle, H200, precision="fp32")
    problem = trt_backend.engine_status(Bundle.load(fake_bundle), "fp16", H200).problem
    assert "TensorRT 11.4.0 on sm_90 (fp32)" in problem
    assert trt_backend.engine_status(Bundle.load(fake_bundle), "fp32", H200).problem is None


def test_missing_or_corrupt_engine_files_are_refused_with_the_rebuild_command(fake_bundle):
    visual, textual = add_fake_engines(fake_bundle)
    bundle = Bundle.load(fake_bundle)
    assert trt_backend.engine_status(bundle, "fp16", H200) == trt_backend.EngineStatus(None, [visual, textual])

    flip_byte(fake_bundle / f"{textual}.plan")
    problem = trt_backend.engine_status(bundle, "fp16", H200).problem
    assert f"{textual}.plan does not match the manifest" in problem and "corrupt or replaced" in problem
    assert f"rebuild with: ruclip-tiny build-engines {fake_bundle}" in problem

    (fake_bundle / f"{visual}.plan").unlink()
    problem = trt_backend.engine_status(bundle, "fp16", H200).problem
    assert f"{visual}.plan is listed in the manifest but missing" in problem
    assert "--precision fp32" in trt_backend.build_command(bundle, "fp32")


def test_auto_falls_back_to_onnxruntime_saying_why(fake_bundle, monkeypatch):
    on_machine(monkeypatch, H200)
    plan = plan_backend(Bundle.load(fake_bundle))
    assert plan.name == "onnxruntime"
    assert "tensorrt not used: no fp16 engines for TensorRT 11.4.0 on sm_90" in plan.reason

    add_fake_engines(fake_bundle, deployable=False)
    plan = plan_backend(Bundle.load(fake_bundle))
    assert plan.name == "onnxruntime" and "not marked deployable" in plan.reason


def test_auto_picks_deployable_engines_for_this_machine_and_falls_back_from_a_corrupt_one(fake_bundle, monkeypatch):
    on_machine(monkeypatch, H200)
    keys = add_fake_engines(fake_bundle)
    plan = plan_backend(Bundle.load(fake_bundle))  # planning only: nothing is deserialised
    assert (plan.name, plan.precision, plan.device, plan.artifacts) == ("tensorrt", "fp16", "cuda", keys)

    flip_byte(fake_bundle / f"{keys[0]}.plan")
    plan = plan_backend(Bundle.load(fake_bundle))
    assert plan.name == "onnxruntime" and "does not match the manifest" in plan.reason


def test_asking_for_tensorrt_refuses_before_loading_with_found_needed_and_command(fake_bundle, monkeypatch):
    on_machine(monkeypatch, H200)
    add_fake_engines(fake_bundle, trt_backend.Machine("10.13.3", True, "86", "NVIDIA A10"))
    with pytest.raises(BackendError) as caught:
        Embedder.load(fake_bundle, backend="tensorrt")
    message = str(caught.value)
    assert message.startswith("TensorRT backend not available: no fp16 engines for TensorRT 11.4.0 on sm_90")
    assert "TensorRT 10.13.3 on sm_86 (fp16)" in message
    assert f"ruclip-tiny build-engines {fake_bundle}" in message and "backend='onnxruntime'" in message


def test_the_embedder_refuses_engines_that_failed_parity(fake_bundle, monkeypatch):
    on_machine(monkeypatch, H200)
    keys = add_fake_engines(fake_bundle, deployable=False)
    with pytest.raises(BundleError, match=f"artifact {keys[0]} .* is marked not deployable"):
        Embedder.load(fake_bundle, backend="tensorrt")


def test_artifact_keys_are_this_machines_engines(monkeypatch):
    on_machine(monkeypatch, H200)
    assert trt_backend.artifact_keys("fp16") == ["engines/11.4.0_sm90/visual.fp16", "engines/11.4.0_sm90/textual.fp16"]
    on_machine(monkeypatch, trt_backend.Machine(None, False, None))
    assert trt_backend.artifact_keys("fp16") == []


# --- the runner wrapper ----------------------------------------------------------------------------------------------


class FakeRunner:
    """Stands in for an activated TrtRunner: features = 2 × the row sums of each input (as float32 [B, 768]);
    reuses ONE host output buffer like TrtRunner, and records every batch and any overlapping call."""

    def __init__(self, output="features"):
        self.output = output
        self.buffer = np.zeros((0, spec.EMBED_DIM), np.float32)
        self.batches: list[dict] = []
        self.busy = False
        self.overlapped = False
        self.deactivated = False

    def infer(self, feeds, check_inputs=True):
        if self.busy:
            self.overlapped = True
        self.busy = True
        time.sleep(0.001)
        self.batches.append({name: (array.dtype, array.shape) for name, array in feeds.items()})
        total = sum(array.reshape(len(array), -1).sum(axis=1).astype(np.float32) for array in feeds.values())
        self.buffer = np.resize(self.buffer, (len(total), spec.EMBED_DIM))
        self.buffer[:] = 2 * total[:, None]
        self.busy = False
        return {self.output: self.buffer}

    def deactivate(self):
        self.deactivated = True


def text_encoder(runner, max_batch=4, dtype=np.int32):
    bindings = [
        trt_backend.InputBinding(name, np.dtype(dtype), (1, 1), (2, 16), (max_batch, spec.MAX_TEXT_LENGTH))
        for name in ("input_ids", "attention_mask")
    ]
    return trt_backend.TensorRTEncoder(runner, bindings, runner.output, "engines/x_sm90/textual.fp16")


def text_backend(runner, max_batch=4) -> trt_backend.TensorRTBackend:
    """A backend whose engines are FakeRunners (the visual one unused), as ``from_bundle`` pairs them."""
    return trt_backend.TensorRTBackend(
        text_encoder(FakeRunner(), max_batch), text_encoder(runner, max_batch), "fp16", {"textual": "t"}, H200
    )


def test_rows_above_the_profile_max_batch_are_chunked_in_order_and_cast_to_the_engine_dtypes():
    runner = FakeRunner()
    backend = text_backend(runner, max_batch=4)
    ids = np.arange(11 * 5, dtype=np.int64).reshape(11, 5)
    mask = np.ones_like(ids)
    features = backend.encode_tokens(ids, mask)
    assert features.shape == (11, spec.EMBED_DIM) and features.dtype == np.float32
    np.testing.assert_array_equal(features[:, 0], 2 * (ids.sum(axis=1) + 5))
    assert [batch["input_ids"][1] for batch in runner.batches] == [(4, 5), (4, 5), (3, 5)]
    assert {batch["attention_mask"][0] for batch in runner.batches} == {np.dtype(np.int32)}


def test_results_are_copied_out_of_the_runners_reused_buffer():
    runner = FakeRunner()
    encoder = text_encoder(runner)
    first = encoder.run({"input_ids": np.ones((2, 3), np.int64), "attention_mask": np.ones((2, 3), np.int64)})
    encoder.run({"input_ids": np.zeros((2, 3), np.int64), "attention_mask": np.zeros((2, 3), np.int64)})
    assert np.all(first == 12.0)


def test_shapes_outside_the_profile_and_mismatched_feeds_are_refused_by_name():
    encoder = text_encoder(FakeRunner())
    backend = text_backend(FakeRunner())
    long = np.ones((2, spec.MAX_TEXT_LENGTH + 1), np.int64)
    with pytest.raises(BackendError, match=r"input_ids has 78 tokens per row; the text encoder takes 1\.\.77"):
        backend.encode_tokens(long, long)
    with pytest.raises(BackendError, match="takes inputs"):
        encoder.run({"input_ids": long})
    with pytest.raises(BackendError, match=r"must be int64 \[batch, seq\] of one shape, got \[2, 3\] and \[3, 3\]"):
        backend.encode_tokens(np.ones((2, 3)), np.ones((3, 3)))


def test_calls_from_many_threads_are_serialised_and_each_gets_its_own_rows():
    runner = FakeRunner()
    backend = text_backend(runner, max_batch=2)
    results = {}

    def work(i):
        ids = np.full((3, 4), i, np.int64)
        results[i] = backend.encode_tokens(ids, np.zeros_like(ids))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not runner.overlapped
    for i, features in results.items():
        assert np.all(features == 2 * 4 * i)


def test_a_closed_backend_refuses_and_deactivates_its_runners():
    runners = FakeRunner(), FakeRunner()
    backend = trt_backend.TensorRTBackend(
        text_encoder(runners[0]), text_encoder(runners[1]), "fp16", {"visual": "v", "textual": "t"}, H200
    )
    assert backend.artifact_key("visual") == "v" and backend.artifact_key("audio") is None
    assert backend.max_batch == 4 and "TensorRT 11.4.0 on sm_90 (NVIDIA H200)" in backend.describe()
    backend.close()
    assert all(runner.deactivated for runner in runners)
    with pytest.raises(BackendError, match="closed"):
        backend.encode_tokens(np.ones((1, 2)), np.ones((1, 2)))


# --- real engines ----------------------------------------------------------------------------------------------------


def _tensorrt_and_gpu() -> str | None:
    machine = trt_backend.this_machine()
    if machine.tensorrt is None:
        return "needs the tensorrt package (pip install '.[gpu]' in a checkout of ruclip-tiny)"
    if machine.compute_capability is None:
        return "needs an NVIDIA GPU"
    return None


@pytest.mark.gpu
def test_engines_built_from_the_fake_bundle_match_onnxruntime(fake_bundle):
    reason = _tensorrt_and_gpu()
    if reason:
        pytest.skip(f"real TensorRT engines: {reason}")
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    result = engines.build_engines(fake_bundle, "fp32", max_batch=8, opt_batch=4, check_parity=False)
    backend = trt_backend.from_bundle(Bundle.load(fake_bundle), "fp32")
    reference = OnnxRuntimeBackend.from_bundle(Bundle.load(fake_bundle), "fp32", providers=["cpu"])
    pixels = np.random.default_rng(0).normal(size=(11, 3, 224, 224)).astype(np.float32)
    ids = np.random.default_rng(1).integers(1, 50, (11, 9))
    mask = np.ones_like(ids)
    np.testing.assert_allclose(backend.encode_pixels(pixels), reference.encode_pixels(pixels), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        backend.encode_tokens(ids, mask), reference.encode_tokens(ids, mask), rtol=1e-3, atol=1e-3
    )
    assert sorted(result.engines) == sorted(backend.keys.values())
    backend.close()

