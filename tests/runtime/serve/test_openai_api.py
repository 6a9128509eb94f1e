"""The OpenAI-compatible endpoints on the real server over loopback (fake bundle), spoken to with the real ``openai``
client and with raw HTTP: answers equal ``Embedder``'s, base64 rows decode to the float rows, every error in OpenAI's
shape, usage counts tokens, and the numeric-health metrics count what was embedded."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (pip install -e '.[dev]')")
pytest.importorskip("fastapi", reason="the server tests need the serve extra (pip install -e '.[serve]')")
openai = pytest.importorskip("openai", reason="the OpenAI API tests need the openai client (pip install -e '.[dev]')")

from PIL import Image  # noqa: E402

from runtime.embedder import Embedder  # noqa: E402
from runtime.serve import BackgroundServer, ServerSettings, create_app  # noqa: E402
from tests.runtime.fake_bundle import FAKE_WORDS, build_fake_bundle  # noqa: E402
from tests.runtime.serve.test_app import metric, wait_ready  # noqa: E402

API_KEY = "test-key-16"
MIN_COSINE = 0.999999
TEXTS = ["слово1 слово2 слово3", "слово4", " ".join(FAKE_WORDS[:30]) * 3, "кошка на окне"]


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((64, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture(scope="module")
def reference(bundle):
    with Embedder.load(bundle, backend="onnxruntime", precision="fp32") as embedder:
        yield embedder


@pytest.fixture(scope="module")
def server(bundle):
    settings = ServerSettings(api_key=API_KEY, max_items=8, max_body_bytes=200_000)
    app = create_app(lambda: Embedder.load(bundle, backend="onnxruntime", precision="fp32"), settings)
    with BackgroundServer(app) as running:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            wait_ready(client)
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


def model_id(reference: Embedder) -> str:
    return reference.bundle.manifest.model_id


def test_openai_client_embeds_texts_with_its_defaults_and_with_float(client, reference):
    expected = reference.encode_texts_detailed(TEXTS).embeddings
    default = client.embeddings.create(model=model_id(reference), input=TEXTS)
    raw = client.embeddings.with_raw_response.create(model=model_id(reference), input=TEXTS)
    assert isinstance(raw.http_response.json()["data"][0]["embedding"], str)  # its default asked for base64
    as_float = client.embeddings.create(model=model_id(reference), input=TEXTS, encoding_format="float")
    for answer in (default, as_float):
        assert [row.index for row in answer.data] == list(range(len(TEXTS)))
        rows = np.array([row.embedding for row in answer.data])
        assert rows.shape == (len(TEXTS), reference.dim)
        assert cosines(rows, expected).min() >= MIN_COSINE
        assert answer.model == model_id(reference)
        tokens = int(reference.tokenizer.encode(TEXTS).lengths.sum())  # [CLS] and [SEP] in, cut at 77
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens
    assert max(reference.tokenizer.encode(TEXTS).lengths) == 77  # the long text was cut: counted after truncation


def test_openai_client_embeds_one_string_and_an_image_data_uri(client, reference):
    one = client.embeddings.create(model=model_id(reference), input="слово5 слово6")
    assert cosines([one.data[0].embedding], reference.encode_texts(["слово5 слово6"])).min() >= MIN_COSINE
    images = [png(1), png(2)]
    answer = client.embeddings.create(model=model_id(reference), input=[data_uri(d) for d in images])
    rows = np.array([row.embedding for row in answer.data])
    assert cosines(rows, reference.encode_images(images)).min() >= MIN_COSINE
    assert answer.usage.prompt_tokens == 0  # images count no tokens


def test_mixed_input_keeps_order_and_modality_forces_image(http, reference):
    image = png(3)
    body = {"model": model_id(reference), "input": ["слово7", data_uri(image), "слово8"]}
    answer = http.post("/v1/embeddings", json=body).json()
    rows = np.array([row["embedding"] for row in answer["data"]])
    assert [row["index"] for row in answer["data"]] == [0, 1, 2]
    assert cosines(rows[[0, 2]], reference.encode_texts(["слово7", "слово8"])).min() >= MIN_COSINE
    assert cosines(rows[[1]], reference.encode_images([image])).min() >= MIN_COSINE
    bare = {"model": model_id(reference), "input": [base64.b64encode(image).decode()], "modality": "image"}
    forced = np.array([http.post("/v1/embeddings", json=bare).json()["data"][0]["embedding"]])
    assert cosines(forced, reference.encode_images([image])).min() >= MIN_COSINE


def test_base64_rows_decode_to_the_float_rows(http, reference):
    body = {"model": model_id(reference), "input": TEXTS[:2] + [data_uri(png(4))]}
    as_float = http.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    as_base64 = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    for numbers, encoded in zip(as_float["data"], as_base64["data"], strict=True):
        assert isinstance(encoded["embedding"], str)
        decoded = np.frombuffer(base64.b64decode(encoded["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(numbers["embedding"], np.float64).astype(np.float32))


def test_models_lists_the_served_model(client, reference):
    (model,) = client.models.list().data
    assert model.id == model_id(reference) and model.object == "model" and model.owned_by == "ruclip-tiny"
    assert isinstance(model.created, int)


def assert_openai_error(response, status: int, param: str | None = None, words: tuple[str, ...] = ()) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if param is not None:
        assert error["param"] == param
    for word in words:
        assert word in error["message"]
    return error


def test_every_error_has_openai_shape_and_names_the_field(http, server, reference):
    model = model_id(reference)
    post = lambda **body: http.post("/v1/embeddings", json={"model": model, **body})  # noqa: E731
    assert_openai_error(post(input=["слово1", "https://example.com/cat.png"]), 422, "input",
                        ("input[1]", "https://example.com/cat.png", "fetches nothing"))
    assert_openai_error(post(input=[[1, 2, 3]]), 422, "input", ("input[0]", "token arrays"))
    assert_openai_error(post(input=[5, 6]), 422, "input", ("token arrays",))
    assert_openai_error(post(input="слово1", dimensions=256), 422, "dimensions", ("768",))
    assert_openai_error(post(input="слово1", encoding_format="hex"), 422, "encoding_format")
    assert_openai_error(post(input=["слово"] * 9), 422, "input", ("--max-items=8",))
    assert_openai_error(post(input=[]), 422, "input")
    assert_openai_error(post(input=["data:image/png;base64,bm90IGFuIGltYWdl"]), 422, "input", ("input[0]",))
    error = assert_openai_error(http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "a"}),
                                404, "model", ("text-embedding-3-small", model))
    assert error["code"] == "model_not_found"
    assert_openai_error(httpx.post(f"{server.url}/v1/embeddings", json={"model": model, "input": "a"}), 401)
    assert_openai_error(httpx.get(f"{server.url}/v1/models"), 401)
    assert_openai_error(http.post("/v1/embeddings", content=b"{}", headers={"Content-Type": "text/plain"}), 415)
    assert_openai_error(post(input=["слово1 " * 20_000]), 413, words=("--max-body-bytes",))
    assert assert_openai_error(http.post("/v1/embeddings", content=b"{not json",
                                         headers={"Content-Type": "application/json"}), 422)["param"] is None
    assert_openai_error(http.get("/v1/embeddings"), 405)
    # other endpoints keep their own shape
    assert "detail" in httpx.post(f"{server.url}/v1/embeddings/text", json={"texts": ["a"]}).json()


def test_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="слово1")
    with pytest.raises(openai.UnprocessableEntityError, match="http://example.com"):
        client.embeddings.create(model=client.models.list().data[0].id, input="http://example.com/a.jpg")


def test_numeric_health_metrics(http, client, reference):
    client.embeddings.create(model=model_id(reference), input=["слово1", data_uri(png(5))])
    text = http.get("/metrics").text
    for kind in ("text", "image"):
        assert metric(text, "ruclip_tiny_feature_norm_count", kind=kind) > 0
        assert metric(text, "ruclip_tiny_stage_seconds_count", kind=kind, stage="encode") > 0
        assert f'ruclip_tiny_nonfinite_outputs_total{{kind="{kind}"}} 0.0' in text  # present, at 0
    assert metric(text, "ruclip_tiny_stage_seconds_count", kind="text", stage="tokenize") > 0
    assert metric(text, "ruclip_tiny_stage_seconds_count", kind="image", stage="decode") > 0
    assert metric(text, "ruclip_tiny_self_test_ok") == 1
    assert metric(text, "ruclip_tiny_self_test_seconds") > 0
    visual = reference.bundle.artifacts["visual.fp32"].sha256
    textual = reference.bundle.artifacts["textual.fp32"].sha256
    assert metric(text, "ruclip_tiny_model_info", backend="onnxruntime", precision="fp32", synthetic="true",
                  visual_sha256=visual, textual_sha256=textual) == 1
    norms = np.linalg.norm(reference.encode_texts(["слово1"], normalize=False), axis=1)
    assert metric(text, "ruclip_tiny_feature_norm_sum", kind="text") >= norms[0] * 0.99
    info = http.get("/v1/info").json()
    assert info["self_test"]["enabled"] is True and info["self_test"]["last"]["passed"] is True
    assert metric(text, "ruclip_tiny_requests_total", endpoint="/v1/embeddings", status="200") > 0
