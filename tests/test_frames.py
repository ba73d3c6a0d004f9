"""The picture inside a frame (searcher.frames): solid frames, screenshots' busy frames, and photos of
a print or a screen, whose picture is found by its four corners and cut out straight."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searcher import Library, frames
from searcher.edits import apply_edit


def _grey_correlation(a: Image.Image, b: Image.Image, side: int = 64) -> float:
    """Correlation of two pictures' grey levels, both resized to ``side`` x ``side``."""
    x, y = (np.asarray(im.convert("L").resize((side, side), Image.Resampling.BILINEAR), float).ravel() for im in (a, b))
    return float(np.corrcoef(x, y)[0, 1])


def test_a_photographed_print_or_screen_is_found_by_its_corners_and_cut_out_straight(shared: Path) -> None:
    """Photos of a screen and of a cropped print (the widened benchmark's 'report' parameters, not
    those the detector was tuned on) of 24 holidays-dev photos: the corners are found for most,
    and the picture cut out straight is much closer to its source than the whole photo is."""
    images = sorted((shared / "datasets" / "holidays-dev" / "images").glob("*.jpg"))[::14][:24]
    found, closer = 0, 0
    for n, path in enumerate(images):
        source = Image.open(path).convert("RGB")
        for kind in ("perspective", "combo_photo_of_print"):
            copy = apply_edit(source, kind, np.random.default_rng([n, 5]), "report")
            quad = frames.picture_quad(np.asarray(copy))
            if quad is None:
                continue
            found += 1
            xs, ys = zip(*quad.corners, strict=True)
            assert all(0 <= v <= 1 for v in xs + ys)
            assert xs[0] < xs[1] and xs[3] < xs[2] and ys[0] < ys[3] and ys[1] < ys[2]  # tl, tr, br, bl
            inside = frames.rectify(copy, quad)
            whole = _grey_correlation(copy, source)
            if kind == "perspective":  # the whole picture, so it lines up with its source once straight
                closer += _grey_correlation(inside, source) > max(0.8, whole + 0.15)
    assert found >= 0.85 * 2 * len(images), found
    assert closer >= 0.8 * len(images), closer


def test_plain_photos_have_no_picture_photographed_inside(shared: Path) -> None:
    """A sky that floods to the horizon, a dark border, a door filling the frame: none is a print."""
    paths = sorted((shared / "datasets" / "holidays-dev" / "images").glob("*.jpg"))
    paths += sorted(
        p for p in (shared / "datasets" / "sample-photos" / "images").iterdir() if p.suffix in (".jpg", ".png")
    )
    false = [p.name for p in paths if frames.picture_quad(np.asarray(Image.open(p).convert("RGB"))) is not None]
    assert len(false) <= 0.01 * len(paths), false


def test_inner_box_prefers_corners_and_still_finds_frames_and_screenshots(sample_photos: Path) -> None:
    from searcher.decode import load_for_model

    pixels, decoded = load_for_model(sample_photos / "skimage_astronaut.png", (224, 224))
    assert frames.inner_box(pixels) is None
    framed = np.asarray(apply_edit(decoded.image, "border", np.random.default_rng(0)).resize((224, 224)))
    region, turned_too = frames.inner_box(framed)
    assert turned_too
    cut = frames.cut_inside(Image.fromarray(framed), region)  # a straight frame: its corners make a box
    assert _grey_correlation(cut, decoded.image) > 0.95
    photo = apply_edit(decoded.image, "perspective", np.random.default_rng(1), "report")
    region, turned_too = frames.inner_box(np.asarray(photo.resize((224, 224))))
    assert isinstance(region, frames.Quad) and turned_too
    # the corners, found on the squashed model input, cut the full-size photo too
    assert _grey_correlation(frames.cut_inside(photo, region), decoded.image) > 0.8


def test_tiny_flat_and_odd_pictures_have_no_quad() -> None:
    rng = np.random.default_rng(0)
    for pixels in (
        np.zeros((9, 9, 3), np.uint8),
        np.full((300, 200, 3), 128, np.uint8),
        rng.integers(0, 256, (120, 160, 3)).astype(np.uint8),
        rng.integers(0, 256, (2000, 12, 3)).astype(np.uint8),
    ):
        assert frames.picture_quad(pixels) is None


