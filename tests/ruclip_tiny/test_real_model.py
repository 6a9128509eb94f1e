"""Opt-in: the published checkpoint and tokenizer, brought by path, give sensible zero-shot results.

Set RUCLIP_TINY_CHECKPOINT=/path/ru-clip-tiny.pkl and
RUCLIP_TINY_TOKENIZER=/path/distilrubert-tiny-cased-conversational-v1
"""

from __future__ import annotations

import os

import numpy as np
import pytest

CHECKPOINT = os.environ.get("RUCLIP_TINY_CHECKPOINT")
TOKENIZER = os.environ.get("RUCLIP_TINY_TOKENIZER")

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        not (CHECKPOINT and TOKENIZER),
        reason="real model not given: set RUCLIP_TINY_CHECKPOINT and RUCLIP_TINY_TOKENIZER to run",
    ),
]


# Photos whose subject a small CLIP should recognise with margin, and labels it must rank below the true one.
CLEAR_CASES = {"cat.jpg": ("кошка", ["ракета", "диаграмма"]), "rocket.jpg": ("ракета", ["кошка", "диаграмма"])}


def test_published_checkpoint_ranks_the_cat_and_the_rocket_by_their_own_labels():
    from ruclip_tiny import demo, image_transform, load_checkpoint, load_image, load_tokenizer
    from ruclip_tiny.zero_shot import zero_shot_probs

    model = load_checkpoint(CHECKPOINT)
    assert 20 < model.logit_scale.exp().item() < 40  # the published model's is about 29.91
    tokenizer = load_tokenizer(TOKENIZER)
    assert not tokenizer.is_demo and tokenizer.cls_id == 101
    shown, distractors = demo.demo_labels()
    labels = sorted(set(shown.values())) + list(distractors)
    transform = image_transform()
    pixels = np.stack([transform(load_image(demo.DEMO_DIR / name)) for name in CLEAR_CASES])
    probs = zero_shot_probs(model, tokenizer, pixels, labels)
    for (name, (own, others)), row in zip(CLEAR_CASES.items(), probs):
        scores = dict(zip(labels, row.tolist()))
        print(name, [(label, round(p, 4)) for label, p in sorted(scores.items(), key=lambda item: -item[1])[:3]])
        for other in others:
            assert scores[own] > scores[other], (name, own, other, scores)
