"""The resumable embedding job behind ``ruclip-tiny embed``: shards of ``shard_size`` items embedded in order and
written to ``OUT.parts/`` as each completes; a stop request ends the job after the shard in flight; at the end the
shards are merged into OUT (streamed: one shard's rows in memory) and ``OUT.parts/`` is removed."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .inputs import JobInputs
from .jobs import JOB_CHUNK, collection_metadata, encode_shard
from .shards import JobIdentity, ShardStore
from .store import CollectionError, CollectionWriter


@dataclass
class JobOutcome:
    """finished: OUT written (else stopped, the completed shards kept in ``parts``); embedded: rows written;
    shards_done / shards: completed shards of all; resumed_shards: those found done at the start; items_done: the
    items of the completed shards."""

    out: Path
    parts: Path
    kind: str
    finished: bool
    items: int
    shards: int
    shards_done: int
    resumed_shards: int
    embedded: int = 0
    failed_ids: list[str] = field(default_factory=list)
    failed_errors: list[str] = field(default_factory=list)
    truncated_ids: list[str] = field(default_factory=list)
    blank_lines: int = 0
    items_done: int = 0


def job_options(embedder, inputs: JobInputs, normalize: bool, shard_size: int) -> dict:
    """The options that change rows or their grouping into shards: part of the job's identity."""
    return {
        "kind": inputs.kind,
        "normalize": normalize,
        "exif_transpose": bool(getattr(embedder, "exif_transpose", False)),
        "max_image_pixels": getattr(embedder, "max_image_pixels", None),
        "backend": embedder.backend.name,
        "precision": embedder.precision,
        "shard_size": shard_size,
    }


def run_embedding_job(embedder, inputs: JobInputs, out: str | os.PathLike, *, shard_size: int = JOB_CHUNK,
                      normalize: bool = True, batch_size: int | None = None, resume: bool = False,
                      stop: threading.Event | None = None,
                      progress: Callable[[int], None] | None = None) -> JobOutcome:
    """Embed ``inputs`` into ``out`` (.npz or .parquet) through shards in ``OUT.parts/``.

    resume: continue from the shards there (refused when the job's identity differs; without ``resume`` an
    existing ``OUT.parts/`` is refused). stop: when set, the job ends after the shard in flight and returns
    ``finished=False`` (an exception such as KeyboardInterrupt drops the shard in flight instead; completed shards
    stay either way). progress(n): n more items done (first the items of resumed shards, then every batch).
    Raises CollectionError for a refused start or resume, or a shard that cannot be read.
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise CollectionError(f"--shard-size {shard_size}: must be a whole number of at least 1")
    out = Path(out)
    store = ShardStore(out)
    identity = JobIdentity.of(embedder, inputs, job_options(embedder, inputs, normalize, shard_size))
    done = set(store.open(identity, resume))
    shards = (len(inputs) + shard_size - 1) // shard_size
    outcome = JobOutcome(out, store.root, inputs.kind, False, len(inputs), shards, len(done), len(done),
                         blank_lines=inputs.blank_lines)
    outcome.items_done = sum(min(shard_size, len(inputs) - i * shard_size) for i in done)
    if progress and done:
        progress(outcome.items_done)
    for index in range(shards):
        if index in done:
            continue
        if stop is not None and stop.is_set():
            return outcome
        start = index * shard_size
        shard = encode_shard(embedder, inputs.kind, inputs.ids[start : start + shard_size],
                             inputs.items[start : start + shard_size], normalize, batch_size, progress)
        store.write(index, shard)
        outcome.shards_done += 1
        outcome.items_done += len(inputs.items[start : start + shard_size])
    _merge(store, embedder, inputs, normalize, shards, outcome)
    store.remove()
    outcome.finished = True
    return outcome


def _merge(store: ShardStore, embedder, inputs: JobInputs, normalize: bool, shards: int,
           outcome: JobOutcome) -> None:
    """Shards into OUT, in input order: a first pass reads ids and failures, the second streams the rows."""
    heads = [store.read(index, embeddings=False) for index in range(shards)]
    outcome.embedded = sum(len(h.ids) for h in heads)
    outcome.failed_ids = [i for h in heads for i in h.failed_ids]
    outcome.failed_errors = [e for h in heads for e in h.failed_errors]
    outcome.truncated_ids = [i for h in heads for i in h.truncated_ids]
    metadata = collection_metadata(embedder, inputs.kind, normalize)
    if inputs.kind == "texts":
        metadata["truncated_ids"] = outcome.truncated_ids
        metadata["blank_lines"] = inputs.blank_lines
    del heads
    with CollectionWriter(outcome.out, outcome.embedded, embedder.dim, metadata,
                          has_texts=inputs.kind == "texts") as writer:
        for index in range(shards):
            shard = store.read(index)
            writer.add(shard.ids, shard.embeddings, shard.texts)
        writer.add_failures(outcome.failed_ids, outcome.failed_errors)
