"""The Triton repository served by a REAL tritonserver (the nvidia-pytriton wheel's, python backend, on a CPU):
``ruclip-tiny triton-repo --platform python --python-path`` + ``scripts/triton_local.sh``, driven by tritonclient's
http and grpc clients. Raw texts and encoded images must come back as the Embedder's embeddings.

Skipped, with the reason printed, where the server or the python models' dependencies cannot be prepared (no network
to fetch the wheels); RUCLIP_TINY_REQUIRE_TRITON=1 (CI) makes that a failure instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

http = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (pip install -e '.[dev]')")
grpc = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (pip install -e '.[dev]')")

from export.triton import write_triton_repository  # noqa: E402
from export.triton_ensemble import TEXT_LENGTH_BUCKETS  # noqa: E402
from runtime.embedder import Embedder  # noqa: E402
from runtime.tokenizer import FastTokenizer  # noqa: E402
from tests.runtime.fake_bundle import build_fake_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEPS_SCRIPT = ROOT / "scripts" / "triton_python_deps.sh"
SERVER_SCRIPT = ROOT / "scripts" / "triton_local.sh"
COSINE = 0.999999
TEXTS = [
    "кошка",
    "собака на траве",
    "Фотография красного автомобиля на фоне гор",
    "ёжик в тумане, ночь, фонари и мокрый асфальт — старая открытка с видом на набережную",
    "очень длинное описание картинки, в котором много слов о море, небе, чайках, лодках, рыбаках, " * 3,
    "",
]


def _cache() -> Path:
    return Path(os.environ.get("RUCLIP_TINY_CACHE", Path.home() / ".cache" / "ruclip-tiny"))


def _unavailable(reason: str):
    if os.environ.get("RUCLIP_TINY_REQUIRE_TRITON") == "1":
        pytest.fail(f"RUCLIP_TINY_REQUIRE_TRITON=1 but {reason}")
    print(f"\nSKIP Triton server tests: {reason}", file=sys.stderr)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _deps_directory() -> Path:
    """The python models' numpy<2 dependencies, built once by scripts/triton_python_deps.sh into a cache directory
    keyed by the script's contents and the Python version."""
    key = hashlib.sha256(DEPS_SCRIPT.read_bytes()).hexdigest()[:12]
    directory = _cache() / f"triton-python-deps-py{sys.version_info[0]}.{sys.version_info[1]}-{key}"
    if not directory.is_dir():
        result = subprocess.run([str(DEPS_SCRIPT), str(directory)], capture_output=True, text=True,
                                env={**os.environ, "PYTHON": sys.executable}, timeout=900)
        if result.returncode != 0:
            _unavailable(f"scripts/triton_python_deps.sh failed: {result.stderr.strip()[-500:]}")
    return directory


def _stats(port: int, model: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/stats", timeout=10) as answer:
        return json.load(answer)["model_stats"][0]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("triton-server") / "bundle")


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """(http port, grpc port) of a tritonserver started by scripts/triton_local.sh on the fake bundle's repository;
    stopped by its pid."""
    deps = _deps_directory()
    repo = tmp_path_factory.mktemp("triton-server") / "repo"
    # The checkout first: its runtime shadows the (possibly older) copy of the project in the cached directory.
    write_triton_repository(bundle, repo, platform="python", python_path=[str(ROOT), str(deps)],
                            max_queue_delay_us=20000)
    ports = [_free_port() for _ in range(3)]
    log = open(repo.parent / "tritonserver.log", "w+b")  # noqa: SIM115 — closed at teardown
    process = subprocess.Popen(
        [str(SERVER_SCRIPT), str(repo), "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
         "--metrics-port", str(ports[2])],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHON": sys.executable},
    )
    try:
        deadline = time.monotonic() + 600
        while not _ready(ports[0]):
            if process.poll() is not None:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-2000:]
                if not (_cache() / "pytriton" / "pytriton" / "tritonserver" / "bin" / "tritonserver").exists():
                    _unavailable(f"the nvidia-pytriton wheel could not be unpacked: {tail}")
                pytest.fail(f"tritonserver exited with {process.returncode}:\n{tail}")
            assert time.monotonic() < deadline, "tritonserver not ready after 600 s"
            time.sleep(0.25)
        yield ports[0], ports[1]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def embedder(bundle):
    with Embedder.load(bundle, backend="onnxruntime") as loaded:
        yield loaded


