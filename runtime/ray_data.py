"""Bulk embedding on a Ray cluster with Ray Data: file paths (or texts) → decoding and preprocessing in tasks →
``Embedder`` actors through ``map_batches`` → an ``embedding`` column (and ``error`` for rows that failed).

    embed_dataset(dataset, bundle, column="path", kind="image")  for users who already have a Ray Dataset
    embed_job(inputs, bundle, address="local")                     ``ruclip-tiny embed ... --ray``: a Collection

The bundle reaches the workers by path: it must be readable at the same path on every node (shared storage).
Actors are sized from the cluster's resources so that reading and decoding always keep CPUs: on 2 CPUs two 1-CPU
actors take both and the read tasks starve; the default is one actor per 2 CPUs, and the CPUs of the actors are at
most half of the cluster's. Needs the ``ray`` extra (``ray[data]``); torch-free like the rest of the runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.transform import DEFAULT_MAX_IMAGE_PIXELS

DECODE_BATCH = 32  # images a decoding task preprocesses at once
DECODE_CPUS = 0.5  # per decoding task: two run on each CPU the actors leave free
ERROR = "error"
EMBEDDING = "embedding"
PIXELS = "__pixels"
TRUNCATED = "truncated"  # text rows: cut at 77 tokens


class RayDataError(RuclipTinyError):
    """Ray is missing, the cluster cannot be reached, or the pipeline was asked for something it cannot do."""


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayDataError(
            "Ray Data is not installed: from a checkout of ruclip-tiny run pip install '.[ray]'"
        ) from None
    return ray


@dataclass(frozen=True)
class ActorPlan:
    """How many Embedder actors, and the CPUs and GPUs each asks for."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float

    def describe(self, resources: dict) -> str:
        return (f"ray: {self.actors} Embedder actor(s) of {self.cpus_per_actor:g} CPU / {self.gpus_per_actor:g} GPU "
                f"on a cluster of {resources.get('CPU', 0):g} CPU / {resources.get('GPU', 0):g} GPU")


