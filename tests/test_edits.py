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


def test_wide_kinds_keep_the_first_twenty_and_change_the_picture() -> None:
    from searcher.edits import WIDE_KINDS

    assert WIDE_KINDS[: len(EDIT_KINDS)] == EDIT_KINDS and len(EDIT_KINDS) == 20
    img = synthetic_photo(4, (320, 240))
    for kind in WIDE_KINDS[len(EDIT_KINDS) :]:
        for split in ("tune", "report"):
            out = apply_edit(img, kind, np.random.default_rng(1), split)
            assert out.mode == "RGB", kind
            assert out.size != img.size or not np.array_equal(np.asarray(out), np.asarray(img)), kind


def test_geometry_of_the_wide_kinds() -> None:
    img = synthetic_photo(5, (400, 300))
    for seed in range(10):
        rng = np.random.default_rng(seed)
        w, h = apply_edit(img, "crop_small", rng, "report").size
        assert 0.33 < (w * h) / (400 * 300) < 0.5
        w, h = apply_edit(img, "rotate_crop", rng, "report").size
        assert w < 400 and h < 300  # the corners were cut off
        w, h = apply_edit(img, "rotate_corners", rng, "report").size
        assert w > 400 and h > 300  # the whole turned picture on a larger canvas
    assert apply_edit(img, "screenshot", np.random.default_rng(0)).size in ((1280, 800), (720, 1560))


def test_tune_and_report_parameters_never_overlap() -> None:
    from searcher import edits

    def draws(split: str) -> np.ndarray:
        token = edits._SPLIT.set(split)
        try:
            rng = np.random.default_rng(0)
            return np.array([edits._u(rng, 2.0, 15.0) for _ in range(2000)])
        finally:
            edits._SPLIT.reset(token)

    tune, report = draws("tune"), draws("report")
    bins = lambda x: np.floor((x - 2.0) / (13.0 / 8)).astype(int)  # noqa: E731
    assert set(bins(tune)) == {0, 2, 4, 6} and set(bins(report)) == {1, 3, 5, 7}
    assert tune.min() >= 2.0 and report.max() < 15.0
    with pytest.raises(ValueError, match="unknown split"):
        apply_edit(synthetic_photo(0), "jpeg", np.random.default_rng(0), "train")


def test_a_split_benchmark_differs_from_the_other_split(tmp_path) -> None:
    src = tmp_path / "src.png"
    synthetic_photo(6).save(src)
    kinds = ["crop_half", "motion_blur", "watermark"]
    tune = make_benchmark([src], tmp_path / "t", kinds, seed=1, split="tune")
    report = make_benchmark([src], tmp_path / "r", kinds, seed=1, split="report")
    assert [m["split"] for m in tune] == ["tune"] * 3
    for a, b in zip(tune, report, strict=True):
        assert open(a["copy"], "rb").read() != open(b["copy"], "rb").read()
