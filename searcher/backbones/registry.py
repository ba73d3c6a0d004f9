"""The backbone registry, in the style of timm: a name maps to a builder plus a pretrained config.

Every entry (:mod:`searcher.backbones.catalog`) says how to build the network (without its
classifier, so it returns the last feature map), which input size and preprocessing it was
trained with, how long its pooled feature vector is, and where its weights come from
(:mod:`searcher.backbones.spec`). This module only looks entries up by name; importing it is
cheap, and TensorFlow is only imported when a network is built.
"""

from __future__ import annotations

import re

from searcher.backbones.spec import (  # noqa: F401  (re-exported: the registry's public names)
    DEFAULT_BACKBONE,
    PREPROCESS_VERSION,
    BackboneSpec,
    UnknownBackbone,
    WeightsSource,
    WeightsUnavailable,
    keras_cache_dir,
    offline_message,
    resolve_weights,
    weights_checksum,
    weights_status,
)

_REGISTRY: dict[str, BackboneSpec] = {}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def get_backbone(name: str) -> BackboneSpec:
    """Look a backbone up by name, forgiving case, '-' and '_' (``MobileNetV2`` = ``mobilenet_v2``)."""
    _ensure_loaded()
    spec = _REGISTRY.get(_normalise(name))
    if spec is None:
        close = [s.name for k, s in _REGISTRY.items() if _normalise(name)[:6] in k][:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownBackbone(f"unknown backbone {name!r}.{hint} Run `searcher backbones` for the list.")
    return spec


def list_backbones() -> list[BackboneSpec]:
    _ensure_loaded()
    return list(_REGISTRY.values())


def _ensure_loaded() -> None:
    """Index the catalog's entries by normalised name (once; the catalog imports no Keras)."""
    if _REGISTRY:
        return
    from searcher.backbones.catalog import BACKBONES

    for spec in BACKBONES:
        key = _normalise(spec.name)
        if key in _REGISTRY:
            raise ValueError(f"backbone {spec.name!r} registered twice")
        _REGISTRY[key] = spec
