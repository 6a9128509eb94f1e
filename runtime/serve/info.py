"""What ``GET /v1/info`` says: the server's batching and limits, and what it serves (model, backend, parity)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from runtime.embedder import Embedder
from runtime.serve.service import EmbeddingService

# the settings shown under "batching"; the other max_* settings are shown under "limits"
_BATCHING = ("max_batch", "max_image_batch", "max_wait_ms", "max_queue_items")


def server_info(service: EmbeddingService) -> dict:
    """Readiness, batching, limits, whether an API key is required, the self-test (enabled or skipped with
    --no-self-test, every how many seconds, the last result), and (once loaded) ``describe_embedder``."""
    settings = service.settings
    body = {"ready": service.ready, "state": service.state,
            "batching": {"enabled": settings.batching, "max_batch": settings.max_batch,
                         "max_image_batch": service.image_batch, "max_wait_ms": settings.max_wait_ms,
                         "max_queue_items": settings.max_queue_items},
            "limits": {key: value for key, value in asdict(settings).items()
                       if key.startswith("max_") and key not in _BATCHING},
            "api_key_required": settings.api_key is not None,
            "self_test": {"enabled": settings.self_test,
                          "interval_s": settings.self_test_interval_s if settings.self_test else None,
                          "last": None if service.self_test.last is None else service.self_test.last.to_json()}}
    if service.embedder is not None:
        body.update(describe_embedder(service.embedder))
    return body


def describe_embedder(embedder: Embedder) -> dict:
    """Model, synthetic, backend, precision, device, dim, logit scale and the parity status of the artifacts the
    backend serves (it says which: ``Backend.served_artifacts``), from the manifest."""
    manifest = embedder.bundle.manifest
    backend = embedder.backend
    parity = {}
    for key in backend.served_artifacts():
        parity[key] = {
            "deployable": manifest.artifacts[key].deployable,
            "passed": not manifest.parity[key].failures if key in manifest.parity else None,
        }
    return {
        "model": manifest.model_id,
        "synthetic": embedder.synthetic,
        "backend": backend.name,
        "precision": embedder.precision,
        "device": backend.device,
        "selection": embedder.selection,
        "dim": embedder.dim,
        "logit_scale": embedder.logit_scale,
        "bundle": Path(embedder.bundle.root).resolve().name,  # its name: where it lies is the host's business
        "parity": parity,
    }
