"""Stage 3: decoded images -> L2-normalised embeddings.

:class:`Embedder` wraps one backbone in a compiled ``tf.function`` (one trace,
any batch size), does the backbone's own preprocessing inside the graph, pools
the last feature map (avg, max or GeM) and L2-normalises the result. Only this
module (and the backbone builders) import TensorFlow, and only when an
:class:`Embedder` is created.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage

from searcher.backbones.registry import (
    PREPROCESS_VERSION,
    BackboneSpec,
    get_backbone,
    resolve_weights,
    weights_checksum,
)

POOLINGS = ("avg", "max", "gem")
GEM_P = 3.0


@dataclass(frozen=True)
class ModelIdentity:
    """Everything that makes two vectors comparable; ``key`` names the FAISS index."""

    backbone: str
    weights_sha256: str
    weights_source: str
    preprocess_version: str
    pooling: str
    dim: int

    @property
    def key(self) -> str:
        prep = hashlib.sha1(self.preprocess_version.encode()).hexdigest()[:8]
        return f"{self.backbone}-{self.pooling}-w{self.weights_sha256[:12]}-p{prep}"


def model_identity(spec: BackboneSpec, weights: str | None = "imagenet", pooling: str = "avg") -> ModelIdentity:
    """The identity of ``spec`` with these weights and pooling, without building the network.

    For Keras' ``imagenet`` weights that are not yet cached the checksum is taken after download.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    return _identity_of(spec, resolve_weights(spec, weights), pooling)


def _identity_of(spec: BackboneSpec, resolved_weights: str | None, pooling: str) -> ModelIdentity:
    """The identity of ``spec`` with a resolved weights file (``None`` = random weights)."""
    return ModelIdentity(
        backbone=spec.name,
        weights_sha256=weights_checksum(resolved_weights, spec),
        weights_source=resolved_weights or "random",
        preprocess_version=f"{PREPROCESS_VERSION}:{spec.preprocess_id}",
        pooling=pooling,
        dim=spec.dim,
    )


