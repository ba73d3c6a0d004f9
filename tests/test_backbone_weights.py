"""Real ImageNet weights from ../shared/weights through the `--weights FILE` path, and a library
that holds the vectors of two backbones at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from searcher.backbones import get_backbone, list_backbones
from searcher.backbones.registry import resolve_weights
from searcher.cli import app

TABBY, TIGER_CAT, EGYPTIAN_CAT = 281, 282, 285  # Keras (0-based) ImageNet class indices

SHARED_WEIGHTS = {
    "mobilenet": "mobilenet_1.0_224.weights.h5",
    "mobilenet_v2": "mobilenet_v2_1.0_224.weights.h5",
    "mobilenet_025_128": "mobilenet_0.25_128.weights.h5",
}


def _photo(path: Path, size: int) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.float32)


@pytest.mark.parametrize("name", ["mobilenet", "mobilenet_v2"])
def test_real_weights_recognise_the_cat(name: str, shared: Path, sample_photos: Path) -> None:
    import tensorflow as tf

    spec = get_backbone(name)
    path = resolve_weights(spec, str(shared / "weights" / SHARED_WEIGHTS[name]))  # what --weights FILE does
    assert spec.build_classifier is not None
    model = spec.build_classifier(path)
    x = spec.preprocess(tf.constant(_photo(sample_photos / "skimage_chelsea.png", spec.input_size)[None]))
    probs = np.asarray(model(x, training=False))[0]
    top5 = [int(i) for i in np.argsort(-probs)[:5]]
    assert {TABBY, TIGER_CAT, EGYPTIAN_CAT} <= set(top5), top5
    labels = (shared / "weights" / "imagenet_labels.txt").read_text().splitlines()
    assert "cat" in labels[top5[0] + 1].lower()  # the labels file is offset by one ("background")


def test_feature_extractor_loads_the_same_file(shared: Path, sample_photos: Path) -> None:
    """The no-top network (what `index --weights FILE` builds) loads the full-model file too,
    and real weights separate a cat from a coffee cup better than a cat from itself edited."""
    from searcher.embed import Embedder

    embedder = Embedder("mobilenet_v2", weights=str(shared / "weights" / SHARED_WEIGHTS["mobilenet_v2"]))
    assert embedder.identity.weights_sha256 not in ("random", "")
    cat = _photo(sample_photos / "skimage_chelsea.png", 224)
    batch = np.stack([cat, cat[:, ::-1], _photo(sample_photos / "skimage_coffee.png", 224)]).astype(np.uint8)
    v = embedder.embed(batch)
    assert v.shape == (3, 1280)
    assert float(v[0] @ v[1]) > 0.9 > float(v[0] @ v[2])


@pytest.mark.parametrize(
    "name", [s.name for s in list_backbones() if s.mixed_precision], ids=lambda n: n
)  # fmt: skip
def test_float16_keeps_the_vectors(name: str, shared: Path, sample_photos: Path) -> None:
    """Backbones flagged ``mixed_precision`` (used on a GPU) give the same vectors in float16.

    Keras' mixed_float16 policy also runs on a CPU, so this is checked here with real weights.
    """
    import keras
    import tensorflow as tf

    from searcher.embed import _float16_policy

    spec = get_backbone(name)
    weights = str(shared / "weights" / SHARED_WEIGHTS[name]) if name in SHARED_WEIGHTS else "imagenet"
    resolved = resolve_weights(spec, weights)
    files = [sample_photos / "skimage_chelsea.png", sample_photos / "sklearn_china.jpg"]
    x = spec.preprocess(tf.constant(np.stack([_photo(f, spec.input_size) for f in files])))
    pooled = []
    for half in (False, True):
        with _float16_policy(half):
            model = spec.build(resolved, (spec.input_size, spec.input_size, 3))
        out = tf.cast(model(x, training=False), tf.float32).numpy().mean(axis=(1, 2))
        pooled.append(out / np.linalg.norm(out, axis=1, keepdims=True))
        assert (model.compute_dtype == "float16") == half
        del model
        keras.backend.clear_session()
    assert float(np.min(np.sum(pooled[0] * pooled[1], axis=1))) > 0.999


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_two_backbones_in_one_library(tmp_path: Path, shared: Path, sample_photos: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["skimage_chelsea.png", "skimage_coffee.png", "skimage_astronaut.png", "sklearn_china.jpg",
             "skimage_rocket.jpg"]  # fmt: skip
    for name in names:
        (photos / name).write_bytes((sample_photos / name).read_bytes())
    probe = sample_photos / "sklearn_flower.jpg"  # not indexed: the query embeds it
    lib = str(tmp_path / "lib")
    b_weights = str(shared / "weights" / SHARED_WEIGHTS["mobilenet_025_128"])

    a = json.loads(_invoke("index", "--backbone", "efficientnet_lite0", "-L", lib, "--json", "-q", str(photos)))
    assert a["new"] == 5 and a["embedded"] == 5
    b = json.loads(
        _invoke("index", "--backbone", "mobilenet_025_128", "--weights", b_weights, "-L", lib, "--json", "-q",
                str(photos))
    )  # fmt: skip
    assert b["embedded"] == 5 and b["new"] == 0  # same files, a second set of vectors

    for backbone in ("efficientnet_lite0", "mobilenet_025_128"):
        [result] = json.loads(_invoke("query", "--backbone", backbone, "-k", "3", "-L", lib, "--json", str(probe)))
        assert result.get("error") is None
        hits = result["results"]
        assert len(hits) == 3
        # scores are plain cosines; the default re-ranking (DBA) may order them differently
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert all(-1.0 <= h["score"] <= 1.0001 for h in hits)
        [plain] = json.loads(
            _invoke("query", "--backbone", backbone, "-k", "3", "-L", lib, "--json", "--no-dba", "--no-expand",
                    str(probe))
        )  # fmt: skip
        scores = [h["score"] for h in plain["results"]]
        assert scores == sorted(scores, reverse=True)
        assert {Path(h["path"]).name for h in hits} <= set(names)

    info = json.loads(_invoke("info", "-L", lib, "--json"))
    models = {m["backbone"]: m for m in info["models"]}
    assert set(models) == {"efficientnet_lite0", "mobilenet_025_128"}
    assert models["efficientnet_lite0"]["vectors"] == 5 and models["mobilenet_025_128"]["vectors"] == 5
    assert models["efficientnet_lite0"]["dim"] == 1280 and models["mobilenet_025_128"]["dim"] == 256
    assert models["efficientnet_lite0"]["default"]  # the first backbone stays the default

    # Switching back re-embeds nothing and drops nothing.
    again = json.loads(_invoke("index", "--backbone", "efficientnet_lite0", "-L", lib, "--json", "-q", str(photos)))
    assert again["embedded"] == 0 and again["unchanged"] == 5
    info = json.loads(_invoke("info", "-L", lib, "--json"))
    assert sorted(m["vectors"] for m in info["models"]) == [5, 5]
