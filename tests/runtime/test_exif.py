"""EXIF orientation: ignored by default, as the original model ignored it; applied with ``exif_transpose`` (the
Embedder), ``--exif-transpose`` (embed, classify) and ``ServerSettings.exif_transpose`` (serve)."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

from ruclip_tiny.cli import main
from ruclip_tiny.demo import demo_photos
from ruclip_tiny.transform import load_image
from runtime.collection import Collection

ORIENTATION = 0x0112
ROTATE_90_CW = 6  # the tag a phone writes for a photo taken in portrait: stored sideways, shown upright


@pytest.fixture(scope="module")
def sideways_jpeg(tmp_path_factory):
    """A real JPEG (a demo photo cut to 4:3) carrying EXIF orientation 6."""
    path = tmp_path_factory.mktemp("exif") / "portrait.jpg"
    photo = Image.open(demo_photos()[0]).convert("RGB")
    photo = photo.crop((0, 0, photo.width, photo.height * 3 // 4))  # landscape, so turning it changes its shape
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATE_90_CW
    photo.save(path, exif=exif, quality=95)
    assert Image.open(path).getexif()[ORIENTATION] == ROTATE_90_CW
    return path


@pytest.fixture(scope="module")
def embedders(exported_bundle):
    from runtime.embedder import Embedder

    with Embedder.load(exported_bundle, backend="onnxruntime", precision="fp32") as off, \
            Embedder.load(exported_bundle, backend="onnxruntime", precision="fp32", exif_transpose=True) as on:
        yield off, on


def _rows(off, sideways_jpeg):
    """(reference rows: the file as stored, rows of the image turned upright by its tag)."""
    stored = load_image(sideways_jpeg)
    upright = ImageOps.exif_transpose(stored)
    assert upright.size == (stored.height, stored.width)
    return off.encode_images([stored]), off.encode_images([upright])


def test_orientation_is_ignored_by_default_and_applied_when_asked(embedders, sideways_jpeg):
    off, on = embedders
    reference, upright = _rows(off, sideways_jpeg)
    assert float(reference[0] @ upright[0]) < 0.999  # the tag matters for this photo
    np.testing.assert_array_equal(off.encode_images([sideways_jpeg]), reference)
    np.testing.assert_array_equal(on.encode_images([sideways_jpeg]), upright)
    np.testing.assert_array_equal(on.encode_images([sideways_jpeg.read_bytes()]), upright)
    plain = demo_photos()[1]  # no orientation tag: both give the same rows
    np.testing.assert_array_equal(on.encode_images([plain]), off.encode_images([plain]))


def test_embed_and_classify_take_exif_transpose(embedders, sideways_jpeg, tmp_path, capsys):
    off, _ = embedders
    reference, upright = _rows(off, sideways_jpeg)
    root = str(off.bundle.root)
    for flags, expected in (([], reference), (["--exif-transpose"], upright)):
        out = tmp_path / "rows.npz"
        assert main(["embed", root, "--images", str(sideways_jpeg), "--out", str(out), *flags]) == 0
        collection = Collection.load(out)
        np.testing.assert_allclose(collection.embeddings, expected, atol=1e-6)
        assert collection.metadata["exif_transpose"] is bool(flags)
    labels = ["кошка", "ракета"]
    capsys.readouterr()
    assert main(["classify", root, str(sideways_jpeg), "--labels", ",".join(labels), "--exif-transpose"]) == 0
    printed = {line.split()[0]: float(line.split()[1]) for line in capsys.readouterr().out.splitlines()[1:]}
    expected = off.classify([ImageOps.exif_transpose(load_image(sideways_jpeg))], labels)[0]
    assert printed == pytest.approx(dict(zip(labels, expected.tolist())), abs=1e-4)


def test_the_server_applies_orientation_only_when_configured(exported_bundle, embedders, sideways_jpeg):
    httpx = pytest.importorskip("httpx")
    from runtime.embedder import Embedder
    from runtime.serve import BackgroundServer, ServerSettings, create_app

    off, _ = embedders
    reference, upright = _rows(off, sideways_jpeg)
    body = {"images": [base64.b64encode(sideways_jpeg.read_bytes()).decode()]}
    for exif_transpose, expected in ((False, reference), (True, upright)):
        app = create_app(lambda: Embedder.load(exported_bundle, backend="onnxruntime", precision="fp32"),
                         ServerSettings(exif_transpose=exif_transpose))
        with BackgroundServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as client:
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.05)
            response = client.post("/v1/embeddings/image", json=body)
            assert response.status_code == 200, response.text
            rows = np.asarray(response.json()["embeddings"], np.float32)
        np.testing.assert_allclose(rows, expected, atol=1e-5)
