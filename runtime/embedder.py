"""``Embedder``: images and texts in, RuCLIP tiny embeddings out, from a bundle through any backend.

Torch-free unless the torch backend is chosen. Images are decoded and preprocessed in a thread pool (Pillow releases
the GIL) one chunk ahead of the encoder, so decoding overlaps inference and memory stays at two chunks; texts go
through the runtime's fast tokenizer from the bundle's ``tokenizer/``. Whatever the chunking, row i of an output
belongs to input i.

    with Embedder.load("bundle/") as embedder:
        images = embedder.encode_images(["cat.jpg", "rocket.jpg"])        # float32 [2, 768], unit rows
        texts = embedder.encode_texts(["кошка", "ракета"])                 # float32 [2, 768], unit rows
        probabilities = embedder.classify(["cat.jpg"], ["кошка", "ракета"], template="фото: {}")
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from ruclip_tiny import spec
from ruclip_tiny.errors import ImageDecodeError
from ruclip_tiny.template import fill_template
from ruclip_tiny.transform import DEFAULT_MAX_IMAGE_PIXELS, image_transform, load_image
from runtime.backends import Backend, plan_backend
from runtime.bundle import TOKENIZER_DIR, Bundle, BundleError

logger = logging.getLogger("runtime.embedder")

DEFAULT_BATCH_SIZE = 32
# Decoding a JPEG is ~5-20 ms; more threads than this only add contention with the encoder's own threads.
MAX_DECODE_WORKERS = 8


class ImageItemError(ImageDecodeError):
    """One input image that cannot be decoded or preprocessed: ``index`` in the input, ``item`` (its label: the
    path, or a description such as ``<12345 bytes>``) and ``reason``."""

    def __init__(self, index: int, item: str, reason: str):
        super().__init__(f"images[{index}] ({item}): {reason}")
        self.index = index
        self.item = item
        self.reason = reason


class TextTruncatedWarning(UserWarning):
    """Texts longer than 77 tokens (with [CLS] and [SEP]) were cut, as the original model cut them."""


@dataclass(frozen=True)
class TextEmbeddings:
    """embeddings: float32 [N, 768]; truncated: indices of the texts cut at 77 tokens."""

    embeddings: np.ndarray
    truncated: list[int]


@dataclass(frozen=True)
class PartialImageEmbeddings:
    """What ``encode_images_partial`` returns (it also unpacks as a 3-tuple).

    embeddings: float32 [len(ok_indices), 768], row j belonging to input ``ok_indices[j]``;
    ok_indices: ascending input indices of the images that worked;
    failures: ``(index, item label, reason)`` of each image that did not, ascending.
    """

    embeddings: np.ndarray
    ok_indices: list[int]
    failures: list[tuple[int, str, str]]

    def __iter__(self):
        return iter((self.embeddings, self.ok_indices, self.failures))


# --- items: what an image may be given as ------------------------------------------------------------------------


def item_label(item: object) -> str:
    """How an input image is named in errors: its path, or what it is (``<12345 bytes>``, ``<PIL image RGB 64x48>``)."""
    if isinstance(item, (str, os.PathLike)):
        return os.fsdecode(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<{len(item)} bytes>"
    if isinstance(item, Image.Image):
        return f"<PIL image {item.mode} {item.width}x{item.height}>"
    if isinstance(item, np.ndarray):
        return f"<{item.dtype} array {'x'.join(map(str, item.shape))}>"
    name = getattr(item, "name", None)
    return name if isinstance(name, str) else f"<{type(item).__name__}>"


def _image_of(item: object, label: str, max_pixels: int | None = None) -> Image.Image:
    """The PIL image of an input item; raises ImageDecodeError (message prefixed with ``label``) or TypeError.
    ``max_pixels`` limits encoded items (paths, bytes, files), checked from the header before decoding."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ImageDecodeError(
                f"{label}: an image array must be uint8 [H, W, 3] (RGB), got {item.dtype} {list(item.shape)}"
            )
        return Image.fromarray(np.ascontiguousarray(item))
    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(item, "read"):
        return load_image(item, name=label, max_pixels=max_pixels)
    raise TypeError(
        f"an image must be a path, bytes, a binary file object, a PIL image or a uint8 [H, W, 3] array, "
        f"got {type(item).__name__}"
    )


