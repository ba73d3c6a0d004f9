"""Pooling (avg, max, GeM) and the any-size forward pass of :class:`searcher.embed.Embedder`,
checked against the backbone's own feature map computed by Keras and pooled in numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searcher.embed import GEM_P, Embedder


@pytest.fixture(scope="module")
def weights(shared: Path) -> str:
    return str(shared / "weights" / "mobilenet_0.25_128.weights.h5")


@pytest.fixture(scope="module")
def photos(sample_photos: Path) -> list[Image.Image]:
    names = ("skimage_chelsea.png", "skimage_coffee.png", "skimage_astronaut.png")
    return [Image.open(sample_photos / n).convert("RGB") for n in names]


def _feature_maps(embedder: Embedder, pixels: np.ndarray, any_size: bool = False) -> np.ndarray:
    model = embedder.model
    if any_size:  # the same network and weights, built for inputs of any height and width
        model = embedder.spec.build(None, (None, None, 3))
        model.set_weights(embedder.model.get_weights())
    x = embedder.spec.preprocess(pixels.astype(np.float32))
    return np.asarray(model(x, training=False), np.float64)


@pytest.mark.parametrize("pooling", ["avg", "max", "gem"])
def test_pooling_matches_numpy_on_the_feature_map(pooling: str, weights: str, photos: list[Image.Image]) -> None:
    embedder = Embedder("mobilenet_025_128", weights=weights, pooling=pooling)
    pixels = np.stack([np.asarray(p.resize(embedder.input_size, Image.Resampling.BILINEAR)) for p in photos])
    fmap = _feature_maps(embedder, pixels)
    if pooling == "avg":
        want = fmap.mean(axis=(1, 2))
    elif pooling == "max":
        want = fmap.max(axis=(1, 2))
    else:
        want = (np.maximum(fmap, 1e-6) ** GEM_P).mean(axis=(1, 2)) ** (1 / GEM_P)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = embedder.embed(pixels)
    assert got.shape == (3, embedder.dim)
    assert np.allclose(got, want, atol=1e-4)
    assert embedder.identity.pooling == pooling and pooling in embedder.identity.key


def test_aspect_mode_keeps_the_shape_and_squash_mode_equals_embed(weights: str, photos: list[Image.Image]) -> None:
    embedder = Embedder("mobilenet_025_128", weights=weights)
    side = embedder.spec.input_size
    squashed = embedder.embed_images(photos, mode="squash")
    resized = np.stack([np.asarray(p.resize((side, side), Image.Resampling.BILINEAR)) for p in photos])
    assert np.allclose(squashed, embedder.embed(resized), atol=1e-4)
    wide = photos[2].crop((0, 0, photos[2].width, photos[2].height // 2))  # 2:1
    aspect = embedder.embed_images([wide], mode="aspect")[0]
    w, h = round(side * wide.width / wide.height), side
    fmap = _feature_maps(embedder, np.asarray(wide.resize((w, h), Image.Resampling.BILINEAR))[None], any_size=True)
    assert fmap.shape[2] > fmap.shape[1]  # the whole fully-convolutional map, wider than tall
    want = fmap.mean(axis=(1, 2))[0]
    assert np.allclose(aspect, want / np.linalg.norm(want), atol=1e-3)
    multi = embedder.embed_images([wide], mode="aspect", scales=(0.75, 1.0))[0]
    assert np.isclose(np.linalg.norm(multi), 1.0, atol=1e-5) and not np.allclose(multi, aspect, atol=1e-3)


def test_feature_maps_are_what_embed_pools(weights: str, photos: list[Image.Image]) -> None:
    embedder = Embedder("mobilenet_025_128", weights=weights, pooling="avg")
    pixels = np.stack([np.asarray(p.resize(embedder.input_size, Image.Resampling.BILINEAR)) for p in photos])
    fmap = embedder.feature_maps(pixels)
    assert fmap.shape == (3, 4, 4, 256) and fmap.dtype == np.float32
    np.testing.assert_allclose(fmap, _feature_maps(embedder, pixels), rtol=1e-4, atol=1e-4)
    pooled = fmap.mean(axis=(1, 2))
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, embedder.embed(pixels), atol=1e-5)
    assert embedder.feature_maps(pixels[:0]).shape[0] == 0


@pytest.mark.parametrize("pooling", ["avg", "max", "gem"])
def test_numpy_pooling_of_the_onnx_runtime_matches_tensorflow(
    pooling: str, weights: str, photos: list[Image.Image]
) -> None:
    """ONNX Runtime returns the feature map and pools it in numpy: that pooling must be TensorFlow's."""
    from searcher.runtime.onnx_embedder import pool_unit_vectors

    embedder = Embedder("mobilenet_025_128", weights=weights, pooling=pooling)
    pixels = np.stack([np.asarray(p.resize(embedder.input_size, Image.Resampling.BILINEAR)) for p in photos])
    got = pool_unit_vectors(embedder.feature_maps(pixels), pooling)
    assert got.dtype == np.float32 and got.shape == (3, embedder.dim)
    np.testing.assert_allclose(got, embedder.embed(pixels), atol=1e-5)
