"""The bundle contract as every reader sees it: a manifest field of a wrong type or a path leading out of the bundle is
refused with one BundleError naming the field and the bundle — the same by ``Embedder.load``, ``ruclip-tiny parity``
and ``ruclip-tiny serve`` — and never read. Built on the fake bundle: no torch, seconds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ruclip_tiny import cli
from runtime.bundle import Bundle, BundleError, read_manifest
from runtime.embedder import Embedder
from tests.runtime import fake_bundle


@pytest.fixture
def bundle_dir(tmp_path):
    return fake_bundle.build_fake_bundle(tmp_path / "bundle")


def run_parity_cli(root: Path, capsys, *flags: str) -> tuple[int, str, str]:
    """``ruclip-tiny parity ROOT FLAGS`` through the CLI's entry point: (exit code, stdout, stderr)."""
    code = cli.main(["parity", str(root), *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    """The only line of an error output (no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- manifest fields of a wrong type -------------------------------------------------------------------------------


def setting(value, *keys):
    """An edit setting ``manifest[keys[0]][keys[1]]… = value``."""

    def edit(manifest: dict) -> None:
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def dropping(*keys):
    """An edit deleting ``manifest[keys[0]][keys[1]]…``."""

    def edit(manifest: dict) -> None:
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return edit


VISUAL = ("artifacts", "visual.fp32")
BAD_FIELDS = [
    ("entry-without-size", dropping(*VISUAL, "size"), """artifacts["visual.fp32"] has no 'size'"""),
    ("entry-without-sha256", dropping(*VISUAL, "sha256"), """artifacts["visual.fp32"] has no 'sha256'"""),
    ("path-null", setting(None, *VISUAL, "path"), 'artifacts["visual.fp32"].path must be a non-empty string'),
    ("artifacts-list", setting([], "artifacts"), "artifacts must be an object, got []"),
    ("artifacts-empty", setting({}, "artifacts"), "artifacts is empty"),
    ("artifacts-missing", dropping("artifacts"), "artifacts is missing"),
    ("logit-scale-text", setting("abc", "logit_scale"), 'logit_scale must be a finite number above 0, got "abc"'),
    ("logit-scale-nan", setting(float("nan"), "logit_scale"), "logit_scale must be a finite number above 0"),
    ("logit-scale-negative", setting(-1.0, "logit_scale"), "logit_scale must be a finite number above 0, got -1.0"),
    ("embedding-dim-text", setting("768x", "embedding_dim"), 'embedding_dim must be an integer >= 1, got "768x"'),
    ("embedding-dim-other", setting(512, "embedding_dim"), "embedding_dim is 512"),
    ("size-text", setting("12", *VISUAL, "size"), 'artifacts["visual.fp32"].size must be an integer >= 0'),
    ("sha256-number", setting(123, *VISUAL, "sha256"), 'artifacts["visual.fp32"].sha256 must be 64 lowercase hex'),
    ("deployable-text", setting("yes", *VISUAL, "deployable"), 'artifacts["visual.fp32"].deployable must be true'),
    ("encoder-unknown", setting("audio", *VISUAL, "encoder"), 'artifacts["visual.fp32"].encoder must be one of'),
    ("tokenizer-files-text", setting("vocab.txt", "tokenizer", "files"), "tokenizer.files must be a list"),
    ("probe-path-null", setting(None, "probe", "files", 0, "path"), "probe.files[0].path must be a non-empty string"),
    ("synthetic-text", setting("no", "synthetic"), "synthetic must be true or false"),
    ("schema-version-text", setting("1", "schema_version"), 'schema version "1"'),
]
BAD_FIELD_PARAMS = [pytest.param(edit, field, id=name) for name, edit, field in BAD_FIELDS]


@pytest.mark.parametrize(("edit", "field"), BAD_FIELD_PARAMS)
def test_the_embedder_refuses_a_bad_manifest_field_naming_it_and_the_bundle(bundle_dir, edit, field):
    fake_bundle.edit_manifest(bundle_dir, edit)
    with pytest.raises(BundleError) as caught:
        Embedder.load(bundle_dir, backend="onnxruntime")
    assert field in str(caught.value) and str(bundle_dir) in str(caught.value)


@pytest.mark.parametrize(("edit", "field"), BAD_FIELD_PARAMS)
def test_parity_refuses_a_bad_manifest_field_in_one_line_and_writes_nothing(bundle_dir, capsys, edit, field):
    fake_bundle.edit_manifest(bundle_dir, edit)
    before = fake_bundle.snapshot(bundle_dir)
    code, _, err = run_parity_cli(bundle_dir, capsys)
    line = one_line(err)
    assert code == 2 and line.startswith("ruclip-tiny parity: error:")
    assert field in line and str(bundle_dir) in line
    assert fake_bundle.snapshot(bundle_dir) == before


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        pytest.param(setting("abc", "logit_scale"), "logit_scale must be", id="logit-scale-text"),
        pytest.param(dropping(*VISUAL, "sha256"), """artifacts["visual.fp32"] has no 'sha256'""", id="no-sha256"),
    ],
)
def test_serve_refuses_a_bad_manifest_field_in_one_line_before_serving(bundle_dir, edit, field):
    fake_bundle.edit_manifest(bundle_dir, edit)
    entry = "import sys; from ruclip_tiny.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", entry, "serve", str(bundle_dir), "--host", "127.0.0.1", "--port", "0"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert line.startswith("ruclip-tiny serve: error:") and field in line and str(bundle_dir) in line


def test_the_untouched_fake_bundle_passes_the_manifest_checks(bundle_dir):
    """The control for every refusal above: the same bundle, unedited, is read, and the typed values come through."""
    bundle = Bundle(bundle_dir, read_manifest(bundle_dir))
    assert bundle.logit_scale == pytest.approx(fake_bundle.LOGIT_SCALE)
    assert (bundle.embedding_dim, bundle.synthetic) == (768, True)


# --- paths leading out of the bundle -------------------------------------------------------------------------------


def _outside(bundle_dir: Path, relative: str) -> Path:
    """A byte-identical copy of a bundle file outside the bundle (so size and sha256 would still match)."""
    target = bundle_dir.parent / "outside" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle_dir / relative, target)
    return target


def absolute_graph_path(bundle_dir: Path) -> str:
    fake_bundle.edit_manifest(bundle_dir, setting(str(_outside(bundle_dir, "visual.onnx")), *VISUAL, "path"))
    return "is an absolute path"


def dotdot_graph_path(bundle_dir: Path) -> str:
    _outside(bundle_dir, "visual.onnx")
    fake_bundle.edit_manifest(bundle_dir, setting("../outside/visual.onnx", *VISUAL, "path"))
    return "leads outside the bundle"


def symlinked_graph(bundle_dir: Path) -> str:
    outside = _outside(bundle_dir, "visual.onnx")
    (bundle_dir / "visual.onnx").unlink()
    (bundle_dir / "visual.onnx").symlink_to(outside)
    return "leads outside the bundle"


def symlinked_tokenizer_directory(bundle_dir: Path) -> str:
    outside = bundle_dir.parent / "outside" / "tokenizer"
    outside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(bundle_dir / "tokenizer", outside)
    (bundle_dir / "tokenizer").symlink_to(outside, target_is_directory=True)
    return "leads outside the bundle"


def symlinked_probe_reference(bundle_dir: Path) -> str:
    outside = _outside(bundle_dir, "probe/reference.npz")
    (bundle_dir / "probe/reference.npz").unlink()
    (bundle_dir / "probe/reference.npz").symlink_to(outside)
    return "leads outside the bundle"


def symlinked_unlisted_tokenizer_file(bundle_dir: Path) -> str:
    """A file the tokenizer reads from its folder although the manifest does not list it."""
    outside = bundle_dir.parent / "outside" / "added_tokens.json"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_text("{}")
    (bundle_dir / "tokenizer" / "added_tokens.json").symlink_to(outside)
    return "leads outside the bundle"


ESCAPES = [absolute_graph_path, dotdot_graph_path, symlinked_graph, symlinked_tokenizer_directory,
           symlinked_probe_reference, symlinked_unlisted_tokenizer_file]


@pytest.mark.parametrize("escape", ESCAPES, ids=[escape.__name__ for escape in ESCAPES])
def test_a_path_leading_out_of_the_bundle_is_refused_by_the_embedder_and_parity(bundle_dir, capsys, escape):
    problem = escape(bundle_dir)
    with pytest.raises(BundleError, match=problem):
        Embedder.load(bundle_dir, backend="onnxruntime")
    code, _, err = run_parity_cli(bundle_dir, capsys)
    line = one_line(err)
    assert code == 2 and problem in line and str(bundle_dir) in line


def test_a_file_outside_the_bundle_is_never_read_nor_its_size_shown(bundle_dir, tmp_path, capsys):
    """``path: /etc/passwd`` with a size that does not match: before, the size check read the file and printed
    its size; now the path is refused before any file under it is opened."""
    secret = tmp_path / "secret.txt"
    secret.write_text("x" * 4321)
    fake_bundle.edit_manifest(bundle_dir, setting(str(secret), *VISUAL, "path"))
    with pytest.raises(BundleError) as caught:
        Embedder.load(bundle_dir, backend="onnxruntime")
    code, out, err = run_parity_cli(bundle_dir, capsys)
    assert code == 2
    for text in (str(caught.value), out, err):
        assert "absolute path" in text or not text
        assert "4321" not in text


def test_a_symlink_that_stays_inside_the_bundle_is_followed(bundle_dir):
    store = bundle_dir / "store"
    store.mkdir()
    shutil.move(bundle_dir / "visual.onnx", store / "visual.onnx")
    (bundle_dir / "visual.onnx").symlink_to(Path("store") / "visual.onnx")
    with Embedder.load(bundle_dir, backend="onnxruntime", precision="fp32") as embedder:
        assert embedder.encode_pixels(fake_bundle.fake_probe(2, 1)["pixels"]).shape == (2, 768)


# --- the same loading checks in the embedder and in parity ---------------------------------------------------------


def test_a_missing_vocabulary_is_refused_by_the_embedder_and_by_parity(bundle_dir, capsys):
    (bundle_dir / "tokenizer" / "vocab.txt").unlink()
    with pytest.raises(BundleError, match=r"tokenizer/vocab\.txt is missing"):
        Embedder.load(bundle_dir, backend="onnxruntime")
    with pytest.raises(BundleError, match=r"tokenizer/vocab\.txt is missing"):
        Embedder.load(bundle_dir, backend="onnxruntime", verify=False)  # presence is checked even unverified
    code, _, err = run_parity_cli(bundle_dir, capsys)
    assert code == 2 and "tokenizer/vocab.txt is missing" in one_line(err)


def test_a_changed_vocabulary_is_refused_by_the_embedder_and_by_parity(bundle_dir, capsys):
    with (bundle_dir / "tokenizer" / "vocab.txt").open("a", encoding="utf-8") as vocab:
        vocab.write("лишнее\n")
    with pytest.raises(BundleError, match=r"tokenizer file tokenizer/vocab\.txt.*does not match the manifest"):
        Embedder.load(bundle_dir, backend="onnxruntime")
    code, _, err = run_parity_cli(bundle_dir, capsys)
    assert code == 2 and "does not match the manifest" in one_line(err)
