"""``ruclip-tiny triton-repo``: every config.pbtxt parsed with Triton's own protobuf schema and checked against the
real I/O of the model files it points to; TensorRT plans per compute capability; atomic, refusing writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (pip install -e '.[dev]')"
)

from export.triton import (  # noqa: E402
    TritonRepoError,
    check_onnx_io,
    compute_capability_key,
    model_config,
    write_triton_repository,
)
from ruclip_tiny import spec  # noqa: E402
from ruclip_tiny.cli import main  # noqa: E402
from ruclip_tiny.fileio import file_sha256  # noqa: E402
from runtime.bundle import Bundle, BundleError  # noqa: E402
from tests.runtime.fake_bundle import build_fake_bundle  # noqa: E402

ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64", "tensor(float16)": "TYPE_FP16"}
NP_TO_TRITON = {np.dtype("float32"): "TYPE_FP32", np.dtype("int64"): "TYPE_INT64"}
PREPROCESSING_AND_ENSEMBLES = ["ruclip_tiny_tokenize", "ruclip_tiny_preprocess", "ruclip_tiny_normalize",
                               "ruclip_tiny_text", "ruclip_tiny_image"]


def parse_config(path: Path):
    """config.pbtxt as Triton reads it (text_format.Parse rejects unknown fields and bad enum values)."""
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def triton_io(tensors) -> list[tuple[str, str, list[int]]]:
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def ort_io(nodes, max_batch: int) -> list[tuple[str, str, list[int]]]:
    """(name, Triton type, dims without the batch axis, -1 where dynamic) of ONNX Runtime session inputs/outputs."""
    rows = []
    for node in nodes:
        assert not isinstance(node.shape[0], int), f"{node.name}: the batch axis must be dynamic for max_batch_size"
        rows.append((node.name, ORT_TO_TRITON[node.type], [d if isinstance(d, int) else -1 for d in node.shape[1:]]))
    return rows


@pytest.fixture
def fake_bundle(tmp_path) -> Path:
    return build_fake_bundle(tmp_path / "bundle")


def fake_engines(bundle: Path, engines: dict[str, list[str]], precision: str = "fp16") -> None:
    """Placeholder plans under ``engines/<trt>_sm<cc>/``, recorded in the manifest as build-engines records them
    (marked deployable, as after a passed parity run): the writer copies plans and never reads their content."""
    from export.tensorrt import engine_entry, profile_shapes, record_engine
    from runtime.backends.tensorrt import Machine
    from runtime.manifest import engine_key, engine_path

    for trt_version, capabilities in engines.items():
        for cc in capabilities:
            machine = Machine(trt_version, True, cc, "a GPU")
            for encoder in spec.ENCODERS:
                relative = engine_path(encoder, precision, trt_version, cc)
                (bundle / relative).parent.mkdir(parents=True, exist_ok=True)
                (bundle / relative).write_bytes(f"fake plan {encoder} sm{cc}".encode())
                source = Bundle.load(bundle).artifact(f"{encoder}.{precision}")
                entry = engine_entry(bundle, encoder, precision, machine, profile_shapes(encoder), source, {}, 0.0)
                entry.deployable = True
                record_engine(bundle, engine_key(encoder, precision, trt_version, cc), entry)


def test_onnxruntime_repository_configs_parse_with_tritons_schema_and_match_the_graphs(exported_bundle, tmp_path):
    out = tmp_path / "repo"
    models = write_triton_repository(exported_bundle, out, max_batch=32, max_queue_delay_us=500, instance_count=2)
    assert [m.name for m in models] == ["ruclip_tiny_visual", "ruclip_tiny_textual", *PREPROCESSING_AND_ENSEMBLES]
    manifest = json.loads((exported_bundle / "manifest.json").read_text())
    for model in models[:2]:
        config = parse_config(out / model.name / "config.pbtxt")
        assert config.name == model.name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 32
        assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 500
        groups = [(g.count, g.kind) for g in config.instance_group]
        assert groups == [(2, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]
        graph = out / model.name / "1" / "model.onnx"
        assert config.default_model_filename == "model.onnx" and graph.is_file()
        # the graph is the bundle's, byte for byte
        assert file_sha256(graph) == manifest["artifacts"][f"{model.encoder}.fp32"]["sha256"]
        # the config is the graph's real I/O (as ONNX Runtime and onnx see it)
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        assert triton_io(config.input) == ort_io(session.get_inputs(), 32)
        assert triton_io(config.output) == ort_io(session.get_outputs(), 32)
        loaded = onnx.load(str(graph), load_external_data=False).graph
        assert [t.name for t in config.input] == [v.name for v in loaded.input]
        # and what spec.py says
        encoder = spec.ENCODERS[model.encoder]
        assert [(t.name, t.data_type) for t in config.input] == [
            (t.name, model_config_pb2.DataType.Value(NP_TO_TRITON[np.dtype(t.dtype)])) for t in encoder.inputs]
    readme = (out / "README.md").read_text()
    assert "tritonserver --model-repository" in readme and "SYNTHETIC" in readme
    for name in ("pixels", "input_ids", "attention_mask", "image_features", "text_features", "ruclip_tiny_textual"):
        assert name in readme
    assert not list(tmp_path.glob(".repo.*")), "staging directories left behind"


def _older_repository(bundle: Path, out: Path) -> Path:
    """A repository this module wrote earlier (fp16 graphs), after Triton served it: python's __pycache__ inside."""
    write_triton_repository(bundle, out, precision="fp16")
    (out / "ruclip_tiny_visual" / "1" / "__pycache__").mkdir()
    (out / "ruclip_tiny_visual" / "1" / "__pycache__" / "model.cpython-312.pyc").write_bytes(b"compiled by Triton")
    return out


