"""A bundle as an older export (and the commands run on it since) left it: what ``export --force`` may replace.

It holds only files of its own, but not the ones today's export writes: an artifact that no longer exists
(``visual.int8.onnx``), a parity report, TensorRT engines with their timing cache, the activation report, and a
temporary file of a write that a kill interrupted. Built in milliseconds (no model, no torch).
"""

from __future__ import annotations

from pathlib import Path

from ruclip_tiny import spec
from ruclip_tiny.fileio import atomic_write_json
from runtime.bundle import MANIFEST, SCHEMA_VERSION, describe_file

RETIRED_ARTIFACT = "visual.int8.onnx"
ENGINE = "engines/10.0.0_sm90/visual.fp16.plan"
TIMING_CACHE = "engines/10.0.0_sm90/timing.cache"
PARITY_REPORT = "parity/report.json"
INTERRUPTED_WRITE = ".visual.int8.onnx.k3j2x9.partial"
PROBE_FILE = "probe/inputs.npz"


def write_older_bundle(root: Path) -> Path:
    """Write the older bundle into ``root`` (created); return ``root``."""
    root = Path(root)
    for relative, data in (
        (RETIRED_ARTIFACT, b"an int8 graph of an older export"),
        (PROBE_FILE, b"older probe inputs"),
        (ENGINE, b"a TensorRT plan"),
        (TIMING_CACHE, b"a timing cache"),
        (PARITY_REPORT, b"{}"),
        ("reports/activations.json", b"{}"),
        (INTERRUPTED_WRITE, b"half a gra"),
    ):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    atomic_write_json(root / MANIFEST, {
        "schema_version": SCHEMA_VERSION,
        "model_id": spec.MODEL_ID,
        "artifacts": {"visual.int8": describe_file(root, RETIRED_ARTIFACT, format="onnx", precision="int8")},
        "probe": {"files": [describe_file(root, PROBE_FILE)]},
    })
    return root
