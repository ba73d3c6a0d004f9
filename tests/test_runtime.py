"""ONNX Runtime behind the Embedder interface (searcher.runtime), checked against TensorFlow.

A small MobileNet (weights in ../shared) exercises export, verification, the sidecar, a recorded
failure and an unwritable library, each against a fresh per-test user cache; the default
EfficientNet-Lite0 indexes and queries real photos with both runtimes, which must agree.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import searcher.runtime as runtime
from searcher import Library
from searcher.decode import load_for_model
from searcher.embed import Embedder

pytest.importorskip("onnxruntime")

SMALL = "mobilenet_025_128"


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty per-user runtime cache and no ONNX session loaded in this process yet."""
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("SEARCHER_RUNTIME_CACHE", str(cache))
    monkeypatch.setattr(runtime, "_LOADED", {})
    return cache


@pytest.fixture(scope="module")
def small_weights(shared: Path) -> str:
    return str(shared / "weights" / "mobilenet_0.25_128.weights.h5")


@pytest.fixture(scope="module")
def photo_folder(sample_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rt-photos")
    names = ["skimage_chelsea.png", "skimage_coffee.png", "skimage_astronaut.png", "skimage_rocket.jpg",
             "skimage_motorcycle_left.png", "sklearn_china.jpg", "sklearn_flower.jpg",
             "skimage_camera.png"]  # fmt: skip
    for name in names:
        Image.open(sample_photos / name).convert("RGB").save(folder / (Path(name).stem + ".jpg"), quality=92)
    return folder


def _sidecar(folder: Path, key: str) -> dict:
    return json.loads((folder / "runtime" / f"{key}.json").read_text())


def test_export_is_verified_cached_and_used(
    tmp_path: Path, fresh_cache: Path, photo_folder: Path, small_weights: str, capfd
) -> None:
    with Library.open(tmp_path / "lib") as lib:
        runtime.set_default_runtime("tensorflow")  # so that the export is checked on these photos
        try:
            lib.index([photo_folder], backbone=SMALL, weights=small_weights)
        finally:
            runtime.set_default_runtime(None)
        model = lib.find_model()
        onnx = lib.embedder_for(model, runtime="onnxruntime")
        tf = lib.embedder_for(model, runtime="tensorflow")
    assert onnx.runtime == "onnxruntime" and tf.runtime == "tensorflow"
    assert onnx.identity == tf.identity and onnx.identity.key == model.key
    assert "exporting mobilenet_025_128 to ONNX" in capfd.readouterr().err
    side = _sidecar(tmp_path / "lib", model.key)
    assert side["verified"] is True and side["min_cosine"] >= 1 - 1e-4 and side["real_check_images"] == 4
    assert side["identity"]["weights_sha256"] == model.weights_sha256 and side["versions"]["onnxruntime"]
    assert (fresh_cache / f"{model.key}.onnx").read_bytes() == (
        tmp_path / "lib" / "runtime" / f"{model.key}.onnx"
    ).read_bytes()

    pixels = np.stack([load_for_model(p, onnx.input_size)[0] for p in sorted(photo_folder.iterdir())])
    cos = np.sum(onnx.embed(pixels) * tf.embed(pixels), axis=1)
    assert cos.min() >= 1 - 1e-4 and np.allclose(np.linalg.norm(onnx.embed(pixels), axis=1), 1, atol=1e-5)
    fmap_onnx, fmap_tf = onnx.feature_maps(pixels), tf.feature_maps(pixels)
    assert fmap_onnx.shape == fmap_tf.shape == (8, 4, 4, 256) and fmap_onnx.dtype == np.float32
    np.testing.assert_allclose(fmap_onnx, fmap_tf, atol=1e-3 * np.abs(fmap_tf).max())
    assert onnx.embed(pixels[:0]).shape == (0, 256) and onnx.feature_maps(pixels[:0]).shape[0] == 0

    runtime._LOADED.clear()  # a new process: the cached graph is loaded, nothing is exported again
    with Library.open(tmp_path / "lib") as lib:
        again = lib.embedder_for(lib.find_model(), runtime="auto")
    assert again.runtime == "onnxruntime" and "exporting" not in capfd.readouterr().err
    np.testing.assert_allclose(again.embed(pixels), onnx.embed(pixels), atol=1e-6)


def test_failed_verification_is_recorded_and_not_retried(
    tmp_path: Path, fresh_cache: Path, photo_folder: Path, small_weights: str, monkeypatch, capfd
) -> None:
    from searcher.runtime import export

    monkeypatch.setattr(export, "MIN_COSINE", 1.5)  # no two runtimes can meet this: verification fails
    with Library.open(tmp_path / "lib") as lib:
        lib.index(
            [photo_folder],
            backbone=SMALL,
            weights=small_weights,
        )
        model = lib.find_model()
        embedder = lib.embedder_for(model, runtime="auto")
    assert embedder.runtime == "tensorflow" and isinstance(embedder, Embedder)
    err = capfd.readouterr().err
    assert "ONNX Runtime is not used" in err and "lowest cosine" in err
    side = _sidecar(tmp_path / "lib", model.key)
    assert side["verified"] is False and "lowest cosine" in side["reason"]
    assert not (tmp_path / "lib" / "runtime" / f"{model.key}.onnx").exists()  # only verified graphs are kept

    monkeypatch.setattr(export, "MIN_COSINE", 1 - 1e-4)
    runtime._LOADED.clear()
    with Library.open(tmp_path / "lib") as lib:
        assert lib.embedder_for(lib.find_model(), runtime="onnxruntime").runtime == "tensorflow"
    err = capfd.readouterr().err
    assert "exporting" not in err and "ONNX Runtime is not used" in err  # said, from the record, not retried


def test_unwritable_library_uses_the_user_cache(
    tmp_path: Path, fresh_cache: Path, photo_folder: Path, small_weights: str
) -> None:
    with Library.open(tmp_path / "lib") as lib:
        lib.index([photo_folder], backbone=SMALL, weights=small_weights)
        model = lib.find_model()
    shutil.rmtree(tmp_path / "lib" / "runtime", ignore_errors=True)  # auto indexing exported there
    (tmp_path / "lib" / "runtime").write_text("a file where the folder would go: nothing can be written there")
    with Library.open(tmp_path / "lib") as lib:
        runtime._LOADED.clear()  # a new process
        embedder = lib.embedder_for(model, runtime="onnxruntime")
        assert embedder.runtime == "onnxruntime" and embedder.path.parent == fresh_cache
        assert len(lib.query([photo_folder / "skimage_coffee.jpg"], k=3)[0].results) == 3
    assert json.loads((fresh_cache / f"{model.key}.json").read_text())["verified"] is True


def test_unknown_runtime_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="runtime must be one of"):
        runtime.requested_runtime("cuda")
    assert runtime.requested_runtime("onnx") == "onnxruntime" and runtime.requested_runtime("TF") == "tensorflow"


