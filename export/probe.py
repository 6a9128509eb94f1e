"""The fixed probe set stored in every bundle: real photos and Russian texts with the reference model's outputs.

Parity is later checked against these files on a GPU box that has no torch, either by ``ruclip-tiny parity`` (the
npz files) or by Polygraphy directly (``polygraphy run visual.onnx --trt --load-inputs probe/polygraphy/
visual_inputs.json --load-outputs probe/polygraphy/visual_outputs.json``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.bundle import ExportError
from ruclip_tiny import spec
from ruclip_tiny.demo import DEMO_DIR, LABELS_FILE, demo_photos
from ruclip_tiny.fileio import atomic_path, atomic_write_bytes
from ruclip_tiny.transform import image_transform, load_image
from runtime.backends.tensorrt import quiet_polygraphy
from runtime.bundle import POLYGRAPHY_DIR, PROBE_INPUTS, PROBE_REFERENCE
from runtime.manifest import FileEntry, ProbeEntry

PROBE_DIR = "probe"
PROBE_IMAGES_DIR = f"{PROBE_DIR}/images"
# The runner name under which the reference outputs appear in Polygraphy's comparison report.
REFERENCE_RUNNER = "pytorch-reference"


class ProbeError(ExportError, ValueError):
    """A probe that cannot be stored faithfully: non-finite reference outputs, or files that read back differently."""

_LONG_CAPTION = (
    "На этой фотографии, сделанной ранним утром на космодроме, видна белая ракета-носитель, которая медленно "
    "отрывается от стартового стола; вокруг неё поднимаются огромные клубы пара и дыма, а вдалеке, за "
    "ограждением, стоят зрители с фотоаппаратами и смотрят, как она уходит в небо."
)

# Russian texts of the probe: zero-shot rows for the demo photos (labels and captions that describe them, so the
# real model's top-1 has a clear margin), distractors, and every tokenizer/encoder edge case a backend could get
# wrong. Order matters only in that indices are stored (truncated texts are reported by index).
PROBE_TEXTS: tuple[str, ...] = (
    # Labels of the six demo photos, and distractors that match none of them.
    "кошка",
    "ракета",
    "чашка кофе",
    "астронавт",
    "монеты",
    "галактики",
    "собака",
    "автомобиль",
    "диаграмма",
    # Captions of the demo photos.
    "фотография рыжей полосатой кошки, которая смотрит в сторону",
    "ракета стартует с космодрома в облаке дыма",
    "чашка кофе с молочной пенкой на блюдце",
    "портрет астронавта в скафандре на фоне флага",
    "старинные монеты из Помпей на тёмном фоне",
    "тысячи далёких галактик на снимке космического телескопа",
    # Long texts: one that fits in 77 tokens, and two that do not (cut by the tokenizer).
    "Большая белая ракета поднимается над стартовой площадкой, оставляя за собой яркий огненный след",
    _LONG_CAPTION,
    " ".join(["кошка спит на диване, а рядом стоит чашка кофе"] * 10),
    # Punctuation runs and quotes.
    "Что?!?!... Нет!!! — да, да; (может быть) ...",
    "!!!???...,,,;;;:::---",
    "«Мастер и Маргарита» — роман Булгакова",
    "он сказал: \"привет\" и 'пока'",
    # ё/Ё and й, including й written as и + combining breve (the original keeps the mark, so the word is [UNK]).
    "Ёлка, ёжик и йогурт: всё ещё зимой",
    "ЁЖ ЙОД ЁЛКА",
    "мои\u0306 дом",
    # Latin mixed in, and a Cyrillic word with a Latin letter inside.
    "фото iPhone 15 Pro Max",
    "New York ночью — огни Манхэттена",
    "photo of a cat",
    "Kошка",
    # Digits.
    "12 апреля 1961 года Гагарин полетел в космос",
    "3.14159 26535 89793 23846",
    "+7 (495) 123-45-67, 10\u00a0000 рублей",
    # Empty, whitespace-only, one word, one character.
    "",
    "   \t\n  ",
    "космос",
    "я",
    # Emoji: alone, and mixed with words.
    "🚀 ракета летит к звёздам ✨",
    "😺",
    "☕ утренний кофе",
    # Case and hyphenation.
    "КОСМИЧЕСКИЙ КОРАБЛЬ",
    "северо-западный ветер",
)


def probe_images() -> list[Path]:
    """The probe photos: the real photographs shipped as ``ruclip_tiny/assets/demo`` (sorted by file name)."""
    return demo_photos()


def probe_pixels(paths: list[Path]) -> np.ndarray:
    """pixels: float32 [Ni, 3, 224, 224], each photo through the original preprocessing."""
    transform = image_transform()
    pixels = np.empty((len(paths), 3, spec.IMAGE_SIZE, spec.IMAGE_SIZE), dtype=np.float32)
    for index, path in enumerate(paths):
        pixels[index] = transform(load_image(path))
    return pixels


def reference_features(model, pixels: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray):
    """(image_features float32 [Ni, 768], text_features float32 [Nt, 768]) of the reference model."""
    import torch

    if model.training:
        # Dropout would make the "reference" a random draw.
        raise ValueError("the reference model is in training mode; call model.eval() before writing the probe")
    with torch.inference_mode():
        image = model.encode_image(torch.from_numpy(pixels)).float().numpy()
        text = model.encode_text(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).float().numpy()
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(text, dtype=np.float32)


def check_finite_outputs(outputs: dict[str, np.ndarray]) -> None:
    """Raise ProbeError when a reference output holds NaN/Inf: a reference that cannot be compared with anything."""
    for name, array in outputs.items():
        bad = ~np.isfinite(array)
        if bad.any():
            rows = np.unique(np.argwhere(bad)[:, 0]) if array.ndim else np.zeros(1, np.int64)
            raise ProbeError(
                f"the reference model's {name} on the probe hold {int(np.isnan(array).sum())} NaN and "
                f"{int(np.isinf(array).sum())} Inf values (rows {', '.join(map(str, rows[:5]))}"
                f"{' …' if len(rows) > 5 else ''}); its weights overflow float32: check the checkpoint"
            )


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as temporary:
        # A file object, not the path: np.savez appends ".npz" to a name that lacks it (the temporary one does).
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)


def _check_plain_arrays(arrays: dict[str, np.ndarray]) -> None:
    # allow_pickle=False on the reading side refuses object arrays; catch them here, where the fix is.
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise TypeError(f"probe array {name!r} has dtype object; store str/number arrays only")


def polygraphy_feeds(encoder: str, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """``--load-inputs`` data: a list of feed dicts (one iteration holding the whole probe batch), named per spec."""
    return [{tensor.name: arrays[tensor.name] for tensor in spec.ENCODERS[encoder].inputs}]


def polygraphy_results(encoder: str, features: np.ndarray):
    """``--load-outputs`` data: ``RunResults`` with one runner (the reference) and one iteration."""
    from polygraphy.comparator import RunResults

    results = RunResults()
    (output,) = spec.ENCODERS[encoder].outputs
    results.add([{output.name: features}], runner_name=REFERENCE_RUNNER)
    return results


def _write_polygraphy(root: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> list[str]:
    import polygraphy.json as polygraphy_json

    written = []
    for encoder in spec.ENCODERS:
        feeds = polygraphy_feeds(encoder, inputs)
        relative = f"{POLYGRAPHY_DIR}/{encoder}_inputs.json"
        with atomic_path(root / relative) as temporary:
            polygraphy_json.save_json(feeds, str(temporary))
        written.append(relative)

        (output,) = spec.ENCODERS[encoder].outputs
        relative = f"{POLYGRAPHY_DIR}/{encoder}_outputs.json"
        with atomic_path(root / relative) as temporary, quiet_polygraphy():
            polygraphy_results(encoder, outputs[output.name]).save(str(temporary))
        written.append(relative)
    verify_polygraphy(root, inputs, outputs)
    return written


def verify_polygraphy(root: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    """Load the Polygraphy files back and require every array to equal (bit for bit) what was meant to be stored.

    NaN equals NaN here (a stored NaN read back as NaN is faithful). Raises ProbeError (a ValueError) naming the file:
    a Polygraphy release that reads these files differently must fail the export here, not a parity run later on a
    GPU box.
    """
    import polygraphy.json as polygraphy_json
    from polygraphy.comparator import RunResults

    root = Path(root)
    for encoder, encoder_spec in spec.ENCODERS.items():
        path = root / POLYGRAPHY_DIR / f"{encoder}_inputs.json"
        feeds = polygraphy_json.load_json(str(path))
        if not (isinstance(feeds, list) and len(feeds) == 1 and isinstance(feeds[0], dict)):
            raise ProbeError(f"{path}: expected a list with one feed dict, got {type(feeds).__name__}")
        for tensor in encoder_spec.inputs:
            _require_equal(path, tensor.name, feeds[0].get(tensor.name), inputs[tensor.name])

        path = root / POLYGRAPHY_DIR / f"{encoder}_outputs.json"
        with quiet_polygraphy():
            results = RunResults.load(str(path))
        if list(results.keys()) != [REFERENCE_RUNNER] or len(results[REFERENCE_RUNNER]) != 1:
            raise ProbeError(f"{path}: expected one runner {REFERENCE_RUNNER!r} with one iteration")
        iteration = results[REFERENCE_RUNNER][0]
        for tensor in encoder_spec.outputs:
            stored = iteration[tensor.name] if tensor.name in iteration else None
            _require_equal(path, tensor.name, stored, outputs[tensor.name])


def read_back_difference(stored: np.ndarray, expected: np.ndarray) -> str | None:
    """How ``stored`` differs from ``expected`` (dtype, shape, or values, NaN equal to NaN), or None when equal."""
    if stored.dtype != expected.dtype or stored.shape != expected.shape:
        return (f"reads back as {stored.dtype} {list(stored.shape)}, not the {expected.dtype} "
                f"{list(expected.shape)} written")
    if expected.dtype.kind in "fc":
        differs = ~((stored == expected) | (np.isnan(stored) & np.isnan(expected)))
    else:
        differs = stored != expected
    if not differs.any():
        return None
    first = tuple(int(i) for i in np.argwhere(differs)[0])
    nan_note = ""
    if expected.dtype.kind in "fc":
        nan_note = (f"; NaN: {int(np.isnan(stored).sum())} read back, {int(np.isnan(expected).sum())} written")
    return (f"{int(differs.sum())} of {differs.size} values differ from those written (first at {list(first)}: "
            f"{stored[first].item()!r} read back, {expected[first].item()!r} written{nan_note})")


def _require_equal(path: Path, name: str, stored, expected: np.ndarray) -> None:
    if stored is None:
        raise ProbeError(f"{path}: has no array {name!r}; re-export the probe")
    difference = read_back_difference(np.asarray(stored), np.asarray(expected))
    if difference is not None:
        raise ProbeError(f"{path}: {name} {difference}; re-export the probe")


def write_probe(model, tokenizer, root: str | Path) -> ProbeEntry:
    """Write the probe set with the reference outputs into the bundle at ``root``; return its manifest entry.

    model: the reference ``RuCLIPTiny`` (eval mode); tokenizer: a ``ruclip_tiny.tokenizer.Tokenizer``.
    Writes (every file atomically):
        probe/inputs.npz      pixels float32 [Ni,3,224,224]; input_ids, attention_mask int64 [Nt,77];
                              image_names, texts (str [Ni], [Nt]); truncated int64 [k] (text indices cut at 77)
        probe/reference.npz   image_features float32 [Ni,768], text_features float32 [Nt,768],
                              logit_scale float32 [] (exp of the model's parameter, the multiplier itself)
        probe/images/         the photos, their licence README and labels
        probe/polygraphy/     {visual,textual}_inputs.json (--load-inputs), {visual,textual}_outputs.json
                              (--load-outputs: RunResults with the one runner "pytorch-reference")
    Every npz loads with ``allow_pickle=False``.
    Returns images, texts, files (each with size and sha256) and, as written, truncated_texts and runner (the
    logit scale is the manifest's one ``logit_scale``).
    """
    root = Path(root)
    photos = probe_images()
    texts = list(PROBE_TEXTS)
    pixels = probe_pixels(photos)
    input_ids, attention_mask = tokenizer(texts)
    truncated = np.asarray(tokenizer.truncated_indices(texts), dtype=np.int64)
    image_features, text_features = reference_features(model, pixels, input_ids, attention_mask)
    logit_scale = np.float32(np.exp(float(model.logit_scale.detach().float())))

    inputs = {
        "pixels": pixels,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "image_names": np.asarray([photo.name for photo in photos], dtype=str),
        "texts": np.asarray(texts, dtype=str),
        "truncated": truncated,
    }
    outputs = {
        "image_features": image_features,
        "text_features": text_features,
        "logit_scale": np.asarray(logit_scale, dtype=np.float32),
    }
    _check_plain_arrays(inputs)
    _check_plain_arrays(outputs)
    check_finite_outputs(outputs)

    written = []
    for photo in [*photos, DEMO_DIR / "README.md", LABELS_FILE]:
        relative = f"{PROBE_IMAGES_DIR}/{photo.name}"
        atomic_write_bytes(root / relative, photo.read_bytes())
        written.append(relative)
    _save_npz(root / PROBE_INPUTS, inputs)
    _save_npz(root / PROBE_REFERENCE, outputs)
    written += [PROBE_INPUTS, PROBE_REFERENCE]
    written += _write_polygraphy(root, inputs, outputs)

    return ProbeEntry(
        images=len(photos),
        texts=len(texts),
        files=[FileEntry.describe(root, relative) for relative in sorted(written)],
        extra={"truncated_texts": [int(i) for i in truncated], "runner": REFERENCE_RUNNER},
    )