def _bytes_input(module, name: str, rows: list[bytes]):
    tensor = module.InferInput(name, [len(rows), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(rows, dtype=object).reshape(-1, 1))
    return tensor


def _embed(client, module, model: str, name: str, rows: list[bytes]) -> np.ndarray:
    return client.infer(model, [_bytes_input(module, name, rows)]).as_numpy("EMBEDDING")


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (180, 260, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (240, 200, 4), dtype=np.uint8), "RGBA")
    return {
        "jpeg": _encoded(rgb, "JPEG", quality=90),
        "png-alpha": _encoded(rgba, "PNG"),
        "png-palette": _encoded(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"),
        "jpeg-cmyk": _encoded(rgb.convert("CMYK"), "JPEG"),
        "grey": _encoded(rgb.convert("L"), "PNG"),
    }


def _assert_rows_match(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    cosines = (got.astype(np.float64) * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= COSINE, cosines


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_raw_texts_and_image_files_come_back_as_the_embedders_embeddings(server, embedder, protocol):
    module = http if protocol == "http" else grpc
    client = module.InferenceServerClient(f"127.0.0.1:{server[0] if protocol == 'http' else server[1]}")
    texts = [t.encode("utf-8") for t in TEXTS]
    _assert_rows_match(_embed(client, module, "ruclip_tiny_text", "TEXT", texts), embedder.encode_texts(TEXTS))
    for text, row in zip(TEXTS, texts):  # one text per request: each padded to its own bucket
        _assert_rows_match(_embed(client, module, "ruclip_tiny_text", "TEXT", [row]), embedder.encode_texts([text]))
    images = _images()
    expected = embedder.encode_images(list(images.values()))
    _assert_rows_match(_embed(client, module, "ruclip_tiny_image", "IMAGE", list(images.values())), expected)
    for data, row in zip(images.values(), expected):
        _assert_rows_match(_embed(client, module, "ruclip_tiny_image", "IMAGE", [data]), row[None])


def test_the_raw_encoder_models_answer_as_the_bundles_graphs(server, bundle):
    client = http.InferenceServerClient(f"127.0.0.1:{server[0]}")
    pixels = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    feed = http.InferInput("pixels", list(pixels.shape), "FP32")
    feed.set_data_from_numpy(pixels)
    got = client.infer("ruclip_tiny_visual", [feed]).as_numpy("image_features")
    want = ort.InferenceSession(str(bundle / "visual.onnx")).run(None, {"pixels": pixels})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    encoded = FastTokenizer.from_directory(bundle / "tokenizer").encode(TEXTS[:3])
    ids, mask = encoded.input_ids[:, :16], encoded.attention_mask[:, :16]
    feeds = []
    for name, array in (("input_ids", ids), ("attention_mask", mask)):
        feeds.append(http.InferInput(name, list(array.shape), "INT64"))
        feeds[-1].set_data_from_numpy(array)
    got = client.infer("ruclip_tiny_textual", feeds).as_numpy("text_features")
    want = ort.InferenceSession(str(bundle / "textual.onnx")).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_tokenize_pads_each_request_to_its_length_bucket(server, bundle):
    client = http.InferenceServerClient(f"127.0.0.1:{server[0]}")
    lengths = FastTokenizer.from_directory(bundle / "tokenizer").encode(TEXTS).lengths
    for text, length in zip(TEXTS, lengths):
        result = client.infer("ruclip_tiny_tokenize", [_bytes_input(http, "TEXT", [text.encode()])])
        width = result.as_numpy("input_ids").shape[1]
        assert width == min(b for b in TEXT_LENGTH_BUCKETS if b >= length), (text, length, width)
        assert result.as_numpy("attention_mask")[0].sum() == length


def test_concurrent_clients_get_their_own_rows_and_the_encoders_batch(server, embedder):
    candidates = TEXTS[:5] + [" ".join(TEXTS[i % 4].split()[: 1 + i]) + f" {i}" for i in range(12)]
    texts, rows = [], []
    for text, row in zip(candidates, embedder.encode_texts(candidates)):
        if all(float(row @ other) < 0.999 for other in rows):  # only texts whose rows tell them apart
            texts.append(text)
            rows.append(row)
    assert len(texts) >= 5
    expected_texts = np.stack(rows)
    images = list(_images().values())
    expected_images = embedder.encode_images(images)

    def client_run(seed: int) -> list[tuple[str, int, np.ndarray]]:
        client = http.InferenceServerClient(f"127.0.0.1:{server[0]}")
        answers = []
        for i in range(50):
            if (seed + i) % 4 == 0:
                k = (seed * 7 + i) % len(images)
                answers.append(("image", k, _embed(client, http, "ruclip_tiny_image", "IMAGE", [images[k]])[0]))
            else:
                k = (seed * 3 + i) % len(texts)
                answers.append(("text", k, _embed(client, http, "ruclip_tiny_text", "TEXT", [texts[k].encode()])[0]))
        return answers

    with ThreadPoolExecutor(16) as pool:
        results = [answer for answers in pool.map(client_run, range(16)) for answer in answers]
    assert len(results) == 16 * 50
    for kind, k, row in results:
        table = expected_texts if kind == "text" else expected_images
        cosines = table.astype(np.float64) @ row
        assert cosines[k] >= COSINE and int(np.argmax(cosines)) == k, (kind, k, cosines)
    for model in ("ruclip_tiny_textual", "ruclip_tiny_visual"):
        sizes = [int(b["batch_size"]) for b in _stats(server[0], model)["batch_stats"]]
        assert max(sizes) > 1, f"{model} never ran a batch larger than 1: {sizes}"


def test_a_broken_image_fails_its_own_request_only(server, embedder):
    good = _images()["jpeg"]

    def send(data: bytes) -> np.ndarray:  # a client per thread: tritonclient.http's gevent pool stays in its thread
        return _embed(http.InferenceServerClient(f"127.0.0.1:{server[0]}"), http, "ruclip_tiny_image", "IMAGE", [data])

    with ThreadPoolExecutor(2) as pool:
        broken, fine = pool.submit(send, b"\xff\xd8 not a jpeg"), pool.submit(send, good)
        with pytest.raises(Exception, match="IMAGE\\[0\\].*send an encoded image file") as raised:
            broken.result()
        assert type(raised.value).__name__ == "InferenceServerException"
        _assert_rows_match(fine.result(), embedder.encode_images([good]))
    assert http.InferenceServerClient(f"127.0.0.1:{server[0]}").is_server_ready()
    _assert_rows_match(send(good), embedder.encode_images([good]))
