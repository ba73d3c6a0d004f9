"""Export a TensorFlow :class:`~searcher.embed.Embedder` to ONNX and check it against TensorFlow.

Needs TensorFlow and tf2onnx, once per model: the exported graph takes uint8 images (any batch
size) and returns the last feature map, preprocessing included. Keras 3's own
``model.export(format="onnx")`` goes through tf2onnx as well, but exports the bare network
without our preprocessing, so the ``tf.function`` is converted directly.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from searcher.runtime.onnx_embedder import pool_unit_vectors

OPSET = 17
MIN_COSINE = 1.0 - 1e-4  # per vector, ONNX Runtime against TensorFlow


@dataclass
class Verification:
    """How the ONNX graph compared with TensorFlow on the check images."""

    passed: bool
    images: int
    min_cosine: float
    max_abs_diff: float  # largest feature-map difference, relative to the largest activation
    reason: str = ""


@contextlib.contextmanager
def _float32_build() -> Iterator[None]:
    """Export from a float32 network even on a GPU (where the Embedder may compute in float16)."""
    before = os.environ.get("SEARCHER_MIXED_PRECISION")
    os.environ["SEARCHER_MIXED_PRECISION"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SEARCHER_MIXED_PRECISION", None)
        else:
            os.environ["SEARCHER_MIXED_PRECISION"] = before


def export_onnx(backbone: str, weights: str | None, pooling: str):  # -> (bytes, Embedder)
    """The ONNX graph (serialised) of ``backbone`` and the TensorFlow embedder it came from."""
    from searcher.embed import Embedder, quiet_native_stderr

    with _float32_build():
        tf_embedder = Embedder(backbone, weights=weights, pooling=pooling)
    import tensorflow as tf
    import tf2onnx

    size = tf_embedder.spec.input_size
    signature = [tf.TensorSpec([None, size, size, 3], tf.uint8)]
    with quiet_native_stderr():
        proto, _ = tf2onnx.convert.from_function(tf_embedder._feature_maps, input_signature=signature, opset=OPSET)
    return proto.SerializeToString(), tf_embedder


def verify(tf_embedder, onnx_embedder, images: np.ndarray) -> Verification:
    """Compare both runtimes on ``images`` (uint8, model size): every vector's cosine must reach
    :data:`MIN_COSINE` and ``embed`` must pool ``feature_maps`` the same way on both sides."""
    try:
        expected = tf_embedder.embed(images)
        fmap_tf = tf_embedder.feature_maps(images)
        fmap_onnx = onnx_embedder.feature_maps(images)
        got = pool_unit_vectors(fmap_onnx, onnx_embedder.pooling)
    except Exception as exc:  # an operator ONNX Runtime cannot run, a shape it rejects...
        return Verification(False, len(images), 0.0, float("inf"), f"ONNX Runtime failed: {type(exc).__name__}: {exc}")
    cosines = np.sum(expected * got, axis=1)
    scale = max(float(np.abs(fmap_tf).max()), 1e-12)
    max_diff = float(np.abs(fmap_tf - fmap_onnx).max()) / scale
    min_cos = float(cosines.min())
    passed = bool(min_cos >= MIN_COSINE and np.isfinite(got).all())
    reason = "" if passed else f"vectors differ from TensorFlow's (lowest cosine {min_cos:.6f} < {MIN_COSINE})"
    return Verification(passed, len(images), min_cos, max_diff, reason)


def check_images(real: list[np.ndarray], size: int, total: int = 6) -> np.ndarray:
    """Up to ``total`` check images: the real ones given (library photos) first, then synthetic
    pictures with gradients, edges and texture (deterministic) to fill up."""
    out = [np.asarray(r, np.uint8) for r in real[:total]]
    rng = np.random.default_rng(1234)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    while len(out) < total:
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-200, 200, (3, 2))
        img = np.stack([base[c] + slope[c, 0] * x + slope[c, 1] * y for c in range(3)], axis=-1)
        for _ in range(6):
            x0, y0 = rng.integers(0, size - 16, 2)
            x1, y1 = x0 + rng.integers(8, size // 2), y0 + rng.integers(8, size // 2)
            img[y0:y1, x0:x1] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 8, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)
