"""Backbones: the CNNs that turn an image into a vector (see :mod:`searcher.backbones.registry`)."""

from searcher.backbones.registry import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    UnknownBackbone,
    WeightsUnavailable,
    get_backbone,
    list_backbones,
    resolve_weights,
    weights_status,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "UnknownBackbone",
    "WeightsUnavailable",
    "get_backbone",
    "list_backbones",
    "resolve_weights",
    "weights_status",
]