def configure_tensorflow() -> None:
    """Environment for a quiet TensorFlow; call before importing it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Mute C++ log lines that TensorFlow writes straight to file descriptor 2 while it starts up.

    Python exceptions are unaffected (they propagate); ``SEARCHER_DEBUG=1`` keeps everything.
    """
    if os.environ.get("SEARCHER_DEBUG") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _gpu_memory_growth(tf) -> None:
    """Let TensorFlow take GPU memory as it needs it, not all at once (impossible once a GPU is in use)."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):
            pass


@contextlib.contextmanager
def _float16_policy(enabled: bool) -> Iterator[None]:
    """Build the network under Keras' ``mixed_float16`` policy (float32 weights, float16 compute).

    Only on a GPU and for backbones whose ``mixed_precision`` flag says it is safe;
    ``SEARCHER_MIXED_PRECISION=0`` turns it off. The output is cast back to float32.
    """
    if not enabled or os.environ.get("SEARCHER_MIXED_PRECISION", "1") == "0":
        yield
        return
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def pooled_unit_vectors(fmap: Any, pooling: str) -> Any:
    """Pool a (batch, h, w, channels) feature map to one L2-normalised vector per image: ``avg``,
    ``max`` or ``gem`` (generalised mean, p = :data:`GEM_P`). Traced inside ``tf.function``."""
    import tensorflow as tf

    fmap = tf.cast(fmap, tf.float32)
    if pooling == "avg":
        pooled = tf.reduce_mean(fmap, axis=[1, 2])
    elif pooling == "max":
        pooled = tf.reduce_max(fmap, axis=[1, 2])
    else:
        pooled = tf.pow(tf.reduce_mean(tf.pow(tf.maximum(fmap, 1e-6), GEM_P), axis=[1, 2]), 1.0 / GEM_P)
    return tf.math.l2_normalize(pooled, axis=1)


class Embedder:
    """A backbone ready to embed batches of uint8 RGB images of its input size (on TensorFlow;
    :class:`searcher.runtime.onnx_embedder.OnnxEmbedder` is the ONNX Runtime twin, same interface)."""

    runtime = "tensorflow"

    def __init__(
        self,
        backbone: str | BackboneSpec,
        weights: str | None = "imagenet",
        pooling: str = "avg",
        identity: ModelIdentity | None = None,
    ) -> None:
        configure_tensorflow()
        with quiet_native_stderr():
            self._build(backbone, weights, pooling, identity)

    def _build(
        self, backbone: str | BackboneSpec, weights: str | None, pooling: str, identity: ModelIdentity | None
    ) -> None:
        import tensorflow as tf

        self.spec = get_backbone(backbone) if isinstance(backbone, str) else backbone
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        self.pooling = pooling
        resolved = resolve_weights(self.spec, weights)
        size = self.spec.input_size
        self.gpu = bool(tf.config.list_physical_devices("GPU"))
        if self.gpu:
            _gpu_memory_growth(tf)
        with _float16_policy(self.gpu and self.spec.mixed_precision):  # CPU: float32, unchanged
            self.model = self.spec.build(resolved, (size, size, 3))
        self.identity = identity or _identity_of(self.spec, resolved, pooling)
        preprocess = self.spec.preprocess
        model = self.model

        def forward(batch: tf.Tensor) -> tf.Tensor:
            return pooled_unit_vectors(model(preprocess(tf.cast(batch, tf.float32)), training=False), pooling)

        def feature_maps(batch: tf.Tensor) -> tf.Tensor:
            return tf.cast(model(preprocess(tf.cast(batch, tf.float32)), training=False), tf.float32)

        self._forward = tf.function(
            forward,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)],
            reduce_retracing=True,
        )
        self._feature_maps = tf.function(
            feature_maps,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)],
            reduce_retracing=True,
        )  # traced on first use (regional descriptors, checks), not at start-up
        self.embed(np.zeros((1, size, size, 3), np.uint8))  # trace once now, not on the first real batch

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.spec.input_size, self.spec.input_size)

    @property
    def dim(self) -> int:
        return self.spec.dim

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 -> (n, dim) float32 unit vectors."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._forward(np.ascontiguousarray(images, dtype=np.uint8)).numpy().astype(np.float32)

    def feature_maps(self, images: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 -> (n, h, w, dim) float32: the backbone's last feature map, before
        pooling (what :meth:`embed` pools; for regional descriptors and runtime checks)."""
        if len(images) == 0:
            h = w = max(1, self.spec.input_size // 32)
            return np.zeros((0, h, w, self.dim), np.float32)
        return self._feature_maps(np.ascontiguousarray(images, dtype=np.uint8)).numpy()

    def embed_images(self, images: Sequence[PILImage.Image], *, mode: str = "squash", scales: Sequence[float] = (1.0,)):
        """PIL RGB images -> (n, dim) unit vectors, one model call per image and scale (slower than
        :meth:`embed`; used by :mod:`searcher.evaluate` to measure embedding variants).

        ``mode``: ``"squash"`` resizes to the input size like :meth:`embed`; ``"aspect"`` keeps the
        aspect ratio with the short side at the input size (the backbones are fully convolutional).
        ``scales``: side multipliers; the L2-normalised pooled vectors of all scales are averaged.
        """
        if mode not in ("squash", "aspect"):
            raise ValueError(f"mode must be squash or aspect, not {mode!r}")
        forward = self._dynamic_forward()
        side = self.spec.input_size
        out = np.zeros((len(images), self.dim), np.float32)
        for i, image in enumerate(images):
            w, h = image.size
            for scale in scales:
                target = side * float(scale)
                if mode == "squash":
                    size = (round(target), round(target))
                else:
                    r = target / min(w, h)
                    size = (max(32, round(w * r)), max(32, round(h * r)))
                img = image
                if img.size != size:
                    img = img.resize(size, PILImage.Resampling.BILINEAR, reducing_gap=3.0)
                out[i] += forward(np.asarray(img, dtype=np.uint8)[None]).numpy()[0]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _dynamic_forward(self):
        """The same network and pooling for inputs of any height and width (built on first use)."""
        if getattr(self, "_dyn_forward", None) is None:
            import tensorflow as tf

            with quiet_native_stderr(), _float16_policy(self.gpu and self.spec.mixed_precision):
                model = self.spec.build(None, (None, None, 3))
            model.set_weights(self.model.get_weights())
            preprocess, pooling = self.spec.preprocess, self.pooling

            def forward(batch: tf.Tensor) -> tf.Tensor:
                return pooled_unit_vectors(model(preprocess(tf.cast(batch, tf.float32)), training=False), pooling)

            self._dyn_model = model
            self._dyn_forward = tf.function(
                forward, input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)], reduce_retracing=True
            )
        return self._dyn_forward


_CACHE: dict[tuple[str, str | None, str], Embedder] = {}


def cached_embedder(backbone: str, weights: str | None = "imagenet", pooling: str = "avg") -> Embedder:
    """One :class:`Embedder` per (backbone, weights, pooling) per process (a server or a test run builds once)."""
    key = (backbone, weights, pooling)
    if key not in _CACHE:
        _CACHE[key] = Embedder(backbone, weights=weights, pooling=pooling)
    return _CACHE[key]