class ExifTransposedTransform:
    """``transform`` applied after ``PIL.ImageOps.exif_transpose``: a photo is first turned the way its EXIF
    orientation tag says. A departure from the reference, which never applied EXIF orientation (nor did the model's
    training), so it is opt-in: ``exif_transpose=True`` of the Embedder, ``--exif-transpose`` of the CLI."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image: Image.Image) -> np.ndarray:
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception as err:  # noqa: BLE001 — a malformed EXIF block can fail in many ways; each is one answer
            raise ImageDecodeError(f"its EXIF orientation cannot be read ({type(err).__name__}: {err})") from err
        return self.transform(upright)

    def __repr__(self) -> str:
        return f"ExifTransposed({self.transform!r})"


def image_preprocessing(exif_transpose: bool = False):
    """The callable ``PIL.Image -> float32 [3, 224, 224]`` the embedder and the server use: the original
    preprocessing, after EXIF orientation only when ``exif_transpose`` (off: the reference's behaviour)."""
    transform = image_transform()
    return ExifTransposedTransform(transform) if exif_transpose else transform


def preprocess_item(
    transform, index: int, item: object, max_pixels: int | None = None
) -> np.ndarray | ImageItemError:
    """float32 [3, 224, 224] for one item, or the ImageItemError saying why not (returned, so a batch collects them);
    an encoded item with more than ``max_pixels`` pixels is refused from its header, before it is decoded."""
    label = item_label(item)
    try:
        return transform(_image_of(item, label, max_pixels))
    except ImageDecodeError as err:
        reason = str(err).removeprefix(f"{label}: ")
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # a lazily loaded PIL image failing in resize
        reason = f"cannot be decoded ({type(err).__name__}: {err})"
    return ImageItemError(index, label, reason)


# --- arithmetic on embeddings ------------------------------------------------------------------------------------


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm: float32 [N, D] -> float32 [N, D]; a zero row stays zero."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    return (features / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def similarity(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of every image with every text: [Ni, D], [Nt, D] -> float32 [Ni, Nt] (normalises itself)."""
    images = l2_normalize(image_embeddings).astype(np.float64)
    texts = l2_normalize(text_embeddings).astype(np.float64)
    return (images @ texts.T).astype(np.float32)


def zero_shot_probabilities(
    image_embeddings: np.ndarray, text_embeddings: np.ndarray, logit_scale: float
) -> np.ndarray:
    """softmax over texts of ``logit_scale · cosine``: [Ni, D], [Nt, D] -> float32 [Ni, Nt], rows summing to 1."""
    logits = float(logit_scale) * similarity(image_embeddings, text_embeddings).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


# --- the embedder --------------------------------------------------------------------------------------------------


class Embedder:
    """A loaded bundle and backend that embeds images and texts.

    Attributes: ``backend`` (the Backend), ``bundle`` (the Bundle), ``precision`` ("fp32"/"fp16"), ``logit_scale``
    (the multiplier, exp of the stored parameter; None if the manifest lacks it), ``dim`` (768), ``synthetic``
    (the bundle was exported from synthetic weights), ``selection`` (why this backend: what ``auto`` chose),
    ``batch_size`` (the default chunk size), ``trim_padding`` (texts run without the padding columns no text of a
    chunk needs), ``last_truncated`` (indices cut at 77 tokens by this object's last ``encode_texts`` call),
    ``exif_transpose`` (images are turned by their EXIF orientation first: off by default, as in the reference),
    ``max_image_pixels`` (an encoded image with more pixels is a failure, refused before it is decoded).
    """

    def __init__(
        self,
        backend: Backend,
        bundle: Bundle,
        selection: str = "",
        batch_size: int = DEFAULT_BATCH_SIZE,
        decode_workers: int | None = None,
        trim_padding: bool = True,
        exif_transpose: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        self.backend = backend
        self.bundle = bundle
        self.precision = backend.precision
        self.selection = selection
        self.batch_size = _check_batch_size(batch_size)
        self.trim_padding = trim_padding
        self.decode_workers = decode_workers or min(MAX_DECODE_WORKERS, os.cpu_count() or 1)
        self.logit_scale = bundle.logit_scale
        self.dim = bundle.embedding_dim
        self.synthetic = bundle.synthetic
        self.last_truncated: list[int] = []
        self.exif_transpose = bool(exif_transpose)
        self.max_image_pixels = max_image_pixels
        self._transform = image_preprocessing(self.exif_transpose)
        self._tokenizer = None
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike | Bundle,
        backend: str = "auto",
        precision: str = "auto",
        verify: bool = True,
        allow_not_deployable: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        decode_workers: int | None = None,
        trim_padding: bool = True,
        exif_transpose: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        **backend_options,
    ) -> Embedder:
        """Open ``bundle`` with ``backend`` ("auto", "onnxruntime", "torch", "tensorrt") at ``precision`` ("auto":
        fp16 on a GPU, fp32 on a CPU).

        verify: check size and sha256 of every artifact the backend reads (the fused text graph too; each file once)
        and of the tokenizer files against the manifest first. allow_not_deployable: use a graph or engine whose
        last parity run did not pass or never ran (a missing verdict is not deployable); it is logged.
        batch_size: default rows per backend call; decode_workers: image decoding threads.
        trim_padding: feed the text encoder only as many token columns as the longest text of a chunk needs
        (the encoder masks padding, so the features are the same; short texts run ~20x faster than at 77).
        exif_transpose: turn each image by its EXIF orientation tag before the preprocessing — a departure from the
        reference, which never did (off: the original model's behaviour; a sideways phone photo stays sideways).
        max_image_pixels: an encoded image (path, bytes, file) with more pixels is refused from its header, before
        it is decoded: a failure like an undecodable image (None: only Pillow's own limit).
        backend_options: for the chosen backend — onnxruntime: providers, intra_op_threads, inter_op_threads,
        graph_optimization_level, execution_mode, fused_attention, image_micro_batch, text_micro_batch_tokens;
        torch: device, threads.
        Raises BundleError (not a bundle, a manifest field of a wrong type or a path outside the bundle, an
        artifact changed or with inputs/outputs other than ``ruclip_tiny.spec`` says, the tokenizer missing;
        NotDeployableError: not deployable) or BackendError (cannot run it here).
        This is the one place a load gates deployability and verifies sha256: the backend's plan lists every
        artifact it will read, checked here before it opens.
        """
        bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        plan = plan_backend(bundle, backend, precision, verify=verify, allow_not_deployable=allow_not_deployable,
                            **backend_options)
        bundle.check_deployable(plan.artifacts, allow_not_deployable)
        bundle.check_tokenizer(verify)
        if verify:
            bundle.verify(plan.artifacts)
        opened = plan.open(bundle)  # each graph's inputs and outputs are checked against ruclip_tiny.spec here
        logger.info("embedder: %s from %s (%s)", opened.describe(), bundle.root, plan.reason)
        return cls(opened, bundle, plan.reason, batch_size, decode_workers, trim_padding, exif_transpose,
                   max_image_pixels)

    # --- lifecycle ---

    def close(self) -> None:
        """Release the backend and the decoding threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.backend.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = ", synthetic weights" if self.synthetic else ""
        return f"<Embedder {self.backend.describe()} from {self.bundle.root}{kind}>"

    # --- images ---

    def encode_images(
        self, items: Iterable[object], normalize: bool = True, batch_size: int | None = None
    ) -> np.ndarray:
        """Embed images given as paths, bytes, binary file objects, PIL images or uint8 [H, W, 3] RGB arrays.

        Returns float32 [N, dim], row i for item i (unit rows when ``normalize``). The first item that cannot be
        decoded raises ImageItemError (an ImageDecodeError) naming it and its index; see ``encode_images_partial``
        to skip such items instead.
        """
        return self._encode_images(list(items), normalize, batch_size, strict=True).embeddings

    def encode_pixels(self, pixels: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Raw features float32 [N, dim] of preprocessed pixels float32 [N, 3, 224, 224], in chunks of
        ``batch_size`` (default: the embedder's; the backend cuts a chunk above its limit); row i belongs to
        pixels[i]."""
        size = self._chunk_size(batch_size)
        rows = [self.backend.encode_pixels(chunk)
                for chunk in (pixels[start : start + size] for start in range(0, len(pixels), size))]
        return np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)

    def encode_images_partial(
        self, items: Iterable[object], normalize: bool = True, batch_size: int | None = None
    ) -> PartialImageEmbeddings:
        """Like ``encode_images``, but an undecodable item is reported instead of raised.

        Returns ``(embeddings float32 [len(ok_indices), dim], ok_indices, failures [(index, item label, reason)])``.
        """
        return self._encode_images(list(items), normalize, batch_size, strict=False)

    def _encode_images(
        self, items: list, normalize: bool, batch_size: int | None, strict: bool
    ) -> PartialImageEmbeddings:
        size = self._chunk_size(batch_size)
        rows, ok_indices, failures = [], [], []
        for start, outcomes in self._decoded_chunks(items, size):
            good = []
            for offset, outcome in enumerate(outcomes):
                if isinstance(outcome, ImageItemError):
                    if strict:
                        raise outcome
                    failures.append((outcome.index, outcome.item, outcome.reason))
                else:
                    good.append((start + offset, outcome))
            if good:
                pixels = np.stack([pixels for _, pixels in good])
                rows.append(self.backend.encode_pixels(pixels))
                ok_indices += [index for index, _ in good]
        embeddings = np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)
        return PartialImageEmbeddings(l2_normalize(embeddings) if normalize else embeddings, ok_indices, failures)

    def _decoded_chunks(self, items: list, size: int) -> Iterator[tuple[int, list]]:
        """(start, [pixels or ImageItemError per item]) per chunk of ``size`` items, in order; the next chunk is
        decoding while the caller encodes this one."""
        if not items:
            return
        pool = self._decode_pool()

        def submit(start: int) -> list[Future]:
            return [
                pool.submit(preprocess_item, self._transform, index, items[index], self.max_image_pixels)
                for index in range(start, min(start + size, len(items)))
            ]

        pending = submit(0)
        try:
            for start in range(0, len(items), size):
                current = pending
                pending = submit(start + size) if start + size < len(items) else []
                yield start, [future.result() for future in current]
        finally:
            for future in pending:  # an error or an abandoned caller: drop what was decoded ahead
                future.cancel()

    def _decode_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="ruclip-decode")
        return self._pool

    # --- texts ---

    @property
    def tokenizer(self):
        """The runtime's fast tokenizer for the bundle's ``tokenizer/`` (loaded on first use)."""
        if self._tokenizer is None:
            from runtime.tokenizer import FastTokenizer

            self._tokenizer = FastTokenizer.from_directory(self.bundle.path(TOKENIZER_DIR))
        return self._tokenizer

    def encode_texts(self, texts: Sequence[str], normalize: bool = True, batch_size: int | None = None) -> np.ndarray:
        """Embed texts: float32 [N, dim], row i for text i (unit rows when ``normalize``).

        Texts longer than 77 tokens are cut, as the original model cut them: their indices are kept in
        ``last_truncated`` and a TextTruncatedWarning names them.
        """
        result = self.encode_texts_detailed(texts, normalize, batch_size)
        self.last_truncated = result.truncated
        if result.truncated:
            shown = result.truncated[:10]
            more = f" and {len(result.truncated) - len(shown)} more" if len(result.truncated) > len(shown) else ""
            warnings.warn(
                f"{len(result.truncated)} of {len(texts)} texts are longer than {spec.MAX_TEXT_LENGTH} tokens and were "
                f"cut to fit (indices {shown}{more})",
                TextTruncatedWarning,
                stacklevel=2,
            )
        return result.embeddings

    def encode_texts_detailed(
        self, texts: Sequence[str], normalize: bool = True, batch_size: int | None = None
    ) -> TextEmbeddings:
        """``encode_texts`` returning the truncated indices with the embeddings, without warning.

        With ``trim_padding`` and more texts than one chunk, the texts are bucketed by length: chunks are cut from
        the texts sorted by token count, so each runs only as wide as its own longest text, and the rows are put
        back in input order (row i is always text i).
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings; for one text pass [text]")
        texts = list(texts)
        if not texts:
            return TextEmbeddings(np.zeros((0, self.dim), np.float32), [])
        size = self._chunk_size(batch_size)
        encoded = self.tokenizer.encode(texts)
        order = np.arange(len(texts))
        if self.trim_padding and len(texts) > size:
            order = np.argsort(encoded.lengths, kind="stable")
        embeddings = np.empty((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), size):
            rows = order[start : start + size]
            ids, mask = encoded.input_ids[rows], encoded.attention_mask[rows]
            if self.trim_padding:
                width = int(encoded.lengths[rows].max())
                ids, mask = ids[:, :width], mask[:, :width]
            embeddings[rows] = self.backend.encode_tokens(ids, mask)
        embeddings = l2_normalize(embeddings) if normalize else embeddings
        return TextEmbeddings(embeddings, list(encoded.truncated))

    # --- both ---

    def similarity(self, image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix float32 [Ni, Nt] (see the module function ``similarity``)."""
        return similarity(image_embeddings, text_embeddings)

    def classify(
        self, images: Iterable[object], labels: Sequence[str], template: str = "{}", batch_size: int | None = None
    ) -> np.ndarray:
        """Zero-shot probabilities float32 [N, len(labels)]: softmax over labels of
        ``logit_scale · cosine(image, text(template with the label))``; each row sums to 1.

        ``template`` holds exactly one ``{}`` (``ruclip_tiny.template``); any other is refused with a TemplateError
        before anything runs."""
        if isinstance(labels, str) or not labels:
            raise ValueError("labels must be a non-empty list of strings")
        texts = fill_template(template, labels)
        if self.logit_scale is None:
            raise BundleError(f"{self.bundle.root}/manifest.json has no logit_scale; re-export the bundle")
        texts = self.encode_texts(texts, batch_size=batch_size)
        images = self.encode_images(images, batch_size=batch_size)
        return zero_shot_probabilities(images, texts, self.logit_scale)

    # --- plumbing ---

    def _chunk_size(self, batch_size: int | None) -> int:
        return _check_batch_size(batch_size if batch_size is not None else self.batch_size)


def _check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size