def test_both_runtimes_index_and_query_alike(tmp_path: Path, photo_folder: Path, sample_photos: Path) -> None:
    """The default backbone on real photos: each runtime indexes its own library; the stored vectors,
    the model key and the answers for a new (rotated, recompressed) photo agree."""
    probe = tmp_path / "probe.jpg"
    Image.open(sample_photos / "skimage_chelsea.png").convert("RGB").rotate(90, expand=True).save(probe, quality=70)
    stored, answers = {}, {}
    for rt in ("tensorflow", "onnxruntime"):
        runtime.set_default_runtime(rt)
        try:
            with Library.open(tmp_path / rt) as lib:
                report = lib.index([photo_folder])
                assert report.embedded == 8 and report.failed == 0
                model = lib.find_model()
                assert lib.embedder_for(model).runtime == rt
                with lib.sessions() as session:
                    from searcher import store

                    ids = store.vector_ids(session, model.id).tolist()
                    rows = lib.rows_by_id(ids)
                    stored[rt] = {
                        Path(rows[i].path).name: v for i, v in store.vectors_for(session, model.id, ids).items()
                    }
                answers[rt] = [(Path(h.path).name, h.score) for h in lib.query([probe], k=5)[0].results]
                key = model.key
        finally:
            runtime.set_default_runtime(None)
        stored[rt + "-key"] = key
    assert stored["tensorflow-key"] == stored["onnxruntime-key"]
    for name, v in stored["tensorflow"].items():
        assert float(np.dot(v, stored["onnxruntime"][name])) >= 1 - 1e-4, name
    assert [n for n, _ in answers["tensorflow"]] == [n for n, _ in answers["onnxruntime"]]
    assert answers["onnxruntime"][0][0] == "skimage_chelsea.jpg"
    np.testing.assert_allclose([s for _, s in answers["tensorflow"]], [s for _, s in answers["onnxruntime"]], atol=1e-3)
