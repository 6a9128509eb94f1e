"""The CLI's input limits: ``--template`` checked before any model loads, ``--max-image-pixels`` on embed and
classify (an image over it is a listed failure), and the serve flags of the request limits and the API key."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from ruclip_tiny.cli import build_parser


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from ruclip_tiny.cli import main; sys.exit(main())", *args],
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder with a small image and one of 400x300 = 120,000 pixels."""
    folder = tmp_path_factory.mktemp("cli-images")
    Image.new("RGB", (64, 64), (200, 20, 20)).save(folder / "a-small.png")
    Image.new("RGB", (400, 300), (20, 200, 20)).save(folder / "b-large.png")
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from tests.runtime.fake_bundle import build_fake_bundle

    return build_fake_bundle(tmp_path_factory.mktemp("cli-bundle") / "bundle")


@pytest.mark.parametrize("template", ["no slot", "{0} {1}", "{name}", "{:>20000000}"])
def test_classify_refuses_a_bad_template_before_loading_anything(images, tmp_path, template):
    missing_bundle = tmp_path / "no-bundle-here"  # loading it would fail, so the template must be checked first
    result = _run("classify", str(missing_bundle), str(images), "--labels", "кошка,собака", "--template", template)
    assert result.returncode == 2, result.stderr
    assert "--template" in result.stderr and "no-bundle-here" not in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_refuses_a_bad_template_before_loading_the_model():
    result = _run("demo", "--template", "{0} {1}")
    assert result.returncode == 2, result.stderr
    assert "--template" in result.stderr and "Traceback" not in result.stderr
    assert "loading the model" not in result.stdout + result.stderr


def test_embed_lists_an_image_over_max_image_pixels_as_a_failure(bundle, images, tmp_path):
    out = tmp_path / "out.npz"
    result = _run("embed", str(bundle), "--images", str(images), "--out", str(out), "--max-image-pixels", "100000")
    assert result.returncode == 0, result.stderr
    assert "1 images embedded, 1 failed" in result.stdout
    failed = [line for line in result.stdout.splitlines() if line.strip().startswith("failed:")]
    assert len(failed) == 1 and "b-large.png" in failed[0] and "--max-image-pixels" in failed[0]
    default = _run("embed", str(bundle), "--images", str(images), "--out", str(out))
    assert "2 images embedded, 0 failed" in default.stdout, default.stderr


def test_classify_lists_an_image_over_max_image_pixels_as_a_failure(bundle, images):
    result = _run("classify", str(bundle), str(images), "--labels", "слово1,слово2", "--template", "фото: {}",
                  "--max-image-pixels", "100000")
    assert result.returncode == 0, result.stderr
    assert "a-small.png" in result.stdout
    failed = [line for line in result.stdout.splitlines() if line.strip().startswith("failed:")]
    assert len(failed) == 1 and "b-large.png" in failed[0] and "--max-image-pixels" in failed[0]


def test_serve_flags_of_the_request_limits_and_the_api_key_with_their_defaults(capsys):
    args = build_parser().parse_args(["serve", "bundle"])
    assert args.max_image_pixels == 60_000_000 and args.max_request_pixels == 256_000_000 and args.api_key is None
    for command in ("serve", "embed", "classify"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--max-image-pixels" in text and "60000000" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-request-pixels" in text and "256000000" in text
    assert "--api-key" in text and "RUCLIP_TINY_API_KEY" in text
