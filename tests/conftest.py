"""Shared fixtures: the reference model on synthetic weights is built once per session (imports dominate)."""

from __future__ import annotations

import os

# No test opens a connection beyond loopback: a tokenizer given as a Hugging Face id is never fetched from the hub.
# Set at import, before transformers / huggingface_hub read it (they read it once, when first imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from tests.legacy_inputs import SYNTHETIC_SEED


@pytest.fixture(scope="session")
def synthetic_state():
    from ruclip_tiny.synthetic import synthetic_checkpoint

    return synthetic_checkpoint(SYNTHETIC_SEED)


@pytest.fixture(scope="session")
def reference_model(synthetic_state):
    """RuCLIPTiny with the synthetic weights the legacy expectations were computed with."""
    from ruclip_tiny.checkpoint import CheckpointInfo, attach_state_dict
    from ruclip_tiny.model import RuCLIPTiny

    return attach_state_dict(RuCLIPTiny(), synthetic_state, CheckpointInfo(synthetic=True, seed=SYNTHETIC_SEED))


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory):
    """ONE full-size bundle per test session (synthetic weights, demo vocabulary), exported with force=True over an
    older bundle (tests/export/older_bundle.py) so that replacement is exercised too. Tests must not modify it: copy
    it first. What the export wrote to stdout and handed to ``on_line`` is kept beside it (``export_output``)."""
    import contextlib
    import io

    from export.bundle import export_bundle
    from tests.export.older_bundle import write_older_bundle

    out = tmp_path_factory.mktemp("bundles") / "ruclip-tiny"
    write_older_bundle(out)
    stdout, lines = io.StringIO(), []
    with contextlib.redirect_stdout(stdout):
        export_bundle(out, force=True, on_line=lines.append)
    (out.parent / "export-stdout.txt").write_text(stdout.getvalue())
    (out.parent / "export-lines.txt").write_text("\n".join(lines))
    return out


@pytest.fixture(scope="session")
def export_output(exported_bundle) -> dict[str, str]:
    """What the session's export printed to stdout itself ("stdout") and handed to ``on_line`` ("lines")."""
    return {name: (exported_bundle.parent / f"export-{name}.txt").read_text() for name in ("stdout", "lines")}


@pytest.fixture(scope="session")
def bundle_reference_model(exported_bundle):
    """The reference rebuilt from the bundle's own reference.safetensors (proves the bundle is self-contained)."""
    from ruclip_tiny.checkpoint import load_checkpoint

    return load_checkpoint(exported_bundle / "reference.safetensors")
