"""Zero-shot classification with the reference model: softmax over logit_scale * cosine(image, "template(label)")."""

from __future__ import annotations

import numpy as np


def zero_shot_probs(model, tokenizer, pixels: np.ndarray, labels: list[str], template: str = "{}") -> np.ndarray:
    """pixels: float32 [N, 3, 224, 224]; labels: K strings -> probabilities float32 [N, K] (rows sum to 1).

    template: one plain ``{}`` (``ruclip_tiny.template``); anything else raises TemplateError."""
    import torch

    from .template import fill_template

    input_ids, attention_mask = tokenizer(fill_template(template, labels))
    with torch.inference_mode():
        logits, _ = model(torch.from_numpy(pixels), torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return logits.softmax(dim=-1).numpy()
