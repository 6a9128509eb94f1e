"""The resumable ``ruclip-tiny embed`` job: shards in OUT.parts/, SIGINT/SIGTERM in a real subprocess, --resume,
the job identity, and text collections that keep their texts (fake bundle: seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ruclip_tiny.cli import main
from runtime.collection import Collection, image_paths, parts_dir
from tests.runtime.fake_bundle import build_fake_bundle, snapshot

SOURCES = 8
IMAGES = 240


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_fake_bundle(tmp_path_factory.mktemp("job") / "bundle")


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory):
    return build_fake_bundle(tmp_path_factory.mktemp("job") / "other", seed=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """IMAGES files hard-linked to SOURCES noise PNGs of 800x800 (slow enough to decode, ~10 ms each, that a signal
    lands mid-job; cheap on disk), plus one broken file."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    sources = []
    for index in range(SOURCES):
        source = folder / f"source-{index}.png.src"
        Image.fromarray(rng.integers(0, 255, (800, 800, 3), dtype=np.uint8)).save(source, format="PNG")
        sources.append(source)
    for index in range(IMAGES):
        os.link(sources[index % SOURCES], folder / f"{index:04d}.png")
    (folder / "0100-broken.png").write_bytes(b"not a picture")
    return folder


def _embed(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ruclip_tiny", "embed", *arguments, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_keeps_completed_shards_and_resume_embeds_every_file_exactly_once(bundle, images, tmp_path, signum):
    out = tmp_path / "photos.npz"
    arguments = [str(bundle), "--images", str(images), "--out", str(out), "--shard-size", "8", "--backend",
                 "onnxruntime", "--precision", "fp32"]
    job = _embed(*arguments)
    parts = parts_dir(out)
    deadline = time.monotonic() + 120
    while not list(parts.glob("shard-*.npz")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert job.poll() is None, "the job ended before a shard was written: " + job.communicate()[1]
    job.send_signal(signum)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 128 + signum, stderr
    last = stderr.strip().splitlines()[-1]
    assert f"stopped by {signum.name}" in last and "continue with: ruclip-tiny embed" in last and "--resume" in last
    kept = sorted(parts.glob("shard-*.npz"))
    assert kept and len(kept) < (IMAGES + 1 + 7) // 8 and not out.exists()
    assert not list(parts.glob(".*partial")), "a shard in flight left a temporary file"

    assert main(["embed", *arguments, "--quiet"]) == 2  # OUT.parts/ there, no --resume: refused, nothing changed
    assert sorted(parts.glob("shard-*.npz")) == kept

    assert main(["embed", *arguments, "--quiet", "--resume"]) == 0
    assert not parts.exists()
    collection = Collection.load(out)
    everything = [str(p) for p in image_paths([str(images)])]
    assert sorted(collection.ids + collection.failed_ids) == sorted(everything)  # each file exactly once
    assert collection.ids == [p for p in everything if "broken" not in p]  # input order
    assert collection.failed_ids == [str(images / "0100-broken.png")]

    from runtime.embedder import Embedder

    with Embedder.load(bundle, backend="onnxruntime", precision="fp32") as embedder:
        sources = {p.stat().st_ino: p for p in images.glob("*.src")}
        unique = list(sources.values())
        direct = dict(zip(sources, embedder.encode_images(unique)))
    expected = np.stack([direct[Path(i).stat().st_ino] for i in collection.ids])
    np.testing.assert_allclose(collection.embeddings, expected, atol=1e-6)


def test_resume_with_another_bundle_is_refused_with_the_reason_and_changes_nothing(
    bundle, other_bundle, tmp_path, capsys
):
    texts = tmp_path / "captions.txt"
    texts.write_text("".join(f"подпись {i}\n" for i in range(40)), encoding="utf-8")
    out = tmp_path / "texts.parquet"
    parts = parts_dir(out)
    parts.mkdir()
    # an existing OUT.parts/ without --resume is refused
    assert main(["embed", str(bundle), "--texts", str(texts), "--out", str(out), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    parts.rmdir()
    # a job stopped after its first shard (the stop request a signal makes)
    from runtime.collection import run_embedding_job, text_inputs
    from runtime.embedder import Embedder

    stop = threading.Event()
    with Embedder.load(bundle) as embedder:
        def stop_after_first(_count):
            stop.set()

        outcome = run_embedding_job(embedder, text_inputs(texts), out, shard_size=10, stop=stop,
                                    progress=stop_after_first)
    assert not outcome.finished and outcome.shards_done == 1 and outcome.shards == 4
    before = snapshot(parts)
    assert main(["embed", str(other_bundle), "--texts", str(texts), "--out", str(out), "--shard-size", "10",
                 "--quiet", "--resume"]) == 2
    error = capsys.readouterr().err
    assert "--resume refused" in error and "the bundle differs" in error
    assert main(["embed", str(bundle), "--texts", str(texts), "--out", str(out), "--shard-size", "10",
                 "--no-normalize", "--quiet", "--resume"]) == 2
    assert "normalize is false, the job's is true" in capsys.readouterr().err
    assert snapshot(parts) == before and not out.exists()
    assert main(["embed", str(bundle), "--texts", str(texts), "--out", str(out), "--shard-size", "10",
                 "--quiet", "--resume"]) == 0
    assert "resumed: 1 of 4 shards were done" in capsys.readouterr().out
    collection = Collection.load(out)
    assert collection.ids == [str(i) for i in range(1, 41)] and collection.texts[0] == "подпись 0"


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_text_collections_keep_their_texts_skip_blank_lines_and_search_prints_them(bundle, tmp_path, capsys, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow", reason="parquet output needs the parquet extra (pyarrow)")
    long = " ".join(["слово"] * 4000)  # 20k+ characters: cut at 77 tokens
    texts = tmp_path / "captions.txt"
    texts.write_bytes(f"кошка\r\n\r\n   \nсобака на диване\r\n{long}\n\nракета".encode())
    out = tmp_path / f"texts{suffix}"
    assert main(["embed", str(bundle), "--texts", str(texts), "--out", str(out), "--quiet", "--shard-size", "2"]) == 0
    summary = capsys.readouterr().out
    assert "4 texts embedded, 0 failed, 1 texts cut at 77 tokens, 3 blank lines skipped" in summary
    collection = Collection.load(out)
    assert collection.ids == ["1", "4", "5", "7"]  # blank lines skipped; the others keep their line numbers
    assert collection.texts == ["кошка", "собака на диване", long, "ракета"]
    assert collection.metadata["blank_lines"] == 3 and collection.metadata["truncated_ids"] == ["5"]
    from runtime.embedder import Embedder

    with Embedder.load(bundle) as embedder:
        expected = embedder.encode_texts_detailed(collection.texts).embeddings
        np.testing.assert_allclose(collection.embeddings, expected, atol=1e-6)
    assert main(["search", str(out), "собака на диване", "--top", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].split(None, 3)[2:] == ["4", "собака на диване"]
    assert all(len(line) < 260 for line in lines)  # a 20k-character text is shown cut


def test_the_merged_file_streams_shards_in_input_order_and_parquet_equals_npz(bundle, images, tmp_path):
    pytest.importorskip("pyarrow", reason="parquet output needs the parquet extra (pyarrow)")
    first = sorted(images.glob("00[0-2]*.png"))  # 30 images and the broken one
    for suffix in (".npz", ".parquet"):
        assert main(["embed", str(bundle), "--images", *map(str, first), "--out", str(tmp_path / f"a{suffix}"),
                     "--shard-size", "7", "--quiet"]) == 0
    npz, parquet = Collection.load(tmp_path / "a.npz"), Collection.load(tmp_path / "a.parquet")
    assert npz.ids == parquet.ids == [str(p) for p in first if "broken" not in p.name]
    assert npz.failed_ids == parquet.failed_ids and npz.texts == parquet.texts == []
    np.testing.assert_array_equal(npz.embeddings, parquet.embeddings)
