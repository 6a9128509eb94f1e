"""Embedding a list of items in memory (``embed_images``, ``embed_texts``, ``classify_images``), a shard at a time:
the one place rows are computed for a collection, shared by the resumable job (``runtime.collection.job``).
A broken image never aborts a job and never shifts a row: it is listed among the failures instead."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .inputs import JobInputs, image_inputs
from .store import Collection

JOB_CHUNK = 256  # items per shard: what is held in memory at once, and what an interruption can lose
PROGRESS_SECONDS = 0.5  # the time one part of a shard should take when a progress bar is shown


@dataclass
class Shard:
    """The rows of consecutive items: ids (those embedded), embeddings float32 [len(ids), D], texts (of a text
    job, texts[i] of ids[i]), failed_ids / failed_errors, truncated_ids (texts cut at 77 tokens)."""

    ids: list[str]
    embeddings: np.ndarray
    texts: list[str] = field(default_factory=list)
    failed_ids: list[str] = field(default_factory=list)
    failed_errors: list[str] = field(default_factory=list)
    truncated_ids: list[str] = field(default_factory=list)


def encode_shard(embedder, kind: str, ids: Sequence[str], items: Sequence, normalize: bool = True,
                 batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> Shard:
    """Embed ``items`` (paths, or texts) whose ids are ``ids``, a backend batch at a time; an undecodable image
    becomes a failure. With ``progress``, images go in parts of at most a batch sized to take ~PROGRESS_SECONDS
    each (so a person sees the count move at least once a second on a slow CPU), and ``progress`` hears of each."""
    size = batch_size or embedder.batch_size
    step = min(size, 8) if progress and kind == "images" else size
    shard = Shard([], np.zeros((0, embedder.dim), np.float32))
    rows = []
    start = 0
    while start < len(items):
        began = time.perf_counter()
        part_ids, part = list(ids[start : start + step]), list(items[start : start + step])
        start += len(part)
        if kind == "images":
            embeddings, ok, failures = embedder.encode_images_partial(part, normalize=normalize, batch_size=size)
            shard.ids += [part_ids[i] for i in ok]
            shard.failed_ids += [part_ids[index] for index, _label, _reason in failures]
            shard.failed_errors += [reason for _index, _label, reason in failures]
        else:
            result = embedder.encode_texts_detailed(part, normalize=normalize, batch_size=size)
            embeddings = result.embeddings
            shard.ids += part_ids
            shard.texts += part
            shard.truncated_ids += [part_ids[i] for i in result.truncated]
        rows.append(embeddings)
        if progress:
            progress(len(part))
            if kind == "images":  # rows do not depend on the part size: only how often the count moves
                per_item = (time.perf_counter() - began) / len(part)
                step = max(1, min(size, int(PROGRESS_SECONDS / per_item) if per_item > 0 else size))
    if rows:
        shard.embeddings = np.concatenate(rows).astype(np.float32, copy=False)
    return shard


def collection_metadata(embedder, kind: str, normalize: bool) -> dict:
    manifest = embedder.bundle.manifest
    return {
        "kind": kind,
        "model_id": manifest.model_id,
        "synthetic": embedder.synthetic,
        "bundle": str(Path(embedder.bundle.root).resolve()),
        "backend": embedder.backend.name,
        "precision": embedder.precision,
        "normalized": normalize,
        "dim": embedder.dim,
        "exif_transpose": bool(getattr(embedder, "exif_transpose", False)),
    }


def embed_inputs(embedder, inputs: JobInputs, normalize: bool = True, batch_size: int | None = None,
                 progress: Callable | None = None) -> Collection:
    """All of ``inputs`` into one Collection in memory, JOB_CHUNK items at a time (see ``run_embedding_job`` for
    a job that keeps its shards on disk and can be resumed)."""
    shards = [
        encode_shard(embedder, inputs.kind, inputs.ids[start : start + JOB_CHUNK],
                     inputs.items[start : start + JOB_CHUNK], normalize, batch_size, progress)
        for start in range(0, len(inputs), JOB_CHUNK)
    ]
    embeddings = [s.embeddings for s in shards]
    metadata = collection_metadata(embedder, inputs.kind, normalize)
    if inputs.kind == "texts":
        metadata["truncated_ids"] = [i for s in shards for i in s.truncated_ids]
        metadata["blank_lines"] = inputs.blank_lines
    return Collection(
        [i for s in shards for i in s.ids],
        np.concatenate(embeddings) if embeddings else np.zeros((0, embedder.dim), np.float32),
        [i for s in shards for i in s.failed_ids],
        [e for s in shards for e in s.failed_errors],
        metadata,
        [t for s in shards for t in s.texts],
    )


def embed_images(embedder, paths: Sequence[Path], normalize: bool = True, batch_size: int | None = None,
                 progress: Callable | None = None) -> Collection:
    """Embed image files in order, JOB_CHUNK at a time; undecodable files become failures, never abort the job."""
    return embed_inputs(embedder, image_inputs(paths), normalize, batch_size, progress)


def embed_texts(embedder, texts: Sequence[str], normalize: bool = True, batch_size: int | None = None,
                progress: Callable | None = None) -> Collection:
    """Embed texts in order (ids are 1-based line numbers, ``texts`` kept beside them); blank texts are skipped and
    counted (``blank_lines``); texts cut at 77 tokens are listed in the metadata (``truncated_ids``)."""
    kept = [(str(number), text) for number, text in enumerate(texts, 1) if text.strip()]
    inputs = JobInputs("texts", [i for i, _ in kept], [t for _, t in kept], [], len(texts) - len(kept))
    return embed_inputs(embedder, inputs, normalize, batch_size, progress)


@dataclass
class Classification:
    """Zero-shot answers for the images that could be decoded: ``ids`` (N paths), ``probabilities`` float32
    [N, len(labels)] (row i for ids[i], each summing to 1), and ``failed_ids`` / ``failed_errors`` for the rest."""

    ids: list[str]
    probabilities: np.ndarray
    failed_ids: list[str]
    failed_errors: list[str]


def classify_images(embedder, paths: Sequence[Path], labels: Sequence[str], template: str = "{}",
                    batch_size: int | None = None, progress: Callable | None = None) -> Classification:
    """Zero-shot classify image files against ``labels`` (each put into ``template``), JOB_CHUNK images at a time:
    softmax over labels of ``logit_scale · cosine``, as ``Embedder.classify``; an undecodable file is listed among
    the failures and the other images are still answered."""
    from ruclip_tiny.template import fill_template
    from runtime.bundle import BundleError
    from runtime.embedder import zero_shot_probabilities

    if embedder.logit_scale is None:
        raise BundleError(f"{embedder.bundle.root}/manifest.json has no logit_scale; re-export the bundle")
    texts = embedder.encode_texts(fill_template(template, labels), batch_size=batch_size)
    images = embed_images(embedder, paths, normalize=True, batch_size=batch_size, progress=progress)
    probabilities = zero_shot_probabilities(images.embeddings, texts, embedder.logit_scale)
    return Classification(images.ids, probabilities, images.failed_ids, images.failed_errors)