def plan_actors(resources: dict, actors: int | None = None, gpus_per_actor: float = 0.0) -> ActorPlan:
    """Size the Embedder actors from the cluster's ``resources`` (``ray.cluster_resources()``) so that reading and
    decoding keep at least half of the CPUs (at least one): GPU actors one per ``gpus_per_actor`` share of the GPUs;
    CPU actors one per 2 CPUs. ``actors`` given: that many, their CPUs scaled down to fit (two on 2 CPUs: 0.5 each)."""
    cpus = float(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    if gpus_per_actor < 0:
        raise RayDataError(f"--ray-gpus-per-actor {gpus_per_actor}: must be at least 0")
    if gpus_per_actor > 0:
        if gpus < gpus_per_actor:
            raise RayDataError(f"--ray-gpus-per-actor {gpus_per_actor:g}: the cluster has {gpus:g} GPUs")
        count = actors or max(1, int(gpus // gpus_per_actor))
    else:
        count = actors or max(1, int(cpus // 2))
    free_for_actors = max(cpus - max(1.0, cpus / 2), min(cpus, 0.5))
    per_actor = min(1.0, free_for_actors / count)
    return ActorPlan(count, round(per_actor, 3), gpus_per_actor)


def _decode_batch(batch: dict, column: str, exif_transpose: bool, max_image_pixels: int | None) -> dict:
    """A decoding task: the images named in ``column`` → PIXELS float32 [B, 3, 224, 224] (zeros for a failure)
    and ERROR ("", or why the image failed: the same words as the plain job)."""
    from runtime.embedder import ImageItemError, image_preprocessing, preprocess_item

    transform = image_preprocessing(exif_transpose)
    items = batch[column]
    pixels = np.zeros((len(items), 3, 224, 224), np.float32)
    errors = np.full(len(items), "", dtype=object)
    for index, item in enumerate(items):
        outcome = preprocess_item(transform, index, item.item() if isinstance(item, np.generic) else item,
                                  max_image_pixels)
        if isinstance(outcome, ImageItemError):
            errors[index] = outcome.reason
        else:
            pixels[index] = outcome
    return {**batch, PIXELS: pixels, ERROR: errors}


class _EmbedderActor:
    """One Embedder per actor (a GPU actor opens its own TensorRT / CUDA backend); embeds a batch of decoded
    images or of texts."""

    def __init__(self, bundle: str, kind: str, column: str, normalize: bool, options: dict):
        from runtime.embedder import Embedder

        self.embedder = Embedder.load(bundle, **options)
        self.kind, self.column, self.normalize = kind, column, normalize

    def __call__(self, batch: dict) -> dict:
        from runtime.embedder import l2_normalize

        dim = self.embedder.dim
        if self.kind == "text":
            texts = [str(text) for text in batch[self.column]]
            result = self.embedder.encode_texts_detailed(texts, normalize=self.normalize)
            truncated = np.zeros(len(texts), dtype=bool)
            truncated[list(result.truncated)] = True
            return {**batch, EMBEDDING: result.embeddings.astype(np.float32), TRUNCATED: truncated,
                    ERROR: np.full(len(texts), "", dtype=object)}
        errors = batch.pop(ERROR)
        pixels = batch.pop(PIXELS)
        ok = np.array([not error for error in errors], dtype=bool)
        rows = np.full((len(errors), dim), np.nan, np.float32)
        if ok.any():
            features = self.embedder.encode_pixels(pixels[ok])
            rows[ok] = l2_normalize(features) if self.normalize else features
        return {**batch, EMBEDDING: rows, ERROR: errors}


def embed_dataset(dataset, bundle: str | os.PathLike, *, column: str = "path", kind: str = "image",
                  normalize: bool = True, backend: str = "auto", precision: str = "auto",
                  batch_size: int | None = None, actors: int | None = None, gpus_per_actor: float = 0.0,
                  exif_transpose: bool = False, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
    """A lazy Ray Dataset: ``dataset``'s rows with an ``embedding`` column (float32 [D]; NaN for a failed row)
    and an ``error`` column ("" for a row that worked, else why the image could not be decoded); texts also get
    ``truncated`` (cut at 77 tokens).

    column: the image paths (kind="image"; read and decoded in tasks on the workers) or the texts (kind="text").
    The bundle is opened by path in each actor (shared storage). actors / gpus_per_actor: see ``plan_actors``
    (sized from ``ray.cluster_resources()``); backend / precision / batch_size as for ``Embedder.load``.
    """
    ray = _ray()
    if kind not in ("image", "text"):
        raise RayDataError(f"kind={kind!r}: use 'image' or 'text'")
    if column not in dataset.columns():
        raise RayDataError(f"the dataset has no column {column!r} (it has {dataset.columns()}); pass column=")
    plan = plan_actors(ray.cluster_resources(), actors, gpus_per_actor)
    size = batch_size or 32
    options = {"backend": backend, "precision": precision, "exif_transpose": exif_transpose,
               "max_image_pixels": max_image_pixels, "batch_size": size}
    if kind == "image":
        dataset = dataset.map_batches(
            # not 1 CPU like a CPU actor: Ray Data would fuse decoding into the actors (no separate decoding tasks)
            _decode_batch, batch_size=DECODE_BATCH, batch_format="numpy", num_cpus=DECODE_CPUS,
            fn_kwargs={"column": column, "exif_transpose": exif_transpose, "max_image_pixels": max_image_pixels},
        )
    return dataset.map_batches(
        _EmbedderActor, batch_size=size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.cpus_per_actor, num_gpus=plan.gpus_per_actor or None,
        fn_constructor_kwargs={"bundle": os.path.abspath(os.fspath(bundle)), "kind": kind, "column": column,
                               "normalize": normalize, "options": options},
    )


@dataclass
class RayJobResult:
    """collection: what the plain job would write (ids aligned, failures listed); plan: the actors, in words."""

    collection: object
    plan: str


def embed_job(inputs, bundle: str | os.PathLike, *, address: str | None = "local", actors: int | None = None,
              gpus_per_actor: float = 0.0, normalize: bool = True, backend: str = "auto", precision: str = "auto",
              batch_size: int | None = None, exif_transpose: bool = False,
              max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> RayJobResult:
    """Run ``inputs`` (``runtime.collection.JobInputs``) through ``embed_dataset`` on Ray: ``address`` "local" (or
    None) starts a local Ray for the job (unless one is running in this process already), otherwise the address of
    a running cluster. Rows come back to this process and are put in input order."""
    from runtime.bundle import Bundle
    from runtime.collection import Collection

    ray = _ray()
    bundle = os.path.abspath(os.fspath(bundle))
    loaded = Bundle.load(bundle)  # a bad path is refused here, before a cluster starts
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=None if address in (None, "local") else address, include_dashboard=False,
                     log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayDataError(f"--ray {address}: cannot reach a Ray cluster there ({exc})") from None
        started = True
    try:
        kind = "image" if inputs.kind == "images" else "text"
        column = "path" if kind == "image" else "text"
        values = [str(item) for item in inputs.items]
        dataset = ray.data.from_items([{"index": i, column: v} for i, v in enumerate(values)])
        plan = plan_actors(ray.cluster_resources(), actors, gpus_per_actor)
        result = embed_dataset(dataset, bundle, column=column, kind=kind, normalize=normalize,
                               backend=backend, precision=precision, batch_size=batch_size, actors=actors,
                               gpus_per_actor=gpus_per_actor, exif_transpose=exif_transpose,
                               max_image_pixels=max_image_pixels)
        wanted = ["index", EMBEDDING, ERROR] + ([TRUNCATED] if kind == "text" else [])
        rows = sorted(result.select_columns(wanted).take_all(), key=lambda row: row["index"])
        description = plan.describe(ray.cluster_resources())
    finally:
        if started:
            ray.shutdown()
    ok = [row for row in rows if not row[ERROR]]
    failed = [row for row in rows if row[ERROR]]
    dim = loaded.embedding_dim
    embeddings = np.stack([np.asarray(row[EMBEDDING], np.float32) for row in ok]) if ok \
        else np.zeros((0, dim), np.float32)
    metadata = {
        "kind": inputs.kind, "model_id": loaded.manifest.model_id, "synthetic": loaded.synthetic,
        "bundle": bundle, "backend": backend, "precision": precision, "normalized": normalize,
        "dim": dim, "exif_transpose": exif_transpose, "ray": address or "local",
    }
    texts = []
    if inputs.kind == "texts":
        texts = [inputs.items[row["index"]] for row in ok]
        metadata["blank_lines"] = inputs.blank_lines
        metadata["truncated_ids"] = [inputs.ids[row["index"]] for row in ok if row[TRUNCATED]]
    collection = Collection([inputs.ids[row["index"]] for row in ok], embeddings,
                            [inputs.ids[row["index"]] for row in failed], [row[ERROR] for row in failed],
                            metadata, texts)
    return RayJobResult(collection, description)
