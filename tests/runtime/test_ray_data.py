"""The Ray Data pipeline on a local Ray of 2 CPUs (started once for the module): the same rows (within 1e-6), ids
and failures as the plain job; actors sized so that reading and decoding keep CPUs."""

from __future__ import annotations

import numpy as np
import pytest

from ruclip_tiny.cli import main
from runtime.collection import Collection
from tests.runtime.fake_bundle import build_fake_bundle

ray = pytest.importorskip("ray", reason="the Ray Data tests need the ray extra: pip install '.[ray]'")
pytest.importorskip("ray.data", reason="the Ray Data tests need the ray extra: pip install '.[ray]'")

from runtime.ray_data import embed_dataset, plan_actors  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_fake_bundle(tmp_path_factory.mktemp("ray") / "bundle")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(70):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
    (folder / "033-broken.png").write_bytes(b"not a picture")
    (folder / "050-empty.png").write_bytes(b"")
    return folder


def test_actors_leave_cpus_for_reading_and_decoding():
    assert plan_actors({"CPU": 2}) == plan_actors({"CPU": 2.0, "GPU": 0})
    one = plan_actors({"CPU": 2})
    assert (one.actors, one.cpus_per_actor) == (1, 1.0)  # not two 1-CPU actors: the read tasks would starve
    two = plan_actors({"CPU": 2}, actors=2)
    assert (two.actors, two.cpus_per_actor) == (2, 0.5)
    many = plan_actors({"CPU": 16})
    assert many.actors * many.cpus_per_actor <= 8
    gpu = plan_actors({"CPU": 8, "GPU": 2}, gpus_per_actor=0.5)
    assert (gpu.actors, gpu.gpus_per_actor) == (4, 0.5) and gpu.actors * gpu.cpus_per_actor <= 4


def test_embed_with_ray_gives_the_plain_rows_ids_and_failures(local_ray, bundle, photos, tmp_path, capsys):
    plain, on_ray = tmp_path / "plain.npz", tmp_path / "ray.npz"
    assert main(["embed", str(bundle), "--images", str(photos), "--out", str(plain), "--quiet"]) == 0
    assert main(["embed", str(bundle), "--images", str(photos), "--out", str(on_ray), "--ray", "--batch-size",
                 "8"]) == 0
    assert "1 Embedder actor(s) of 1 CPU" in capsys.readouterr().err
    a, b = Collection.load(plain), Collection.load(on_ray)
    assert a.ids == b.ids and len(a.ids) == 70
    assert a.failed_ids == b.failed_ids == [str(photos / "033-broken.png"), str(photos / "050-empty.png")]
    assert a.failed_errors == b.failed_errors
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=1e-6)


def test_texts_with_ray_keep_ids_texts_and_truncation(local_ray, bundle, tmp_path):
    texts = tmp_path / "captions.txt"
    long = " ".join(["слово"] * 4000)
    texts.write_bytes(f"кошка\r\n\r\nсобака\n{long}\n".encode())
    plain, on_ray = tmp_path / "plain.npz", tmp_path / "ray.npz"
    assert main(["embed", str(bundle), "--texts", str(texts), "--out", str(plain), "--quiet"]) == 0
    assert main(["embed", str(bundle), "--texts", str(texts), "--out", str(on_ray), "--ray", "local"]) == 0
    a, b = Collection.load(plain), Collection.load(on_ray)
    assert a.ids == b.ids == ["1", "3", "4"] and a.texts == b.texts
    assert b.metadata["truncated_ids"] == a.metadata["truncated_ids"] == ["4"] and b.metadata["blank_lines"] == 1
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=1e-6)


def test_embed_dataset_adds_embedding_and_error_columns_to_a_users_dataset(local_ray, bundle, photos):
    from runtime.embedder import Embedder

    paths = [str(photos / "001.png"), str(photos / "033-broken.png"), str(photos / "002.png")]
    dataset = ray.data.from_items([{"file": p, "album": i} for i, p in enumerate(paths)])
    rows = sorted(embed_dataset(dataset, bundle, column="file", actors=2).take_all(), key=lambda r: r["album"])
    assert [r["file"] for r in rows] == paths
    assert rows[0]["error"] == rows[2]["error"] == "" and "not an image" in rows[1]["error"]
    assert np.isnan(rows[1]["embedding"]).all()
    with Embedder.load(bundle) as embedder:
        direct = embedder.encode_images([paths[0], paths[2]])
    np.testing.assert_allclose(np.stack([rows[0]["embedding"], rows[2]["embedding"]]), direct, atol=1e-6)
    with pytest.raises(Exception, match="no column 'path'"):
        embed_dataset(dataset, bundle)
