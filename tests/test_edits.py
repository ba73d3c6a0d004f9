"""The edited-copy generator shared by calibration and the benchmarks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from searcher.edits import EDIT_KINDS, apply_edit, make_benchmark
from tests.conftest import synthetic_photo


def test_every_kind_gives_a_changed_rgb_picture() -> None:
    img = synthetic_photo(1, (320, 240))
    for kind in EDIT_KINDS:
        out = apply_edit(img, kind, np.random.default_rng(0))
        assert isinstance(out, Image.Image) and out.mode == "RGB", kind
        same_size = out.size == img.size
        assert not (same_size and np.array_equal(np.asarray(out), np.asarray(img))), kind


def test_geometry_of_some_kinds() -> None:
    img = synthetic_photo(2, (300, 200))
    rng = np.random.default_rng(0)
    assert apply_edit(img, "rot90", rng).size == (200, 300)
    assert max(apply_edit(img, "thumbnail", rng).size) <= 192
    w, h = apply_edit(img, "random_crop", rng).size
    assert 0.4 < (w * h) / (300 * 200) < 0.6
    assert apply_edit(img, "border", rng).size > (300, 200)
    np.testing.assert_array_equal(np.asarray(apply_edit(img, "hflip", rng)), np.asarray(img)[:, ::-1])


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown edit kind"):
        apply_edit(synthetic_photo(0), "sepia", np.random.default_rng(0))


def test_make_benchmark_is_reproducible(tmp_path) -> None:
    src = tmp_path / "src.png"
    synthetic_photo(3).save(src)
    kinds = ["jpeg", "random_crop", "text_overlay", "combo_social"]
    one = make_benchmark([src], tmp_path / "a", kinds, seed=5)
    two = make_benchmark([src], tmp_path / "b", kinds, seed=5)
    assert [m["kind"] for m in one] == kinds
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == one
    for a, b in zip(one, two, strict=True):
        assert a["source"] == str(src.resolve())
        assert open(a["copy"], "rb").read() == open(b["copy"], "rb").read()
