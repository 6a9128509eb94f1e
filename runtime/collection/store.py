"""The collection file: what ``ruclip-tiny embed`` writes (npz or parquet) and ``ruclip-tiny search`` ranks, written
whole (``Collection.save``) or streamed shard by shard (``CollectionWriter``, so a merge holds one shard's rows).

A collection holds ``ids`` (image paths, or 1-based line numbers of a text file), ``embeddings`` float32 [N, 768]
(row i belongs to ids[i]), ``texts`` (a text collection: texts[i] is the text of ids[i]; empty for images),
``failed_ids`` / ``failed_errors`` for the items that could not be embedded, and metadata (model, bundle, backend,
precision, normalisation, truncated texts, blank lines skipped).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.fileio import atomic_path


class CollectionError(RuclipTinyError):
    """Bad input to an embedding job, or a file that is not a collection."""


@dataclass
class Collection:
    """ids: N strings; embeddings: float32 [N, D]; failed_ids / failed_errors: the items that were skipped;
    texts: N strings for a text collection (texts[i] is the text of ids[i]), empty for images."""

    ids: list[str]
    embeddings: np.ndarray
    failed_ids: list[str] = field(default_factory=list)
    failed_errors: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.npz`` (always available) or ``.parquet`` (needs pyarrow), atomically."""
        dim = self.embeddings.shape[1] if self.embeddings.ndim == 2 else 0
        with CollectionWriter(path, len(self.ids), dim, self.metadata, has_texts=bool(self.texts)) as writer:
            writer.add(self.ids, self.embeddings, self.texts)
            writer.add_failures(self.failed_ids, self.failed_errors)
        return Path(path)

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
            texts = table.column("texts").to_pylist() if "texts" in table.column_names else []
            ok = [i for i, error in enumerate(errors) if error is None]
            bad = [i for i, error in enumerate(errors) if error is not None]
            matrix = np.array([embeddings[i] for i in ok], dtype=np.float32).reshape(len(ok), -1)
            return cls([ids[i] for i in ok], matrix, [ids[i] for i in bad], [errors[i] for i in bad], metadata,
                       [texts[i] for i in ok] if texts else [])
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    [str(x) for x in data["ids"]],
                    data["embeddings"].astype(np.float32),
                    [str(x) for x in data["failed_ids"]],
                    [str(x) for x in data["failed_errors"]],
                    json.loads(str(data["metadata"])),
                    [str(x) for x in data["texts"]] if "texts" in data.files else [],
                )
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise CollectionError(f"{path} is not a collection written by ruclip-tiny embed ({exc})") from None

    def rank(self, query: np.ndarray, top: int = 5) -> list[tuple[str, float]]:
        """The ``top`` items most similar (cosine) to ``query`` float32 [D], best first: [(id, cosine)]."""
        return [(self.ids[i], score) for i, score in self.rank_indices(query, top)]

    def rank_indices(self, query: np.ndarray, top: int = 5) -> list[tuple[int, float]]:
        """Like ``rank``, with row indices (so a text collection can show ``texts[i]``): [(row, cosine)]."""
        if len(self.ids) == 0:
            return []
        from runtime.embedder import l2_normalize

        scores = l2_normalize(self.embeddings) @ l2_normalize(query[None])[0]
        order = np.argsort(-scores, kind="stable")[:top]
        return [(int(i), float(scores[i])) for i in order]


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


class CollectionWriter:
    """Writes one collection file in pieces, atomically (a temporary name renamed on a clean ``close``): ``add``
    the rows in order (``count`` of them in all, ``dim`` wide), then ``add_failures``. Only the embeddings are
    streamed; ids, texts and failures are kept until the end (small beside 768 floats a row)."""

    def __init__(self, path: str | os.PathLike, count: int, dim: int, metadata: dict, has_texts: bool = False):
        self.path = Path(path)
        self.format = output_format(self.path)
        self.count, self.dim, self.metadata, self.has_texts = count, dim, metadata, has_texts
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.failed_ids: list[str] = []
        self.failed_errors: list[str] = []
        self._atomic = atomic_path(self.path)
        self._temporary = self._atomic.__enter__()
        if self.format == "npz":
            self._zip = zipfile.ZipFile(self._temporary, "w", zipfile.ZIP_STORED, allowZip64=True)
            self._rows = self._zip.open("embeddings.npy", "w", force_zip64=True)
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                      "shape": (count, dim)}
            np.lib.format.write_array_header_2_0(self._rows, header)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            columns = [("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim)), ("error", pa.string())]
            if has_texts:
                columns.append(("texts", pa.string()))
            self._schema = pa.schema(columns).with_metadata(
                {"ruclip_tiny": json.dumps(metadata, ensure_ascii=False, sort_keys=True)}
            )
            self._parquet = pq.ParquetWriter(self._temporary, self._schema)
        self._written = 0

    def add(self, ids: list[str], embeddings: np.ndarray, texts: list[str] = ()) -> None:
        """Rows ``embeddings`` float32 [len(ids), dim] of ``ids`` (and their ``texts`` in a text collection)."""
        rows = np.ascontiguousarray(embeddings, dtype="<f4").reshape(len(ids), self.dim)
        self._written += len(ids)
        if self._written > self.count:
            raise ValueError(f"{self._written} rows added to a collection of {self.count}")
        self.ids += list(ids)
        self.texts += list(texts)
        if self.format == "npz":
            self._rows.write(rows.tobytes())
        elif len(ids):
            self._write_parquet(list(ids), list(rows), [None] * len(ids), list(texts))

    def add_failures(self, ids: list[str], errors: list[str]) -> None:
        self.failed_ids += list(ids)
        self.failed_errors += list(errors)

    def _write_parquet(self, ids, embeddings, errors, texts) -> None:
        import pyarrow as pa

        columns = {"id": ids, "embedding": embeddings, "error": errors}
        if self.has_texts:
            columns["texts"] = texts or [None] * len(ids)
        self._parquet.write_table(pa.Table.from_pydict(columns, schema=self._schema))

    def close(self) -> None:
        """Finish the file and rename it into place."""
        if self._written != self.count:
            raise ValueError(f"{self._written} rows added to a collection of {self.count}")
        if self.format == "npz":
            self._rows.close()
            for name, array in (
                ("ids", np.array(self.ids, dtype=str)),
                ("failed_ids", np.array(self.failed_ids, dtype=str)),
                ("failed_errors", np.array(self.failed_errors, dtype=str)),
                ("texts", np.array(self.texts, dtype=str)),
                ("metadata", np.array(json.dumps(self.metadata, ensure_ascii=False, sort_keys=True))),
            ):
                with self._zip.open(f"{name}.npy", "w", force_zip64=True) as handle:
                    np.lib.format.write_array(handle, array, allow_pickle=False)
            self._zip.close()
        else:
            if self.failed_ids:
                self._write_parquet(self.failed_ids, [None] * len(self.failed_ids), self.failed_errors, [])
            self._parquet.close()
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop the temporary file; nothing appears under the real name."""
        try:
            if self.format == "npz":
                self._rows.close()
                self._zip.close()
            else:
                self._parquet.close()
        finally:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> CollectionWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
