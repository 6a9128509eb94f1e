"""The probe stored in a bundle: its inputs and reference outputs, read and checked (never unpickled)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ruclip_tiny import spec
from runtime.bundle import MANIFEST, PROBE_INPUTS, PROBE_REFERENCE, Bundle, BundleError


@dataclass(frozen=True)
class Probe:
    """A bundle's probe set and its reference outputs.

    inputs: pixels float32 [Ni,3,224,224]; input_ids, attention_mask int64 [Nt,seq] (plus image_names, texts).
    reference: image_features float32 [Ni,768]; text_features float32 [Nt,768].
    """

    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]

    @property
    def images(self) -> int:
        return len(self.reference[spec.VISUAL.outputs[0].name])

    @property
    def texts(self) -> int:
        return len(self.reference[spec.TEXTUAL.outputs[0].name])


def _read_npz(path: Path, required: list[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise BundleError(
            f"{path} is missing: parity needs the probe set and its reference outputs — "
            "re-export the bundle (ruclip-tiny export --force)"
        )
    arrays = {}
    try:
        # allow_pickle=False: a bundle may come from elsewhere, and unpickling runs code
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                arrays[name] = _read_array(data, name, path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path} cannot be read ({exc}); re-export the bundle (ruclip-tiny export --force)") from None
    missing = [name for name in required if name not in arrays]
    if missing:
        raise BundleError(f"{path} lacks {', '.join(missing)}; re-export the bundle (ruclip-tiny export --force)")
    return arrays


def _read_array(data, name: str, path: Path) -> np.ndarray:
    """One array of an open .npz; an object array (pickled Python objects) is refused by name, never unpickled."""
    try:
        return data[name]
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise BundleError(
            f"{path}: {name} is an object array (pickled Python objects), which parity never loads: unpickling runs "
            "code — a probe holds only numbers and strings; re-export the bundle (ruclip-tiny export --force)"
        ) from None


def _verify_probe_files(bundle: Bundle) -> None:
    """Check the probe files parity reads against the size and sha256 the manifest lists for them
    (``manifest["probe"]["files"]``): a changed reference would silently move every verdict, so a probe file the
    manifest does not vouch for is refused too."""
    listed = {entry.path: entry for entry in (bundle.manifest.probe.files if bundle.manifest.probe else [])}
    for relative in (PROBE_INPUTS, PROBE_REFERENCE):
        if relative not in listed:
            raise BundleError(
                f"{bundle.root / MANIFEST}: probe.files lists no size and sha256 for {relative}, so its reference "
                "cannot be trusted; re-export the bundle (ruclip-tiny export --force)"
            )
        bundle.verify_file("probe", listed[relative])


def load_probe(bundle: Bundle) -> Probe:
    """Read and check ``probe/inputs.npz`` and ``probe/reference.npz``: sha256 against the manifest when it lists
    them, required arrays present, row counts agreeing, reference features finite."""
    _verify_probe_files(bundle)
    encoders = (spec.VISUAL, spec.TEXTUAL)
    inputs = _read_npz(bundle.path(PROBE_INPUTS), [t.name for e in encoders for t in e.inputs])
    reference = _read_npz(bundle.path(PROBE_REFERENCE), [e.outputs[0].name for e in encoders])
    for encoder_spec in encoders:
        output = encoder_spec.outputs[0].name
        features = reference[output]
        if features.ndim != 2 or features.shape[1] != spec.EMBED_DIM or features.dtype.kind != "f":
            raise BundleError(
                f"{bundle.path(PROBE_REFERENCE)}: {output} must be float [N, {spec.EMBED_DIM}], got "
                f"{features.dtype} {list(features.shape)}; re-export the bundle (ruclip-tiny export --force)"
            )
        if not np.isfinite(features).all():
            raise BundleError(
                f"{bundle.path(PROBE_REFERENCE)}: {output} holds NaN or Inf, so nothing can be compared with it; "
                "re-export the bundle (ruclip-tiny export --force)"
            )
        for tensor in encoder_spec.inputs:
            if len(inputs[tensor.name]) != len(features):
                raise BundleError(
                    f"{bundle.root}: probe {tensor.name} has {len(inputs[tensor.name])} rows but the reference "
                    f"{output} has {len(features)}; re-export the bundle (ruclip-tiny export --force)"
                )
    return Probe(inputs, reference)