def test_an_existing_repository_is_replaced_only_with_force_and_only_once_complete(fake_bundle, tmp_path):
    out = _older_repository(fake_bundle, tmp_path / "repo")
    old_graph = (out / "ruclip_tiny_visual" / "1" / "model.onnx").read_bytes()
    with pytest.raises(TritonRepoError, match="--force"):
        write_triton_repository(fake_bundle, out)
    assert (out / "ruclip_tiny_visual" / "1" / "model.onnx").read_bytes() == old_graph

    with pytest.raises(TritonRepoError, match="build-engines"):  # fails before anything is replaced
        write_triton_repository(fake_bundle, out, platform="tensorrt", force=True)
    assert (out / "ruclip_tiny_visual" / "1" / "model.onnx").read_bytes() == old_graph

    write_triton_repository(fake_bundle, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([
        ".ruclip-tiny-repository.json", "README.md", "ruclip_tiny_textual", "ruclip_tiny_visual",
        *PREPROCESSING_AND_ENSEMBLES])
    assert file_sha256(out / "ruclip_tiny_visual" / "1" / "model.onnx") == file_sha256(fake_bundle / "visual.onnx")
    assert not (out / "ruclip_tiny_visual" / "1" / "__pycache__").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "repo"], "staging or old copies left behind"
    empty = tmp_path / "empty"
    empty.mkdir()
    write_triton_repository(fake_bundle, empty)  # an empty directory needs no --force
    assert (empty / "ruclip_tiny_visual" / "1" / "model.onnx").is_file()


@pytest.mark.parametrize(("foreign", "named"), [
    ("notes.txt", "notes.txt"),
    ("my_model/config.pbtxt", "my_model/"),  # a directory of the user's is named as a whole
    ("ruclip_tiny_visual/1/weights.bin", "ruclip_tiny_visual/1/weights.bin"),
    ("ruclip_tiny_textual/2/", "ruclip_tiny_textual/2/"),
])
def test_force_refuses_a_repository_holding_anything_else(fake_bundle, tmp_path, foreign, named):
    out = _older_repository(fake_bundle, tmp_path / "repo")
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    if foreign.endswith("/"):
        (out / foreign).mkdir()
    else:
        (out / foreign).write_text("the user's")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(TritonRepoError, match="holds files that are not its Triton repository's own") as refused:
        write_triton_repository(fake_bundle, out, force=True)
    assert str(out) in str(refused.value) and named in str(refused.value)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "repo"]


