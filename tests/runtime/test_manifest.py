"""The typed manifest: a schema-1 manifest (written by the code before the typed manifest) still loads, and what its
upgrade fills in; an unknown schema is refused by name; one ``synthetic``, one ``logit_scale``; the one
deployability rule — a graph or engine without a verdict is refused by every loader with the same message; and each
file of a load is hashed once. Built on the fake bundle and a stored schema-1 manifest: no torch, seconds."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from export import tensorrt as engines
from export.triton import TritonRepoError, write_triton_repository
from ruclip_tiny import spec
from runtime import bundle as bundle_module
from runtime.backends import Backend, BackendError, plan_backend
from runtime.backends import tensorrt as trt_backend
from runtime.bundle import Bundle, BundleError, NotDeployableError
from runtime.embedder import Embedder
from runtime.manifest import SCHEMA_VERSION, Manifest, engine_key, engine_path
from tests.runtime import fake_bundle

SCHEMA1 = Path(__file__).parents[1] / "data" / "manifest_schema1.json"
H200 = trt_backend.Machine("11.4.0", True, "90", "NVIDIA H200")


def schema1() -> dict:
    return json.loads(SCHEMA1.read_text(encoding="utf-8"))


@pytest.fixture
def bundle_dir(tmp_path):
    return fake_bundle.build_fake_bundle(tmp_path / "bundle")


# --- schema 1 ---------------------------------------------------------------------------------------------------------


def test_a_schema_1_manifest_loads_and_its_upgrade_fills_in_the_version_and_nothing_else(tmp_path):
    old = schema1()
    assert old["schema_version"] == 1
    manifest = Manifest.from_json(old, tmp_path)
    assert manifest.schema_version == SCHEMA_VERSION == 2
    assert manifest.ruclip_tiny_version == old["tools"]["ruclip-tiny"] == "0.1.0"  # filled in from the tool versions
    assert manifest.synthetic is True and manifest.logit_scale == pytest.approx(old["logit_scale"])
    assert manifest.model_id == old["model_id"] and manifest.checkpoint.seed == 0
    graphs = {"visual.fp32", "textual.fp32", "visual.fp16", "textual.fp16", "textual.fp32.fused"}
    assert set(manifest.artifacts) == {"reference", *graphs}
    assert all(manifest.artifacts[key].usable and manifest.artifacts[key].gated for key in graphs)
    reference = manifest.artifacts["reference"]
    assert reference.deployable is None and not reference.gated and reference.usable  # weights: no verdict, no gate
    assert manifest.parity["visual.fp16"].passed is True and manifest.probe.images == 6
    written = manifest.to_json()
    # schema 2 keeps every key and value of schema 1 and only adds fields
    assert written["schema_version"] == 2 and written["ruclip_tiny_version"] == "0.1.0"
    added = {"schema_version", "ruclip_tiny_version"}
    assert {key: value for key, value in written.items() if key not in added} == {
        key: value for key, value in old.items() if key not in added
    }
    assert Manifest.from_json(written, tmp_path).to_json() == written  # a round trip changes nothing


def test_a_schema_1_bundle_loads_and_a_rewrite_upgrades_it(bundle_dir):
    fake_bundle.edit_manifest(bundle_dir, lambda manifest: manifest.update(schema_version=1))
    bundle = Bundle.load(bundle_dir)
    with Embedder.load(bundle, backend="onnxruntime", precision="fp32") as embedder:
        assert embedder.encode_texts(["слово1 слово2"]).shape == (1, spec.EMBED_DIM)
    bundle.write_manifest()
    assert json.loads((bundle_dir / "manifest.json").read_text())["schema_version"] == 2


def test_a_schema_1_artifact_without_format_or_verdict_gets_its_format_and_is_not_deployable(tmp_path):
    old = schema1()
    del old["artifacts"]["visual.fp32"]["format"], old["artifacts"]["visual.fp32"]["deployable"]
    del old["artifacts"]["reference"]["format"]
    manifest = Manifest.from_json(old, tmp_path)
    assert manifest.artifacts["visual.fp32"].format == "onnx" and manifest.artifacts["visual.fp32"].deployable is False
    assert manifest.artifacts["reference"].format == "safetensors" and manifest.artifacts["reference"].usable


@pytest.mark.parametrize("version", [3, 0, "2", None, True])
def test_a_schema_version_this_code_does_not_know_is_refused_by_name(tmp_path, version):
    data = schema1()
    data["schema_version"] = version
    shown = "None" if version is None else json.dumps(version)
    refusal = rf"has schema version {shown}; this ruclip-tiny reads schema versions 1 and 2"
    with pytest.raises(BundleError, match=refusal):
        Manifest.from_json(data, tmp_path)


def test_one_synthetic_and_one_logit_scale(tmp_path):
    data = schema1()
    data["checkpoint"]["synthetic"] = False
    with pytest.raises(BundleError, match="synthetic is true but checkpoint.synthetic is false"):
        Manifest.from_json(data, tmp_path)
    data = schema1()
    data["probe"]["logit_scale"] = 100.0
    with pytest.raises(BundleError, match="logit_scale is 14.28.* but probe.logit_scale is 100.0"):
        Manifest.from_json(data, tmp_path)
    data = schema1()
    del data["synthetic"], data["logit_scale"]  # the other place holds the one value
    manifest = Manifest.from_json(data, tmp_path)
    assert manifest.synthetic is True and manifest.logit_scale == pytest.approx(14.285714)
    written = manifest.to_json()
    assert written["synthetic"] is written["checkpoint"]["synthetic"] is True
    assert written["logit_scale"] == written["probe"]["logit_scale"]


# --- one deployability rule, one message ------------------------------------------------------------------------------


def _engines(root: Path, machine=H200) -> list[str]:
    """Two plan files (not real engines) recorded as build-engines records them."""
    keys = []
    for encoder in spec.ENCODERS:
        relative = engine_path(encoder, "fp16", machine.tensorrt, machine.compute_capability)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(f"plan of {encoder}".encode() * 100)
        source = Bundle.load(root).artifact(f"{encoder}.fp16")
        entry = engines.engine_entry(root, encoder, "fp16", machine, engines.profile_shapes(encoder), source, {}, 1.0)
        entry.deployable = True
        key = engine_key(encoder, "fp16", machine.tensorrt, machine.compute_capability)
        engines.record_engine(root, key, entry)
        keys.append(key)
    return keys


def _drop_verdict(root: Path, key: str) -> None:
    fake_bundle.edit_manifest(root, lambda manifest: manifest["artifacts"][key].pop("deployable"))


def _expected(root: Path, key: str, path: str) -> str:
    check = f"ruclip-tiny parity {root}" + (" --backend tensorrt" if key.startswith("engines/") else "")
    return (
        f"artifact {key} ({path}) of {root} is marked not deployable — its parity check has not passed (not run, or "
        f"not recorded). Re-check it with: {check}; to use it anyway pass allow_not_deployable=True (CLI: "
        "--allow-not-deployable)"
    )


def _load_onnxruntime(root, tmp_path):
    Embedder.load(root, backend="onnxruntime", precision="fp16")


def _load_tensorrt(root, tmp_path):
    Embedder.load(root, backend="tensorrt", precision="fp16")  # refused before anything TensorRT is needed


def _triton_onnxruntime(root, tmp_path):
    write_triton_repository(root, tmp_path / "repo", platform="onnxruntime", precision="fp16")


def _triton_tensorrt(root, tmp_path):
    write_triton_repository(root, tmp_path / "repo", platform="tensorrt", precision="fp16")


LOADERS = [
    (_load_onnxruntime, "visual.fp16", NotDeployableError),
    (_load_tensorrt, engine_key("visual", "fp16", "11.4.0", "90"), NotDeployableError),
    (_triton_onnxruntime, "visual.fp16", TritonRepoError),
    (_triton_tensorrt, engine_key("visual", "fp16", "11.4.0", "90"), TritonRepoError),
]


@pytest.mark.parametrize(("load", "key", "error"), LOADERS, ids=[load.__name__.strip("_") for load, _, _ in LOADERS])
def test_an_artifact_without_a_verdict_is_refused_by_every_loader_with_the_same_message(
    bundle_dir, tmp_path, monkeypatch, load, key, error
):
    monkeypatch.setattr(trt_backend, "this_machine", lambda: H200)
    monkeypatch.setattr(trt_backend, "open_engine", lambda *args: pytest.fail("an engine was opened"))
    _engines(bundle_dir)
    _drop_verdict(bundle_dir, key)
    path = Bundle.load(bundle_dir).artifact(key).path
    with pytest.raises(error) as caught:
        load(bundle_dir, tmp_path)
    assert str(caught.value) == _expected(bundle_dir, key, path)
    assert not (tmp_path / "repo").exists()


def test_the_torch_backend_reads_only_the_reference_weights_which_no_verdict_gates(bundle_dir):
    pytest.importorskip("torch")
    for key in ("visual.fp32", "textual.fp32"):
        _drop_verdict(bundle_dir, key)
    fake_bundle.edit_manifest(bundle_dir, lambda manifest: manifest["artifacts"].update(
        reference={**manifest["artifacts"]["visual.fp32"], "format": "safetensors"}))
    bundle = Bundle.load(bundle_dir)
    plan = plan_backend(bundle, "torch", "fp32", device="cpu")
    assert plan.artifacts == ["reference"]
    bundle.check_deployable(plan.artifacts)  # not gated: no refusal
    with pytest.raises(NotDeployableError):
        bundle.check_deployable(["visual.fp32"])


# --- each file hashed once per load -----------------------------------------------------------------------------------


class _Runner:
    def infer(self, feeds, check_inputs=False):
        rows = len(next(iter(feeds.values())))
        return {"features": np.ones((rows, spec.EMBED_DIM), np.float32)}

    def deactivate(self):
        pass


def _fake_engine(path, label, rebuild):
    names = [t.name for t in (spec.VISUAL if "visual" in label else spec.TEXTUAL).inputs]
    bindings = [trt_backend.InputBinding(name, np.dtype(np.float32), (1,), (1,), (8,)) for name in names]
    return trt_backend.TensorRTEncoder(_Runner(), bindings, "features", label)


def _count_hashes(monkeypatch) -> dict[str, int]:
    counts: dict[str, int] = {}
    real = bundle_module.file_sha256

    def counting(path):
        counts[Path(path).name] = counts.get(Path(path).name, 0) + 1
        return real(path)

    monkeypatch.setattr(bundle_module, "file_sha256", counting)
    return counts


def test_an_auto_load_of_tensorrt_engines_hashes_each_file_once(bundle_dir, monkeypatch):
    monkeypatch.setattr(trt_backend, "this_machine", lambda: H200)
    monkeypatch.setattr(trt_backend, "open_engine", _fake_engine)
    _engines(bundle_dir)
    counts = _count_hashes(monkeypatch)
    with Embedder.load(bundle_dir) as embedder:  # auto: checks the engines' sha256 to choose, the embedder again
        assert embedder.backend.name == "tensorrt"
        assert embedder.backend.served_artifacts() == [engine_key(e, "fp16", "11.4.0", "90") for e in spec.ENCODERS]
    assert counts == {"visual.fp16.plan": 1, "textual.fp16.plan": 1, "vocab.txt": 1, "tokenizer_config.json": 1}


def test_the_fused_graph_is_verified_once_and_not_at_all_without_verify(bundle_dir, monkeypatch):
    key = fake_bundle.add_fused_textual(bundle_dir)
    counts = _count_hashes(monkeypatch)
    with Embedder.load(bundle_dir, backend="onnxruntime", precision="fp32") as embedder:
        assert embedder.backend.served_artifacts() == ["visual.fp32", "textual.fp32", key]
    assert counts == {"visual.onnx": 1, "textual.onnx": 1, "textual.fused.onnx": 1, "vocab.txt": 1,
                      "tokenizer_config.json": 1}
    counts.clear()
    fake_bundle.flip_byte(bundle_dir / "textual.fused.onnx")
    with pytest.raises(BundleError, match="textual.fp32.fused: .* does not match the manifest"):
        Embedder.load(bundle_dir, backend="onnxruntime", precision="fp32")
    counts.clear()
    Embedder.load(bundle_dir, backend="onnxruntime", precision="fp32", verify=False).close()
    assert counts == {}


# --- the base class: shapes and calls ---------------------------------------------------------------------------------


class _Recording(Backend):
    name, precision, device, max_batch = "recording", "fp32", "cpu", 3

    def __init__(self, rows_out=None):
        self.calls = []
        self.rows_out = rows_out

    def _encode_pixels(self, pixels):
        self.calls.append(len(pixels))
        if self.rows_out is not None:
            return np.zeros((self.rows_out, spec.EMBED_DIM), np.float32)
        return np.repeat(pixels[:, 0, 0, 0:1], spec.EMBED_DIM, axis=1)

    def _encode_tokens(self, input_ids, attention_mask):
        self.calls.append((input_ids.dtype, input_ids.shape))
        return np.zeros((len(input_ids), spec.EMBED_DIM), np.float32)


def test_the_base_class_cuts_calls_at_max_batch_keeps_row_order_and_checks_shapes():
    backend = _Recording()
    pixels = np.arange(7, dtype=np.float32)[:, None, None, None] * np.ones((7, 3, 224, 224), np.float32)
    features = backend.encode_pixels(pixels)
    assert backend.calls == [3, 3, 1] and features[:, 0].tolist() == list(range(7))
    assert backend.encode_pixels(np.zeros((0, 3, 224, 224))).shape == (0, spec.EMBED_DIM)
    backend.encode_tokens(np.ones((2, 5), np.int32), np.ones((2, 5), np.int32))
    assert backend.calls[-1] == (np.dtype(np.int64), (2, 5))
    with pytest.raises(BackendError, match=r"pixels must be float32 \[batch, 3, 224, 224\], got shape \[2, 3, 64,"):
        backend.encode_pixels(np.zeros((2, 3, 64, 64)))
    with pytest.raises(BackendError, match="input_ids has 0 tokens per row"):
        backend.encode_tokens(np.ones((2, 0)), np.ones((2, 0)))
    with pytest.raises(BackendError, match=r"returned features of shape \[1, 768\] for 2 inputs"):
        _Recording(rows_out=1).encode_pixels(np.zeros((2, 3, 224, 224)))


def test_the_registry_is_where_backends_and_cli_choices_come_from():
    from runtime.backends import BACKENDS, REGISTRY, backend_module

    assert BACKENDS == ("auto", *REGISTRY) and set(REGISTRY) == {"onnxruntime", "torch", "tensorrt"}
    for name in ("onnxruntime", "tensorrt"):  # torch's module imports torch only when it runs
        module = backend_module(name)
        for function in ("plan_device", "check_precision", "plan_artifacts", "from_bundle"):
            assert callable(getattr(module, function)), (name, function)
    with pytest.raises(BackendError, match="unknown backend 'onnx'"):
        backend_module("onnx")


def _holds(new, old) -> bool:
    """Whether ``new`` has every key of ``old`` (recursively) with the same value: a rewrite only adds fields."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(key in new and _holds(new[key], value) for key, value in old.items())
    return new == old


def test_a_rewritten_manifest_keeps_every_field_it_read(bundle_dir):
    before = json.loads((bundle_dir / "manifest.json").read_text())
    bundle = Bundle.load(bundle_dir)
    bundle.write_manifest()
    after = json.loads((bundle_dir / "manifest.json").read_text())
    assert _holds(after, before)
    assert Manifest.from_json(copy.deepcopy(after), bundle_dir).to_json() == after
