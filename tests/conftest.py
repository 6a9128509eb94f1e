"""Shared fixtures: the reference model on synthetic weights is built once per session (imports dominate)."""

from __future__ import annotations

import pytest

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
