"""``OUT.parts/``: the completed shards of an unfinished embedding job, each written atomically, and the job's
identity (``job.json``) that decides whether ``--resume`` may continue them.

The identity is the sha256 of the bundle's ``manifest.json``, of the input list (each source file's path, size and
modification time) and of the options that change rows (kind, normalisation, EXIF, pixel limit, backend, precision,
shard size). A job that differs in any of them is another job: resuming it would mix rows of two jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ruclip_tiny.fileio import atomic_path, atomic_write_json, file_sha256

from .inputs import JobInputs
from .jobs import Shard
from .store import CollectionError

JOB_FILE = "job.json"


def parts_dir(out: str | os.PathLike) -> Path:
    """Where the shards of the job writing ``out`` live: ``OUT.parts/`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def inputs_sha256(inputs: JobInputs) -> str:
    """sha256 of the input list: kind, ids, and each source file's path, size and modification time (ns)."""
    digest = hashlib.sha256(inputs.kind.encode())
    for source in inputs.sources:
        try:
            stat = os.stat(source)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # a file gone or unreadable: a failure of the job, still part of its list
            size, mtime = -1, -1
        digest.update(f"\0{os.fsdecode(source)}\0{size}\0{mtime}".encode("utf-8", "surrogateescape"))
    digest.update(b"\1" + "\0".join(inputs.ids).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


@dataclass(frozen=True)
class JobIdentity:
    """What makes two runs the same job. options: the settings that change rows (JSON values)."""

    bundle_manifest_sha256: str
    inputs_sha256: str
    items: int
    options: dict

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def of(cls, embedder, inputs: JobInputs, options: dict) -> JobIdentity:
        manifest = Path(embedder.bundle.root) / "manifest.json"
        return cls(file_sha256(manifest), inputs_sha256(inputs), len(inputs), dict(options))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> JobIdentity:
        return cls(str(data["bundle_manifest_sha256"]), str(data["inputs_sha256"]), int(data["items"]),
                   dict(data["options"]))

    def differences(self, recorded: JobIdentity) -> list[str]:
        """What differs from the ``recorded`` job, in words (empty: the same job)."""
        found = []
        if self.bundle_manifest_sha256 != recorded.bundle_manifest_sha256:
            found.append(f"the bundle differs (manifest.json sha256 {self.bundle_manifest_sha256[:12]}…, the job's "
                         f"{recorded.bundle_manifest_sha256[:12]}…)")
        if self.inputs_sha256 != recorded.inputs_sha256:
            found.append(f"the inputs differ ({self.items} items now, {recorded.items} in the job, or files changed: "
                         "paths, sizes or modification times)")
        for key in sorted(set(self.options) | set(recorded.options)):
            now, then = self.options.get(key), recorded.options.get(key)
            if now != then:
                found.append(f"{key} is {json.dumps(now)}, the job's is {json.dumps(then)}")
        return found


class ShardStore:
    """The ``OUT.parts/`` folder of the job writing ``out``: ``job.json`` and ``shard-NNNNNNNN.npz`` files."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.root = parts_dir(self.out)

    def open(self, identity: JobIdentity, resume: bool) -> list[int]:
        """Start the job (create the folder with its identity) or, with ``resume``, continue it: the indices of the
        shards already done. Refused, changing nothing: a folder there without ``resume``; a ``resume`` of a job
        whose identity differs."""
        if not self.root.exists():
            self._create(identity)
            return []
        if not resume:
            raise CollectionError(
                f"{self.root} holds the shards of an unfinished job: continue it with --resume, or remove "
                f"{self.root} to start again"
            )
        try:
            recorded = JobIdentity.from_json(json.loads((self.root / JOB_FILE).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CollectionError(
                f"{self.root} is not the shards folder of an embedding job ({exc}); remove it to start again"
            ) from None
        differences = identity.differences(recorded)
        if differences:
            raise CollectionError(
                f"--resume refused: {self.root} holds another job's shards: " + "; ".join(differences)
                + f". Run the job as it was started, or remove {self.root} to start again"
            )
        return self.completed()

    def _create(self, identity: JobIdentity) -> None:
        # built under a temporary name and renamed: a kill never leaves a folder without its job.json
        self.root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.", dir=self.root.parent))
        atomic_write_json(staging / JOB_FILE, identity.to_json())
        os.chmod(staging, 0o755)
        os.replace(staging, self.root)

    def completed(self) -> list[int]:
        return sorted(int(p.stem.removeprefix("shard-")) for p in self.root.glob("shard-*.npz"))

    def path(self, index: int) -> Path:
        return self.root / f"shard-{index:08d}.npz"

    def write(self, index: int, shard: Shard) -> None:
        with atomic_path(self.path(index)) as temporary, open(temporary, "wb") as handle:
            np.savez(
                handle,
                ids=np.array(shard.ids, dtype=str),
                embeddings=shard.embeddings.astype(np.float32),
                texts=np.array(shard.texts, dtype=str),
                failed_ids=np.array(shard.failed_ids, dtype=str),
                failed_errors=np.array(shard.failed_errors, dtype=str),
                truncated_ids=np.array(shard.truncated_ids, dtype=str),
            )

    def read(self, index: int, embeddings: bool = True) -> Shard:
        """One shard (without its rows when ``embeddings`` is False: an empty [0, 0] array)."""
        try:
            with np.load(self.path(index), allow_pickle=False) as data:
                def strings(key):
                    return [str(x) for x in data[key]]

                rows = data["embeddings"].astype(np.float32) if embeddings else np.zeros((0, 0), np.float32)
                return Shard(strings("ids"), rows, strings("texts"), strings("failed_ids"),
                             strings("failed_errors"), strings("truncated_ids"))
        except (OSError, ValueError, KeyError) as exc:
            raise CollectionError(
                f"{self.path(index)} cannot be read ({exc}); remove it and run again with --resume to redo it"
            ) from None

    def remove(self) -> None:
        shutil.rmtree(self.root)
