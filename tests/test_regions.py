"""Regional descriptors (searcher.regions): windows, pooling, ids and the merge with the global ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searcher import Library, frames, regions, rerank


def test_region_boxes_of_a_7x7_map_are_13_squares_inside_it() -> None:
    boxes = regions.region_boxes(7, 7)
    assert len(boxes) == 13 and len(set(boxes)) == 13
    sides = sorted({b - t for t, b, _, _ in boxes})
    assert sides == [5, 6]
    for t, b, left, right in boxes:
        assert 0 <= t < b <= 7 and 0 <= left < right <= 7 and b - t == right - left
    # corners are covered: a crop of any corner has a window there
    assert (0, 6, 0, 6) in boxes and (1, 7, 1, 7) in boxes and (2, 7, 0, 5) in boxes


def test_region_boxes_of_a_wide_map_slide_along_the_long_side() -> None:
    boxes = regions.region_boxes(4, 8, ((0.75, 3),))
    assert boxes == [(0, 3, 0, 3), (0, 3, 2, 5), (0, 3, 5, 8), (1, 4, 0, 3), (1, 4, 2, 5), (1, 4, 5, 8)]
    assert regions.region_boxes(3, 3, ((1.0, 2),)) == []  # the whole map is the global vector, not a region


def test_region_vectors_are_the_normalised_window_means() -> None:
    fmaps = np.random.default_rng(0).random((3, 7, 7, 16)).astype(np.float32)
    got = regions.region_vectors(fmaps)
    boxes = regions.region_boxes(7, 7)
    assert got.shape == (3, len(boxes), 16)
    for r, (t, b, left, right) in enumerate(boxes):
        want = rerank.l2_normalise(fmaps[:, t:b, left:right].mean(axis=(1, 2)))
        assert np.allclose(got[:, r], want, atol=1e-5)
    assert np.allclose(regions.global_vectors(fmaps), rerank.l2_normalise(fmaps.mean(axis=(1, 2))), atol=1e-6)
    rmac = regions.rmac_vectors(fmaps)
    assert np.allclose(np.linalg.norm(rmac, axis=1), 1.0, atol=1e-5)


def test_region_ids_map_back_to_their_image() -> None:
    ids = np.array([3, 17, 900_000])
    rid = regions.region_ids(ids, 13)
    assert len(set(rid.tolist())) == 39
    assert regions.image_of(rid).tolist() == np.repeat(ids, 13).tolist()
    assert regions.image_of(np.array([-1, rid[0]])).tolist() == [-1, 3]
    with pytest.raises(ValueError, match="at most"):
        regions.region_ids(ids, regions.REGION_SLOTS + 1)


def test_regional_scores_keep_each_images_best_match() -> None:
    rng = np.random.default_rng(2)
    d = 32
    db_global = rerank.l2_normalise(rng.normal(size=(20, d)).astype(np.float32))
    db_regions = rerank.l2_normalise(rng.normal(size=(20, 4, d)).astype(np.float32).reshape(-1, d)).reshape(20, 4, d)
    ids = np.arange(100, 120)
    probe = db_regions[7, 2] + 0.05 * rng.normal(size=d).astype(np.float32)  # a "crop" of image 107
    probe = rerank.l2_normalise(probe[None])[0]
    own = rerank.l2_normalise(rng.normal(size=(3, d)).astype(np.float32))
    own[1] = db_global[12]  # the probe holds image 112 inside a frame
    search_regions = rerank.matrix_search(db_regions.reshape(-1, d), regions.region_ids(ids, 4))
    search_globals = rerank.matrix_search(db_global, ids)
    got = regions.regional_scores(probe, own, search_regions, search_globals, depth=80)
    assert max(got, key=got.get) in (107, 112)
    assert got[107] == pytest.approx(float((db_regions[7] @ probe).max()), abs=1e-5)
    assert got[112] == pytest.approx(1.0, abs=1e-5)
    assert 107 not in regions.regional_scores(probe, own, search_regions, search_globals, 80, exclude=[107])
    only_probe = regions.regional_scores(probe, own, None, search_globals, 80)  # a library without regions
    assert only_probe[112] == pytest.approx(1.0, abs=1e-5)


def test_merge_regional_promotes_a_clearly_better_region_only() -> None:
    ranked = rerank.Ranked(np.array([0.80, 0.70, 0.60], np.float32), np.array([1, 2, 3]), np.array([0, 1, 0]))
    merged = regions.merge_regional(ranked, {3: 0.90, 9: 0.70}, 10, margin=0.05)
    assert merged.ids.tolist() == [3, 1, 2, 9]
    assert merged.scores.tolist() == pytest.approx([0.85, 0.80, 0.70, 0.65])
    assert merged.variant.tolist() == [0, 0, 1, 0]
    kept = regions.merge_regional(ranked, {3: 0.84}, 2, margin=0.05)  # 0.79 < 0.80: the order holds
    assert kept.ids.tolist() == [1, 3]
    tie = regions.merge_regional(ranked, {2: 0.85}, 3, margin=0.05)  # 0.80 = 0.80: global order first
    assert tie.ids.tolist() == [1, 2, 3]


def test_default_query_finds_the_source_of_a_screenshot_a_plain_query_misses(
    holidays_subset: dict, tmp_path: Path
) -> None:
    from searcher.edits import apply_edit

    preset = rerank.DEFAULTS
    assert preset.regional_margin is not None and preset.verify_top > 0  # on by default
    source = holidays_subset["folder"] / "100000.jpg"
    probe = tmp_path / "shot.jpg"
    apply_edit(Image.open(source).convert("RGB"), "screenshot", np.random.default_rng(1)).save(probe, quality=90)
    with Library.open(holidays_subset["library"]) as lib:
        default = lib.query([probe], k=10)[0]
        plain = lib.query([probe], k=10, verify=0, invariant=False, augment=False)[0]
    assert Path(default.results[0].path).name == "100000.jpg"
    assert all(-1.0 <= h.score <= 1.0 for h in default.results)  # scores stay plain cosines
    names = [Path(h.path).name for h in plain.results]
    assert names[:1] != ["100000.jpg"], names  # the whole screenshot alone does not find it first
    assert all(h.verified is None for h in plain.results)


def test_a_framed_probe_also_searches_the_regions_of_the_picture_inside(holidays_subset: dict, tmp_path: Path) -> None:
    """A screenshot's stickers or captions can cover the subject; the regions of the picture found
    inside the frame (13 more windows, from the same forward pass) search the library too."""
    from searcher.decode import load_for_model, open_image
    from searcher.edits import apply_edit

    source = Image.open(holidays_subset["folder"] / "100000.jpg").convert("RGB")
    shot, plain = tmp_path / "shot.jpg", tmp_path / "plain.jpg"
    apply_edit(source, "screenshot", np.random.default_rng(1)).save(shot, quality=90)
    other = Image.open(holidays_subset["folder"] / "100400.jpg").convert("RGB")  # no frame found in it
    apply_edit(other, "jpeg", np.random.default_rng(1)).save(plain, quality=90)
    seen: dict[str, np.ndarray] = {}
    with Library.open(holidays_subset["library"]) as lib:
        real = lib.search_probes

        def recording(vectors, k, **kw):
            seen[str(len(seen))] = kw["probe_regions"][0]
            return real(vectors, k, **kw)

        lib.search_probes = recording  # type: ignore[method-assign]
        lib.query([shot], k=5, verify=0)
        lib.query([plain], k=5, verify=0)
        embedder = lib.embedder_for(lib.find_model())
        pixels, _ = load_for_model(str(shot), embedder.input_size)
    # the picture is cut from the decoded screenshot at full detail, not from the model input
    original = open_image(str(shot), min_side=4 * max(embedder.input_size)).image
    inner, framed = frames.inner_picture(pixels, original)
    assert inner is not None and not framed  # found as a screenshot's picture
    expected = regions.region_vectors(embedder.feature_maps(np.stack([pixels, inner])))
    per_view = expected.shape[1]  # 13 windows of a 7 x 7 map
    assert seen["0"].shape[0] == 2 * per_view and seen["1"].shape[0] == per_view
    np.testing.assert_allclose(seen["0"], expected.reshape(-1, expected.shape[-1]), atol=1e-4)


def test_the_picture_inside_a_phone_screenshot_is_cut_at_full_detail(holidays_subset: dict) -> None:
    """Cut from the model input, a picture that fills a fifth of a phone screenshot is enlarged
    from a few dozen rows; cut from the decoded screenshot, it keeps its detail and is closer to
    its source."""
    from searcher.decode import load_for_model
    from searcher.edits import apply_edit

    source = Image.open(holidays_subset["folder"] / "102200.jpg").convert("RGB")
    shot = apply_edit(source, "combo_screenshot_share", np.random.default_rng(2))
    assert shot.height > shot.width  # a phone screen
    pixels = np.asarray(shot.resize((224, 224), Image.Resampling.BILINEAR))
    coarse, framed = frames.inner_picture(pixels)
    fine, framed_too = frames.inner_picture(pixels, lambda: shot)
    assert coarse is not None and fine is not None and not framed and not framed_too
    assert fine.shape == coarse.shape == pixels.shape
    target, _ = load_for_model(holidays_subset["folder"] / "102200.jpg", (224, 224))

    def sharpness(a: np.ndarray) -> float:  # mean absolute difference of neighbouring pixels
        g = a.astype(float).mean(axis=-1)
        return float(np.abs(np.diff(g, axis=1)).mean())

    # the source resized to the model input has the detail of the fine cut, not of the coarse one
    assert sharpness(fine) > 1.3 * sharpness(coarse)
    assert abs(sharpness(fine) - sharpness(target)) < abs(sharpness(coarse) - sharpness(target))


def test_verification_of_a_screenshot_looks_at_the_picture_inside(holidays_subset: dict, tmp_path: Path) -> None:
    """A re-shared phone screenshot (recoloured, stickered) of a Holidays photo: as a whole it does
    not verify against its source (the picture is a fifth of the screen); its picture does, and the
    default query puts the source first as a verified copy."""
    from searcher import verify
    from searcher.duplicates import thresholds_for
    from searcher.edits import apply_edit

    source = holidays_subset["folder"] / "102200.jpg"
    probe = tmp_path / "shared-screenshot.jpg"
    apply_edit(Image.open(source).convert("RGB"), "combo_screenshot_share", np.random.default_rng(2)).save(probe)
    with Library.open(holidays_subset["library"]) as lib:
        copy_at = thresholds_for(lib.find_model()).verified
        result = lib.query([probe], k=10)[0]
    cache = verify.FeatureCache()
    (whole,) = verify.verified_evidence(str(probe), [str(source)], cache, copy_at)
    (inside,) = verify.verified_evidence(str(probe), [str(source)], cache, copy_at, inside=True)
    assert whole[0] < copy_at <= inside[0], (whole, inside, copy_at)
    assert len(verify.probe_views(cache, str(probe))) == 2  # the screenshot and its picture
    assert len(verify.probe_views(cache, str(source))) == 1  # a plain photo has no picture inside
    top = result.results[0]
    assert Path(top.path).name == "102200.jpg" and top.verified is not None and top.verified >= copy_at
