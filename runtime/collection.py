"""Embedding collections: what ``ruclip-tiny embed`` writes (npz or parquet) and ``ruclip-tiny search`` ranks; the
folder jobs of ``embed`` and ``classify``.

A collection holds ``ids`` (image paths, or 1-based line numbers of a text file), ``embeddings`` float32 [N, 768]
(row i belongs to ids[i]), ``failed_ids`` / ``failed_errors`` for the items that could not be embedded, and
metadata (model, bundle, backend, precision, normalisation, truncated texts). A broken image never aborts a job
and never shifts a row: it is listed among the failures instead.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.fileio import atomic_path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
JOB_CHUNK = 256  # items decoded and embedded per step: bounded memory for 100k-image folders


class CollectionError(RuclipTinyError):
    """Bad input to an embedding job, or a file that is not a collection."""


@dataclass
class Collection:
    """ids: N strings; embeddings: float32 [N, D]; failed_ids / failed_errors: the items that were skipped."""

    ids: list[str]
    embeddings: np.ndarray
    failed_ids: list[str] = field(default_factory=list)
    failed_errors: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.npz`` (always available) or ``.parquet`` (needs pyarrow), atomically."""
        path = Path(path)
        if output_format(path) == "parquet":
            self._save_parquet(path)
        else:
            with atomic_path(path) as temporary, open(temporary, "wb") as handle:
                np.savez(
                    handle,
                    ids=np.array(self.ids, dtype=str),
                    embeddings=self.embeddings.astype(np.float32),
                    failed_ids=np.array(self.failed_ids, dtype=str),
                    failed_errors=np.array(self.failed_errors, dtype=str),
                    metadata=np.array(json.dumps(self.metadata, ensure_ascii=False, sort_keys=True)),
                )
        return path

    def _save_parquet(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        dim = self.embeddings.shape[1] if self.embeddings.ndim == 2 else 0
        embeddings = [row for row in self.embeddings.astype(np.float32)] + [None] * len(self.failed_ids)
        table = pa.table(
            {
                "id": pa.array(self.ids + self.failed_ids, pa.string()),
                "embedding": pa.array(embeddings, pa.list_(pa.float32(), dim)),
                "error": pa.array([None] * len(self.ids) + self.failed_errors, pa.string()),
            }
        ).replace_schema_metadata({"ruclip_tiny": json.dumps(self.metadata, ensure_ascii=False, sort_keys=True)})
        with atomic_path(path) as temporary:
            pq.write_table(table, temporary)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Collection:
        path = Path(path)
        if not path.is_file():
            raise CollectionError(
                f"collection {path} does not exist; create one with: ruclip-tiny embed BUNDLE ... --out {path}"
            )
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            metadata = json.loads((table.schema.metadata or {}).get(b"ruclip_tiny", b"{}"))
            ids, embeddings, errors = (table.column(c).to_pylist() for c in ("id", "embedding", "error"))
            ok = [i for i, error in enumerate(errors) if error is None]
            bad = [i for i, error in enumerate(errors) if error is not None]
            matrix = np.array([embeddings[i] for i in ok], dtype=np.float32).reshape(len(ok), -1)
            return cls([ids[i] for i in ok], matrix, [ids[i] for i in bad], [errors[i] for i in bad], metadata)
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    [str(x) for x in data["ids"]],
                    data["embeddings"].astype(np.float32),
                    [str(x) for x in data["failed_ids"]],
                    [str(x) for x in data["failed_errors"]],
                    json.loads(str(data["metadata"])),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise CollectionError(f"{path} is not a collection written by ruclip-tiny embed ({exc})") from None

    def rank(self, query: np.ndarray, top: int = 5) -> list[tuple[str, float]]:
        """The ``top`` items most similar (cosine) to ``query`` float32 [D], best first: [(id, cosine)]."""
        if len(self.ids) == 0:
            return []
        from runtime.embedder import l2_normalize

        scores = l2_normalize(self.embeddings) @ l2_normalize(query[None])[0]
        order = np.argsort(-scores, kind="stable")[:top]
        return [(self.ids[i], float(scores[i])) for i in order]


def output_format(path: str | os.PathLike) -> str:
    """"npz" or "parquet" from the file name; checked before a job starts so a typo does not cost the whole job."""
    suffix = Path(path).suffix
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise CollectionError(
                f"--out {path}: writing parquet needs pyarrow (the parquet extra: pip install '.[parquet]' in a "
                "checkout of ruclip-tiny), or use .npz"
            ) from None
        return "parquet"
    if suffix == ".npz":
        return "npz"
    raise CollectionError(f"--out {path}: use a .npz or .parquet file name")


def image_paths(arguments: Sequence[str]) -> list[Path]:
    """Expand ``--images`` arguments: a directory is walked recursively (sorted, image suffixes only), a glob is
    expanded (sorted), a file is taken as given. An argument that matches nothing is an error naming it."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found = [path]
        elif glob.has_magic(argument):
            found = sorted(Path(p) for p in glob.glob(argument, recursive=True) if Path(p).is_file())
        else:
            raise CollectionError(f"--images {argument}: no such file or directory")
        if not found:
            raise CollectionError(f"--images {argument}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) there")
        paths.extend(found)
    return paths


def text_lines(path: str | os.PathLike, option: str = "--texts") -> list[str]:
    r"""The texts of a UTF-8 file, one per line (line i is text id i, 1-based); an empty line is an empty text.

    Lines end at ``\n`` or ``\r\n`` only, as an editor or ``wc -l`` counts them: ``str.splitlines`` would also
    split inside a line at U+2028, U+2029, ``\x0b``, ``\x0c``, ``\x1c``-``\x1e`` and ``\x85``, and shift
    every id after it. A final line without ``\n`` is a line; a file ending in ``\n`` has no extra empty line.
    ``option`` names the file in errors (``--texts``, ``--labels-file``).
    """
    try:
        with open(path, encoding="utf-8", newline="") as handle:  # newline="": no translation of lone "\r"
            text = handle.read()
    except FileNotFoundError:
        raise CollectionError(f"{option} {path}: no such file") from None
    except OSError as exc:  # a directory, no permission
        raise CollectionError(f"{option} {path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise CollectionError(f"{option} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def embed_images(embedder, paths: Sequence[Path], normalize: bool = True, batch_size: int | None = None,
                 progress: Callable | None = None) -> Collection:
    """Embed image files in order, JOB_CHUNK at a time; undecodable files become failures, never abort the job."""
    ids, rows, failed_ids, failed_errors = [], [], [], []
    for start in range(0, len(paths), JOB_CHUNK):
        chunk = list(paths[start : start + JOB_CHUNK])
        embeddings, ok, failures = embedder.encode_images_partial(chunk, normalize=normalize, batch_size=batch_size)
        ids += [str(chunk[i]) for i in ok]
        rows.append(embeddings)
        for index, _label, reason in failures:
            failed_ids.append(str(chunk[index]))
            failed_errors.append(reason)
        if progress:
            progress(len(chunk))
    embeddings = np.concatenate(rows) if rows else np.zeros((0, embedder.dim), np.float32)
    return Collection(ids, embeddings, failed_ids, failed_errors, _metadata(embedder, "images", normalize))


def embed_texts(embedder, texts: Sequence[str], normalize: bool = True, batch_size: int | None = None,
                progress: Callable | None = None) -> Collection:
    """Embed texts in order (ids are 1-based line numbers); texts cut at 77 tokens are listed in the metadata."""
    rows, truncated = [], []
    for start in range(0, len(texts), JOB_CHUNK):
        chunk = list(texts[start : start + JOB_CHUNK])
        result = embedder.encode_texts_detailed(chunk, normalize=normalize, batch_size=batch_size)
        rows.append(result.embeddings)
        truncated += [str(start + index + 1) for index in result.truncated]
        if progress:
            progress(len(chunk))
    embeddings = np.concatenate(rows) if rows else np.zeros((0, embedder.dim), np.float32)
    metadata = _metadata(embedder, "texts", normalize)
    metadata["truncated_ids"] = truncated
    return Collection([str(i + 1) for i in range(len(texts))], embeddings, metadata=metadata)


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


def _metadata(embedder, kind: str, normalize: bool) -> dict:
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
