"""An :class:`~searcher.embed.Embedder` look-alike that runs an exported ONNX graph with ONNX Runtime.

The graph maps uint8 images to the backbone's last feature map (preprocessing included); pooling
and L2 normalisation happen here in numpy, so :meth:`embed` and :meth:`feature_maps` share one
graph. Importing or using this module never imports TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from searcher.backbones.spec import BackboneSpec
from searcher.embed import GEM_P, ModelIdentity


def pool_unit_vectors(fmap: np.ndarray, pooling: str) -> np.ndarray:
    """numpy twin of :func:`searcher.embed.pooled_unit_vectors`: (n, h, w, c) -> (n, c) unit vectors."""
    if pooling == "avg":
        pooled = fmap.mean(axis=(1, 2))
    elif pooling == "max":
        pooled = fmap.max(axis=(1, 2))
    elif pooling == "gem":
        clipped = np.maximum(fmap, 1e-6)
        pooled = np.power((clipped * clipped * clipped).mean(axis=(1, 2)), 1.0 / GEM_P)
    else:
        raise ValueError(f"unknown pooling {pooling!r}")
    pooled = pooled.astype(np.float32, copy=False)
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled / norms


def session_options(threads: int | None = None):  # -> onnxruntime.SessionOptions
    """Full graph optimisation; worker threads that sleep instead of spinning between runs, so the
    decode threads of the indexing pipeline get the CPU the model leaves (``SEARCHER_ORT_SPIN=1``
    turns spinning back on; ``SEARCHER_ORT_THREADS`` sets the thread count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = threads or int(os.environ.get("SEARCHER_ORT_THREADS", "0") or 0)
    if threads:
        options.intra_op_num_threads = threads
    if os.environ.get("SEARCHER_ORT_SPIN") != "1":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def providers() -> list[str]:
    """CUDA first when this onnxruntime build has it (``onnxruntime-gpu``), then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxEmbedder:
    """A backbone exported to ONNX, run by ONNX Runtime; same vectors and model key as TensorFlow's."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, spec: BackboneSpec, identity: ModelIdentity, weights: str | None) -> None:
        import onnxruntime as ort

        self._weights = weights  # for the TensorFlow twin that embed_images needs

        self.path = Path(path)
        self.spec = spec
        self.identity = identity
        self.pooling = identity.pooling
        self.session = ort.InferenceSession(str(self.path), sess_options=session_options(), providers=providers())
        self.gpu = "CUDAExecutionProvider" in self.session.get_providers()
        self._input = self.session.get_inputs()[0].name

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.spec.input_size, self.spec.input_size)

    @property
    def dim(self) -> int:
        return self.spec.dim

    def feature_maps(self, images: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 -> (n, h, w, dim) float32, the backbone's last feature map."""
        if len(images) == 0:
            h = w = max(1, self.spec.input_size // 32)
            return np.zeros((0, h, w, self.dim), np.float32)
        batch = np.ascontiguousarray(images, dtype=np.uint8)
        return np.asarray(self.session.run(None, {self._input: batch})[0], dtype=np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 -> (n, dim) float32 unit vectors."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return pool_unit_vectors(self.feature_maps(images), self.pooling)

    def embed_images(self, images, *, mode: str = "squash", scales=(1.0,)) -> np.ndarray:
        """Any-size inputs (used by :mod:`searcher.evaluate`): TensorFlow only, so this loads the
        TensorFlow twin of this model on first use (same vectors, same key)."""
        from searcher.embed import cached_embedder

        twin = cached_embedder(self.spec.name, weights=self._weights, pooling=self.pooling)
        return twin.embed_images(images, mode=mode, scales=scales)
