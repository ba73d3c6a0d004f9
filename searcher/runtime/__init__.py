"""Which inference runtime embeds images: TensorFlow, or ONNX Runtime on an exported graph.

``--runtime tensorflow|onnxruntime|auto`` (or ``SEARCHER_RUNTIME``) picks it per run. ``auto``
takes ONNX Runtime when it is installed and its export of the model passed verification, else
TensorFlow. Both give the same vectors (checked), so they share one model key and one FAISS index.

The ONNX graph is exported from TensorFlow once per model and cached as
``<library>/runtime/<model key>.onnx`` with a JSON sidecar (identity, versions, the verification
result), also copied to the per-user cache so other libraries on this machine reuse it. A failed
verification is recorded there too, so it is not retried on every run. A library that cannot be
written uses the per-user cache only. See :mod:`searcher.runtime.cache`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUNTIMES = ("auto", "tensorflow", "onnxruntime")
_ALIASES = {"tf": "tensorflow", "onnx": "onnxruntime", "ort": "onnxruntime"}
_default: str | None = None  # set by the CLI's --runtime for this process
_LOADED: dict[tuple[str, str | None, str], Any] = {}  # one ONNX Runtime session (or None) per model per process


def set_default_runtime(name: str | None) -> None:
    """The runtime this process uses when none is passed (the CLI's ``--runtime``)."""
    global _default
    if name is not None and name not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {name!r}")
    _default = name


def requested_runtime(name: str | None = None) -> str:
    """``name``, else ``--runtime``, else ``$SEARCHER_RUNTIME``, else ``auto``."""
    chosen = name or _default or os.environ.get("SEARCHER_RUNTIME") or "auto"
    chosen = _ALIASES.get(chosen.strip().lower(), chosen.strip().lower())
    if chosen not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {name or chosen!r}")
    return chosen


def onnxruntime_available() -> bool:
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None


def _gpu_without_cuda_provider() -> bool:
    """A CUDA GPU is present but this onnxruntime build runs on the CPU only (``auto`` keeps TensorFlow)."""
    if not os.path.exists("/dev/nvidia0"):
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" not in ort.get_available_providers()


def say(message: str) -> None:
    """One line on stderr about the runtime choice."""
    sys.stderr.write(f"searcher: {message}\n")
    sys.stderr.flush()


def load_embedder(
    backbone: str,
    weights: str | None,
    pooling: str,
    *,
    runtime: str | None = None,
    library_root: Path | None = None,
    check_images: Callable[[int], list[Any]] | None = None,
):  # -> Embedder | OnnxEmbedder
    """An embedder for (backbone, weights, pooling) on the requested runtime (see the module doc).

    ``check_images(size)`` returns a few real decoded images (uint8, model size) to verify a new
    export on; synthetic pictures fill up to six.
    """
    from searcher.embed import cached_embedder

    chosen = requested_runtime(runtime)
    if chosen == "tensorflow":
        return cached_embedder(backbone, weights=weights, pooling=pooling)
    if not onnxruntime_available():
        if chosen == "onnxruntime":
            raise ValueError("--runtime onnxruntime needs the onnxruntime package: pip install onnxruntime")
        return cached_embedder(backbone, weights=weights, pooling=pooling)
    if chosen == "auto" and _gpu_without_cuda_provider():
        return cached_embedder(backbone, weights=weights, pooling=pooling)
    if weights is None:  # random weights differ per build: nothing to cache
        if chosen == "onnxruntime":
            say("random weights (--weights none) run on TensorFlow only; using TensorFlow")
        return cached_embedder(backbone, weights=weights, pooling=pooling)
    from searcher.runtime.cache import keep_copy_in, onnx_embedder_for

    key = (backbone, weights, pooling)
    if key not in _LOADED:
        explicit = chosen == "onnxruntime"
        _LOADED[key] = onnx_embedder_for(backbone, weights, pooling, library_root, check_images, explicit=explicit)
    elif _LOADED[key] is not None and library_root is not None:
        keep_copy_in(library_root, _LOADED[key])  # the session is shared; the library keeps its own copy
    return _LOADED[key] or cached_embedder(backbone, weights=weights, pooling=pooling)