def test_the_default_query_verifies_photos_of_prints_by_the_picture_cut_out_straight(
    holidays_subset: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Photos of cropped prints (a tilted picture on a coloured background, colour cast, glare) of
    photos of a library: with their corners found (the default) the picture cut out straight verifies
    against its source far better than the boxes alone do (``picture_quad`` switched off), so more
    count as copies, and none found first is lost."""
    names = sorted(p.name for p in holidays_subset["folder"].iterdir())[::4][:18]
    probes = []
    for n, name in enumerate(names):
        source = Image.open(holidays_subset["folder"] / name).convert("RGB")
        probe = tmp_path / f"print_{n}.jpg"
        apply_edit(source, "combo_photo_of_print", np.random.default_rng([n, 11]), "report").save(probe, quality=90)
        probes.append((probe, name))

    def run() -> tuple[set[str], list[float]]:
        with Library.open(holidays_subset["library"]) as lib:  # a fresh open: no cached features
            results = lib.query([p for p, _ in probes], k=10)
        first, scores = set(), []
        for (_, name), r in zip(probes, results, strict=True):
            if r.results and Path(r.results[0].path).name == name:
                first.add(name)
            scores.append(max([h.verified or 0.0 for h in r.results if Path(h.path).name == name], default=0.0))
        return first, scores

    with_corners, corner_scores = run()
    monkeypatch.setattr(frames, "picture_quad", lambda pixels: None)
    boxes_only, box_scores = run()
    assert boxes_only <= with_corners, boxes_only - with_corners
    assert len(with_corners) >= 0.8 * len(probes)
    assert np.median(corner_scores) >= np.median(box_scores) + 0.1, (np.median(corner_scores), np.median(box_scores))
    assert sum(c > b + 0.05 for c, b in zip(corner_scores, box_scores, strict=True)) >= 0.5 * len(probes)


def test_trim_border_finds_frames_and_leaves_plain_photos_alone(sample_photos: Path) -> None:
    from searcher.decode import load_for_model

    for name in ("skimage_chelsea.png", "skimage_astronaut.png", "sklearn_china.jpg"):
        pixels, decoded = load_for_model(sample_photos / name, (224, 224))
        assert frames.trim_border(pixels) is None, name
        framed = apply_edit(decoded.image, "border", np.random.default_rng(0))
        framed_pixels = np.asarray(framed.resize((224, 224), Image.Resampling.BILINEAR))
        inner = frames.trim_border(framed_pixels)
        assert inner is not None and inner.shape == pixels.shape, name
        # the inside is close to the unframed photo (much closer than the framed one)
        assert np.abs(inner.astype(int) - pixels).mean() < 0.5 * np.abs(framed_pixels.astype(int) - pixels).mean()


def test_picture_box_finds_the_picture_in_screenshots_and_not_in_plain_photos(sample_photos: Path) -> None:
    from searcher.decode import load_for_model
    from searcher.edits import apply_edit

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])

    names = sorted(p.name for p in sample_photos.iterdir() if p.suffix in (".jpg", ".png"))
    found, false_boxes = 0, []
    for n, name in enumerate(names):
        pixels, decoded = load_for_model(sample_photos / name, (224, 224))
        if frames.picture_box(pixels) is not None:
            false_boxes.append(name)
        shot = apply_edit(decoded.image, "screenshot", np.random.default_rng(n))
        shot_pixels = np.asarray(shot.resize((224, 224), Image.Resampling.BILINEAR))
        box = frames.picture_box(shot_pixels)
        if box is None:
            continue
        found += 1
        t, b, left, right = box
        back = np.asarray(Image.fromarray(shot_pixels[t:b, left:right]).resize((224, 224)))
        # the box holds the picture: resized back, it correlates with the photo; the screenshot does not
        assert corr(back, pixels) > corr(shot_pixels, pixels) + 0.1, name
    assert found >= 0.8 * len(names), found
    assert len(false_boxes) <= 1, false_boxes  # (the retina photo sits on black: a frame indeed)


def _longest_run_by_loop(row: np.ndarray, gap: int) -> int:
    best, start, last = 0, None, None
    for i in np.flatnonzero(row):
        if start is None or i - last > gap + 1:
            start = i
        last = i
        best = max(best, last + 1 - start)
    return int(best)


def test_picture_box_runs_equal_a_plain_loop() -> None:
    """The screenshot detector's vectorised run lengths (per row, gaps bridged) equal the obvious loop."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    @settings(max_examples=300, deadline=None)
    @given(
        arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 40))),
        st.integers(0, 4),
    )
    def check(mask: np.ndarray, gap: int) -> None:
        expected = [_longest_run_by_loop(row, gap) for row in mask]
        assert frames._longest_runs(mask, gap).tolist() == expected
        for row, want in zip(mask, expected, strict=True):
            start, end = frames._longest_run(row, gap)
            assert end - start == want and (want == 0 or (row[start] and row[end - 1]))

    check()


def test_a_picture_shown_straight_is_upright_and_one_photographed_at_an_angle_is_not() -> None:
    straight = frames.Quad(((0.1, 0.2), (0.9, 0.2), (0.9, 0.8), (0.1, 0.8)))
    stickered = frames.Quad(((0.1, 0.2), (0.9, 0.2), (0.9, 0.8), (0.14, 0.8)))  # a corner cut along one side
    tilted = frames.Quad(((0.1, 0.2), (0.85, 0.25), (0.92, 0.8), (0.12, 0.76)))
    assert frames.is_upright(straight) and frames.is_upright(stickered)
    assert not frames.is_upright(tilted)
