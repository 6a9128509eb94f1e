"""The synthetic default checkpoint: deterministic, the exact architecture, trained-like scales."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ruclip_tiny import spec
from ruclip_tiny.synthetic import synthetic_checkpoint, synthetic_model


@pytest.fixture(scope="module")
def seed0():
    return synthetic_checkpoint(0)


def test_same_seed_gives_identical_weights_and_another_seed_does_not(seed0, synthetic_state):
    again = synthetic_checkpoint(0)
    assert all(torch.equal(seed0[k], again[k]) for k in seed0)
    assert not torch.equal(seed0["final_ln.weight"], synthetic_state["final_ln.weight"])


def test_it_has_every_published_tensor_in_float32(seed0):
    assert sum(t.numel() for t in seed0.values()) == spec.PARAMETER_COUNT
    assert all(t.dtype == torch.float32 for t in seed0.values())


def test_scales_look_trained_not_initialised(seed0):
    gammas = torch.cat([v for k, v in seed0.items() if k.endswith(".gamma")])
    assert gammas.numel() == 96 * 3 + 192 * 3 + 384 * 9 + 768 * 3  # every ConvNeXt block has its layer scale
    assert 0.1 <= gammas.min() and gammas.max() <= 1.0 and gammas.std() > 0.2
    norm_weights = torch.cat(
        [
            v for k, v in seed0.items()
            if k.endswith("weight") and ("norm" in k or "LayerNorm" in k or k == "visual.stem.1.weight")
        ]
    )
    assert abs(norm_weights.mean().item() - 1) < 0.01 and 0.08 < norm_weights.std().item() < 0.12
    fc1 = seed0["visual.stages.2.blocks.4.mlp.fc1.weight"]  # [1536, 384]
    assert math.isclose(fc1.std().item(), 1 / math.sqrt(384), rel_tol=0.05)
    dw = seed0["visual.stages.0.blocks.0.conv_dw.weight"]  # depthwise [96, 1, 7, 7]: fan-in 49
    assert math.isclose(dw.std().item(), 1 / 7, rel_tol=0.1)
    assert math.isclose(seed0["logit_scale"].item(), spec.LOGIT_SCALE_INIT, rel_tol=1e-6)


def test_every_block_changes_the_features(seed0):
    """At timm's 1e-6 layer-scale init the blocks would contribute ~nothing; here removing one block shows."""
    model = synthetic_model(0)
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    with torch.inference_mode():
        full = model.encode_image(pixels)
        model.visual.stages[3].blocks[2].gamma.zero_()
        without = model.encode_image(pixels)
    assert (full - without).abs().max() > 0.05 * full.abs().max()
    assert model.checkpoint_info.synthetic and model.checkpoint_info.seed == 0
    assert "synthetic" in model.checkpoint_info.label
