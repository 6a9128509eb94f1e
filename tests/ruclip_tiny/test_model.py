"""The reference module: published structure, original norm numerics, encode/forward semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ruclip_tiny import spec
from ruclip_tiny.model import UnbiasedLayerNorm2d


def test_parameter_count_is_the_published_one(reference_model):
    assert sum(p.numel() for p in reference_model.parameters()) == spec.PARAMETER_COUNT == 38_317_537


def test_unbiased_norm_sits_exactly_where_timm_054_saw_non_contiguous_inputs(reference_model):
    visual = reference_model.visual
    legacy = sorted(name for name, m in visual.named_modules() if isinstance(m, UnbiasedLayerNorm2d))
    assert legacy == ["stages.1.downsample.0", "stages.2.downsample.0", "stages.3.downsample.0"]
    assert not isinstance(visual.stem[1], UnbiasedLayerNorm2d)
    assert not isinstance(visual.head.norm, UnbiasedLayerNorm2d)


def test_unbiased_norm_uses_n_minus_1_variance():
    torch.manual_seed(0)
    norm = UnbiasedLayerNorm2d(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 5, 3)
    mean = x.double().mean(1, keepdim=True)
    var = ((x.double() - mean) ** 2).sum(1, keepdim=True) / (8 - 1)
    expected = (x.double() - mean) / torch.sqrt(var + 1e-6) * norm.weight.double()[:, None, None]
    expected = expected + norm.bias.double()[:, None, None]
    out = norm(x)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    biased = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), norm.weight, norm.bias, 1e-6)
    assert (out - biased.permute(0, 3, 1, 2)).abs().max() > 1e-2  # the two definitions really differ


def test_features_are_unnormalised_and_have_the_spec_shape(reference_model):
    torch.manual_seed(1)
    with torch.inference_mode():
        image = reference_model.encode_image(torch.randn(2, 3, spec.IMAGE_SIZE, spec.IMAGE_SIZE))
        ids = torch.randint(1000, 2000, (3, 9))
        text = reference_model.encode_text(ids, torch.ones_like(ids))
    assert image.shape == (2, spec.EMBED_DIM) and text.shape == (3, spec.EMBED_DIM)
    assert image.dtype == text.dtype == torch.float32
    assert not torch.allclose(image.norm(dim=-1), torch.ones(2), atol=1e-2)
    assert not torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-2)


def test_forward_returns_scaled_cosine_logits_and_their_transpose(reference_model):
    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 224, 224)
    ids = torch.randint(1000, 2000, (3, 7))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        per_image, per_text = reference_model(pixels, ids, mask)
        image = torch.nn.functional.normalize(reference_model.encode_image(pixels), dim=-1)
        text = torch.nn.functional.normalize(reference_model.encode_text(ids, mask), dim=-1)
    expected = reference_model.logit_scale.exp() * image @ text.T
    assert per_image.shape == (2, 3) and torch.equal(per_text, per_image.T)
    assert torch.allclose(per_image, expected, atol=1e-4)


def test_masked_positions_do_not_change_the_text_feature(reference_model):
    ids = torch.tensor([[101, 1500, 1600, 102, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    other = ids.clone()
    other[0, 4:] = torch.tensor([1700, 1800, 1900])
    with torch.inference_mode():
        a = reference_model.encode_text(ids, mask)
        b = reference_model.encode_text(other, mask)
        c = reference_model.encode_text(ids[:, :4], mask[:, :4])
        unmasked = reference_model.encode_text(other, torch.ones_like(mask))
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    assert not torch.allclose(a, unmasked, atol=1e-3)


@pytest.mark.parametrize("encoder", ["image", "text"])
def test_each_row_is_independent_of_the_rest_of_the_batch(reference_model, encoder):
    torch.manual_seed(3)
    with torch.inference_mode():
        if encoder == "image":
            batch = torch.randn(3, 3, 224, 224)
            together = reference_model.encode_image(batch)
            alone = torch.cat([reference_model.encode_image(batch[i : i + 1]) for i in range(3)])
        else:
            ids = torch.randint(1000, 2000, (3, 11))
            mask = torch.ones_like(ids)
            mask[1, 6:] = 0
            together = reference_model.encode_text(ids, mask)
            alone = torch.cat([reference_model.encode_text(ids[i : i + 1], mask[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together.numpy(), alone.numpy(), atol=1e-4 * together.abs().max().item())
