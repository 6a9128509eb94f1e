"""Compute expectations with the ORIGINAL 2022 stack (timm 0.5.4, transformers 4.12.3, torchvision transforms).

Runs inside the side venv that scripts/legacy_expectations.sh builds; never imports ruclip_tiny, so nothing of the
code under test takes part. Writes tests/data/legacy_expectations.npz:
  tokenizer: corpus ids/masks from DistilBertTokenizer.batch_encode_plus (demo vocabulary)
  preprocessing: for every synthetic image case the sha256 of the uint8 RGB crop torchvision's ToTensor received;
      float samples of the normalised output of every case and every demo photo
  features: encode_image / encode_text / forward of the published module on a synthetic checkpoint
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision
import transformers
from PIL import Image
from torch import nn
from torchvision import transforms
from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import legacy_cases, legacy_inputs  # noqa: E402  (numpy + Pillow only)


class RuCLIPtiny(nn.Module):
    """The module exactly as published in 2022."""

    def __init__(self):
        super().__init__()
        self.visual = timm.create_model("convnext_tiny", pretrained=False, num_classes=0, in_chans=3)
        text_config = DistilBertConfig(
            vocab_size=30522, max_position_embeddings=512, n_layers=3, n_heads=12, dim=264, hidden_dim=792,
            model_type="distilbert",
        )
        self.transformer = DistilBertModel(text_config)
        self.final_ln = torch.nn.Linear(264, 768)
        self.logit_scale = torch.nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

    def encode_image(self, image):
        return self.visual(image.type(self.visual.stem[0].weight.dtype))

    def encode_text(self, input_ids, attention_mask):
        x = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        return self.final_ln(x.last_hidden_state[:, 0, :])

    def forward(self, image, input_ids, attention_mask):
        image_features = self.encode_image(image)
        text_features = self.encode_text(input_ids, attention_mask)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


GEOMETRY = transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224), lambda im: im.convert("RGB")])
TO_PIXELS = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]
)


def tokenize(tokenizer, texts):
    encoded = tokenizer.batch_encode_plus(
        texts, truncation=True, add_special_tokens=True, max_length=77, padding="max_length",
        return_attention_mask=True,
    )
    return np.array(encoded["input_ids"], dtype=np.int32), np.array(encoded["attention_mask"], dtype=np.uint8)


def preprocess(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """-> (uint8 [224, 224, 3] crop as ToTensor received it, float32 [3, 224, 224] normalised output)."""
    rgb = GEOMETRY(image)
    return np.asarray(rgb, dtype=np.uint8).copy(), TO_PIXELS(rgb).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="synthetic checkpoint written by torch.save")
    parser.add_argument("--out", default=str(legacy_inputs.EXPECTATIONS))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    out: dict[str, np.ndarray] = {}

    tokenizer = DistilBertTokenizer.from_pretrained(str(legacy_inputs.DEMO_TOKENIZER_DIR))
    corpus = json.loads(legacy_inputs.TOKENIZER_CORPUS.read_text(encoding="utf-8"))
    out["corpus_input_ids"], out["corpus_attention_mask"] = tokenize(tokenizer, corpus)
    out["corpus_sha256"] = np.array(legacy_inputs.corpus_sha256(corpus))

    cases = legacy_cases.image_cases()
    size = 3 * 224 * 224
    crops, pixels = {}, {}
    for name, image in sorted(cases.items()):
        crops[name], pixels[name] = preprocess(image)
    out["case_names"] = np.array(sorted(cases))
    out["case_crop_sha256"] = np.array([legacy_inputs.crop_sha256(crops[n]) for n in sorted(cases)])
    photos = legacy_inputs.demo_photos()
    for path in photos:
        with Image.open(path) as image:
            _, pixels[path.name] = preprocess(image)
    out["photo_names"] = np.array([p.name for p in photos])
    names = sorted(cases) + [p.name for p in photos]
    indices = np.stack(
        [legacy_inputs.sample_indices(legacy_inputs.SAMPLES_PER_IMAGE, size, i) for i in range(len(names))]
    )
    out["sample_names"] = np.array(names)
    out["sample_values"] = np.stack([pixels[n].reshape(-1)[idx] for n, idx in zip(names, indices)])

    model = RuCLIPtiny().eval()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    published = model.state_dict()  # the original module's own names and shapes
    out["state_names"] = np.array(list(published))
    out["state_shapes"] = np.array([json.dumps(list(t.shape)) for t in published.values()])
    out["checkpoint_fingerprint"] = np.array(legacy_inputs.state_fingerprint({k: v.numpy() for k, v in state.items()}))

    feature_images = [p.name for p in photos] + list(legacy_inputs.FEATURE_IMAGE_CASES)
    batch = torch.from_numpy(np.stack([pixels[n] for n in feature_images]))
    ids, mask = tokenize(tokenizer, legacy_inputs.FEATURE_TEXTS)
    input_ids, attention_mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
    out["feature_image_names"] = np.array(feature_images)
    out["feature_texts"] = np.array(legacy_inputs.FEATURE_TEXTS)
    out["feature_input_ids"], out["feature_attention_mask"] = ids, mask
    out["image_features"] = model.encode_image(batch).numpy()
    out["text_features"] = model.encode_text(input_ids, attention_mask).numpy()
    out["logits_per_image"] = model(batch, input_ids, attention_mask)[0].numpy()

    versions = {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
        "transformers": transformers.__version__, "numpy": np.__version__, "pillow": Image.__version__,
    }
    out["versions"] = np.array(json.dumps(versions, sort_keys=True))
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB) with {versions}")


if __name__ == "__main__":
    main()