def test_triton_repo_force_on_a_directory_it_did_not_write_exits_2_naming_it(fake_bundle, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "models"
    (out / "old-model").mkdir(parents=True)
    (out / "old-model" / "config.pbtxt").write_text("old")
    script = Path(sys.executable).with_name("ruclip-tiny")
    command = [str(script)] if script.is_file() else [
        sys.executable, "-c", "import sys; from ruclip_tiny.cli import main; sys.exit(main())"]
    result = subprocess.run([*command, "triton-repo", str(fake_bundle), "--out", str(out), "--force"],
                            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ruclip-tiny triton-repo: error: ") and str(out) in last
    assert "not a Triton repository written by ruclip-tiny triton-repo" in last
    assert (out / "old-model" / "config.pbtxt").read_text() == "old"


def test_tensorrt_without_engines_says_to_build_them(fake_bundle, tmp_path, capsys):
    with pytest.raises(TritonRepoError, match=r"ruclip-tiny build-engines"):
        write_triton_repository(fake_bundle, tmp_path / "repo", platform="tensorrt")
    assert not (tmp_path / "repo").exists()
    assert main(["triton-repo", str(fake_bundle), "--out", str(tmp_path / "repo"), "--platform", "tensorrt"]) == 2
    assert "ruclip-tiny build-engines" in capsys.readouterr().err


def test_tensorrt_repository_lists_one_plan_per_compute_capability(fake_bundle, tmp_path):
    # The plans here are placeholders: config generation copies them and never reads their content.
    fake_engines(fake_bundle, {"10.9.0": ["86", "90", "120"]})
    out = tmp_path / "repo"
    models = write_triton_repository(fake_bundle, out, platform="tensorrt", max_batch=16)
    for model in [m for m in models if m.encoder]:
        config = parse_config(out / model.name / "config.pbtxt")
        assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
        assert dict(config.cc_model_filenames) == {"8.6": "model_sm86.plan", "9.0": "model_sm90.plan",
                                                   "12.0": "model_sm120.plan"}
        for cc, name in config.cc_model_filenames.items():
            plan = out / model.name / "1" / name
            assert plan.read_bytes() == f"fake plan {model.encoder} sm{cc.replace('.', '')}".encode()
        assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
        # a plan is built from the fp16 graph, whose I/O is the engine's: check the config against that graph
        session = ort.InferenceSession(str(fake_bundle / f"{model.encoder}.fp16.onnx"),
                                       providers=["CPUExecutionProvider"])
        assert triton_io(config.input) == ort_io(session.get_inputs(), 16)
        assert triton_io(config.output) == ort_io(session.get_outputs(), 16)
    assert "8.6, 9.0, 12.0" in (out / "README.md").read_text()


def test_tensorrt_with_several_versions_needs_trt_version(fake_bundle, tmp_path):
    fake_engines(fake_bundle, {"10.9.0": ["86"], "11.1.0": ["90"]})
    with pytest.raises(TritonRepoError, match="--trt-version"):
        write_triton_repository(fake_bundle, tmp_path / "a", platform="tensorrt")
    models = write_triton_repository(fake_bundle, tmp_path / "b", platform="tensorrt", trt_version="11.1.0")
    assert dict(parse_config(tmp_path / "b" / models[0].name / "config.pbtxt").cc_model_filenames) == {
        "9.0": "model_sm90.plan"}
    with pytest.raises(TritonRepoError, match="no engines for TensorRT 9.0"):
        write_triton_repository(fake_bundle, tmp_path / "c", platform="tensorrt", trt_version="9.0")


def test_artifacts_not_deployable_or_changed_are_refused(fake_bundle, tmp_path):
    manifest_path = fake_bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["artifacts"]["textual.fp32"]["deployable"] = False
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(TritonRepoError, match="not deployable"):
        write_triton_repository(fake_bundle, tmp_path / "a")
    write_triton_repository(fake_bundle, tmp_path / "b", allow_not_deployable=True)

    graph = fake_bundle / "visual.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="does not match the manifest"):
        write_triton_repository(fake_bundle, tmp_path / "c", allow_not_deployable=True)
    assert not (tmp_path / "c").exists()


def test_a_graph_whose_io_differs_from_the_spec_is_refused(fake_bundle, tmp_path):
    model = onnx.load(str(fake_bundle / "textual.onnx"))
    model.graph.input[0].name = "ids"
    for node in model.graph.node:
        node.input[:] = ["ids" if name == "input_ids" else name for name in node.input]
    path = tmp_path / "renamed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(TritonRepoError, match=r"inputs are \['ids', 'attention_mask'\]"):
        check_onnx_io(path, spec.TEXTUAL)
    check_onnx_io(fake_bundle / "textual.onnx", spec.TEXTUAL)


def test_configs_for_other_settings_still_parse(tmp_path):
    for kind in ("auto", "gpu", "cpu"):
        text = model_config(spec.VISUAL, "onnxruntime", max_batch=1, instance_kind=kind, max_queue_delay_us=0)
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert list(config.input[0].dims) == [3, 224, 224] and list(config.output[0].dims) == [768]
    assert compute_capability_key("75") == "7.5" and compute_capability_key("100") == "10.0"
    with pytest.raises(TritonRepoError):
        compute_capability_key("sm_90")


def test_cli_writes_the_repository(fake_bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    assert main(["triton-repo", str(fake_bundle), "--out", str(out), "--max-batch", "8", "--precision", "fp16"]) == 0
    printed = capsys.readouterr().out
    assert "ruclip_tiny_visual" in printed and "tritonserver --model-repository" in printed
    config = parse_config(out / "ruclip_tiny_textual" / "config.pbtxt")
    assert config.max_batch_size == 8
    assert file_sha256(out / "ruclip_tiny_textual" / "1" / "model.onnx") == file_sha256(
        fake_bundle / "textual.fp16.onnx")
    shutil.rmtree(out)


@pytest.mark.parametrize("platform", ["onnxruntime", "tensorrt", "python"])
def test_ensembles_and_python_models_parse_and_connect_to_the_encoders_io(fake_bundle, tmp_path, platform):
    if platform == "tensorrt":
        fake_engines(fake_bundle, {"10.9.0": ["90"]})
    out = tmp_path / "repo"
    models = write_triton_repository(fake_bundle, out, platform=platform, max_batch=16, python_path=["deps", "/abs"])
    configs = {m.name: parse_config(out / m.name / "config.pbtxt") for m in models}
    assert sorted(configs) == sorted(["ruclip_tiny_visual", "ruclip_tiny_textual", *PREPROCESSING_AND_ENSEMBLES])
    python_models = [name for name, c in configs.items() if c.backend == "python"]
    expected_python = PREPROCESSING_AND_ENSEMBLES[:3] + (["ruclip_tiny_visual", "ruclip_tiny_textual"]
                                                         if platform == "python" else [])
    assert sorted(python_models) == sorted(expected_python)
    for name in python_models:
        parameters = {k: v.string_value for k, v in configs[name].parameters.items()}
        assert json.loads(parameters["python_path"]) == [str(Path("deps").resolve()), "/abs"]
        code = (out / name / "1" / "model.py").read_text()
        # the directories go onto sys.path before anything imports numpy or triton_python_backend_utils
        assert code.index("_sys.path.insert(0") < code.index("import triton_python_backend_utils")
        assert "import torch" not in code and "import numpy" not in code[: code.index("_sys.path.insert(0")]
    assert (out / "ruclip_tiny_tokenize" / "1" / "tokenizer" / "vocab.txt").is_file()
    assert parameters_of(configs["ruclip_tiny_tokenize"])["length_buckets"] == "8,16,32,77"
    for ensemble, source, encoder in (("ruclip_tiny_text", "TEXT", "ruclip_tiny_textual"),
                                      ("ruclip_tiny_image", "IMAGE", "ruclip_tiny_visual")):
        config = configs[ensemble]
        assert config.platform == "ensemble" and config.max_batch_size == 16
        assert triton_io(config.input) == [(source, "TYPE_STRING", [1])]
        assert triton_io(config.output) == [("EMBEDDING", "TYPE_FP32", [768])]
        steps = list(config.ensemble_scheduling.step)
        assert [s.model_name for s in steps][1:] == [encoder, "ruclip_tiny_normalize"]
        produced = {source: None}
        for step in steps:  # every step reads tensors the ensemble has and names its model's real I/O
            composing = configs[step.model_name]
            assert sorted(step.input_map) == sorted(t.name for t in composing.input)
            assert sorted(step.output_map) == sorted(t.name for t in composing.output)
            assert set(step.input_map.values()) <= set(produced)
            outputs = {t.name: t for t in composing.output}
            produced.update({v: outputs[k] for k, v in step.output_map.items()})
        assert "EMBEDDING" in produced


def parameters_of(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def test_python_platform_refuses_gpu_instances(fake_bundle, tmp_path):
    with pytest.raises(TritonRepoError, match="--instance-kind cpu"):
        write_triton_repository(fake_bundle, tmp_path / "a", platform="python", instance_kind="gpu")
