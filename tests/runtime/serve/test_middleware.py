"""The serving middleware knows the endpoints only through the app's routes: the metrics' endpoint labels, the body
types a POST may have (415 otherwise) and the batchers a request is marked as arriving at all follow the routes,
a route added to the app included, and a path that is no route is counted as "other" (labels stay bounded).
"""

from __future__ import annotations

from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (pip install -e '.[dev]')")
pytest.importorskip("fastapi", reason="the server tests need the serve extra (pip install -e '.[serve]')")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from runtime.embedder import Embedder  # noqa: E402
from runtime.serve import BackgroundServer, ServerSettings, create_app  # noqa: E402
from runtime.serve.metrics import OTHER_ENDPOINT, endpoint_labels  # noqa: E402
from runtime.serve.middleware import ServingMiddleware  # noqa: E402
from tests.runtime.fake_bundle import build_fake_bundle  # noqa: E402

SERVED = {"/v1/embeddings/text", "/v1/embeddings/image", "/v1/classify", "/healthz", "/readyz", "/metrics", "/v1/info",
          "/v1/embeddings", "/v1/models"}


class Word(BaseModel):
    word: str


def request_counts(text: str) -> dict[tuple[str, str], float]:
    """{(endpoint, status): count} of ruclip_tiny_requests_total."""
    return {(sample.labels["endpoint"], sample.labels["status"]): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "ruclip_tiny_requests_total"}


def test_the_endpoint_labels_are_the_apps_api_routes_and_only_they():
    app = create_app(lambda: None)
    assert endpoint_labels(app.routes) == SERVED  # not /docs, /openapi.json, /redoc: those count as "other"


def test_the_batchers_of_each_endpoint_come_from_its_route():
    app = create_app(lambda: None)
    middleware = ServingMiddleware(app=None, service=app.state.service, router=app.router)
    assert middleware.batchers == {"/v1/embeddings/text": ("text",), "/v1/embeddings/image": ("image",),
                                   "/v1/classify": ("text", "image"), "/v1/embeddings": ("text", "image")}
    assert middleware.endpoints == SERVED


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("routes") / "fake-bundle")


def test_a_route_added_to_the_app_is_labelled_and_checked_and_unknown_paths_count_as_other(bundle):
    app = create_app(lambda: Embedder.load(bundle, backend="onnxruntime", intra_op_threads=1), ServerSettings())

    @app.post("/v1/echo")
    async def echo(body: Word):
        return {"word": body.word}

    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/v1/echo", json={"word": "кошка"}).json() == {"word": "кошка"}
        refused = client.post("/v1/echo", content=b'{"word": "x"}', headers={"content-type": "text/plain"})
        assert refused.status_code == 415 and "application/json" in refused.json()["detail"]
        assert client.get("/nowhere/1").status_code == 404
        assert client.get("/openapi.json").status_code == 200
        counts = request_counts(client.get("/metrics").text)
    assert counts[("/v1/echo", "200")] == 1 and counts[("/v1/echo", "415")] == 1
    assert counts[(OTHER_ENDPOINT, "404")] == 1 and counts[(OTHER_ENDPOINT, "200")] == 1
    assert {endpoint for endpoint, _ in counts} <= SERVED | {"/v1/echo", OTHER_ENDPOINT}
