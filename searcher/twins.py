"""Burst shots: which of two near-identical pictures is a copy made from?

A tripod burst, or two exposures of one sky, gives a library pictures that differ only where
something moved. An edited copy of one of them (a photo of a print, a screenshot, a crop) is tied to
both by a homography with as many matches, and the CNN and the copy score rank them by chance. The
whole-frame correlation does not tell them apart either: both agree with the copy almost everywhere.

So the pair is compared with *each other* first (:func:`twin_preference`): the second is warped onto
the first by their own homography (many matches: a tripod keeps them nearly exact), and their
band-passed difference picks the pixels where the two shots differ (the top :data:`DIFFERENT_SHARE`
of the difference energy). Only there is the copy, warped onto the first by its own homography, asked
which of the two it is: a least-squares fit ``copy = a * first + b * second`` over those pixels, and
``(a - b) / (|a| + |b|)`` is +1 for the first and -1 for the second. Contrast casts, glare and
brightness scale ``a`` and ``b`` alike; the copy's blur is matched by blurring both shots to its
sharpness first; the copy is aligned once through each shot, and both alignments must agree, so the
shot the alignment was fitted on gets no advantage.

Chosen on the tune samples of the widened edits (README, "Burst shots"): at 512 pixels (not the
320-pixel working copy of :mod:`searcher.verify`, where only about half of the wrongly ordered copies
were told apart).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from searcher.decode import open_image
from searcher.verify import FeatureCache, cached_by_file, cached_features, geometric_inliers

TWIN_SIDE = 512  # longest side of a library picture's copy for the comparison
PROBE_SIDE = 640  # and of the probe's (it may be a crop or a screenshot: more pixels for the same area)
NFEATURES = 1500
RATIO = 0.8
MIN_PAIR_INLIERS = 40  # homography inliers between the two shots: fewer, and they are not a burst
MIN_PROBE_INLIERS = 15  # between the probe and each shot
PAIR_PX, PROBE_PX = 3.0, 5.0  # RANSAC thresholds (pixels at the sizes above)
MIN_TWIN_CORRELATION = 0.85  # band-passed correlation of the two shots once aligned: a burst agrees almost everywhere
MIN_OVERLAP = 0.2  # share of the first shot that the probe and the second shot must both cover
DIFFERENT_SHARE = 0.1  # the pixels where the shots differ most, where the probe is asked which it is
BAND = (1.5, 8.0)  # band-pass (Gaussian sigmas, pixels): no noise, no glare or brightness cast
BLURS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # blurs tried to match the probe's sharpness
PREFERENCE_MARGIN = 0.4  # both alignments must prefer the other shot by this much to reorder
# homography inliers between the two shots' working copies (searcher.verify) to look closer: on the tune samples
# the pairs it reordered had 46 or more (one screenshot pair 13), and 40 runs ~40 % fewer tests than 30
WORKING_INLIERS = 40
DEPTH = 3  # the first result is compared with the tied results among the next DEPTH - 1 (1: the step is off)


@dataclass
class TwinFeatures:
    """A picture's grey copy (longest side :data:`TWIN_SIDE` or :data:`PROBE_SIDE`) and its SIFT features."""

    grey: np.ndarray  # (h, w) uint8
    points: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray | None  # (n, 128) uint8 (SIFT's values are whole numbers under 256)


def twin_features(img: Image.Image, side: int = TWIN_SIDE) -> TwinFeatures:
    """``img``'s grey copy at most ``side`` pixels long (never enlarged) and its SIFT features."""
    grey = img.convert("L")
    f = min(1.0, side / max(grey.size))
    if f < 1.0:
        grey = grey.resize((max(8, round(grey.width * f)), max(8, round(grey.height * f))), Image.Resampling.BOX)
    arr = np.asarray(grey, dtype=np.uint8)
    kps, desc = cv2.SIFT_create(nfeatures=NFEATURES).detectAndCompute(arr, None)
    points = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
    descriptors = None if desc is None else np.clip(np.rint(desc), 0, 255).astype(np.uint8)
    return TwinFeatures(arr, points, descriptors)


def twin_features_of_path(path: str, side: int = TWIN_SIDE) -> TwinFeatures:
    """Decode ``path`` (EXIF orientation applied) and compute :func:`twin_features`; raises DecodeError."""
    return twin_features(open_image(path, min_side=side).image, side)


def cached_twin_features(cache: FeatureCache, path: str, side: int = TWIN_SIDE) -> TwinFeatures | None:
    """``path``'s :class:`TwinFeatures` from ``cache`` (a key that changes with the file); None if unreadable."""
    return cached_by_file(cache, path, lambda p: twin_features_of_path(p, side), f"\0twin{side}")


def _homography(src: TwinFeatures, dst: TwinFeatures, px: float) -> tuple[np.ndarray | None, np.ndarray]:
    """RANSAC homography from ``src`` to ``dst`` over ratio-test SIFT matches, and its inliers'
    points in ``dst`` ((n, 2); empty without a homography)."""
    none = (None, np.zeros((0, 2), np.float32))
    if src.descriptors is None or dst.descriptors is None or len(src.points) < 8 or len(dst.points) < 8:
        return none
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(
        src.descriptors.astype(np.float32), dst.descriptors.astype(np.float32), k=2
    )  # fmt: skip
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 12:
        return none
    s = src.points[[m.queryIdx for m in good]]
    d = dst.points[[m.trainIdx for m in good]]
    cv2.setRNGSeed(12345)  # RANSAC samples from OpenCV's RNG: same answer every run
    h, inliers = cv2.findHomography(s, d, cv2.RANSAC, px, maxIters=2000, confidence=0.995)
    if h is None or inliers is None:
        return none
    return h, d[inliers.ravel().astype(bool)]


def _hull(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The convex hull of ``points`` as a boolean mask of ``shape``: where matches show the probe's picture."""
    mask = np.zeros(shape, np.uint8)
    if len(points) >= 3:
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    return mask > 0


def _band(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), lo) - cv2.GaussianBlur(x, (0, 0), hi)


def _blurred(x: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), sigma) if sigma > 0 else x


def _fineness(x: np.ndarray, valid: np.ndarray) -> float:
    """Fine detail against coarser detail: falls as a picture is blurred."""
    fine = float((_band(x, 0.7, 1.5)[valid] ** 2).mean())
    coarse = float((_band(x, 1.5, 3.0)[valid] ** 2).mean())
    return max(fine, 1e-9) / max(coarse, 1e-9)


def _sharpness_matched(x: np.ndarray, target: float, valid: np.ndarray) -> np.ndarray:
    """``x`` blurred by the one of :data:`BLURS` that brings its fineness nearest ``target`` (a log)."""
    sigma = min(BLURS, key=lambda s: abs(np.log(_fineness(_blurred(x, s), valid)) - target))
    return _blurred(x, sigma)


def _which(probe: np.ndarray, first: np.ndarray, second: np.ndarray, valid: np.ndarray) -> float | None:
    """+1: ``probe`` is ``first``, -1: ``second`` (all three aligned in one frame; ``valid``: where all are).

    The three are brought to one sharpness first, the sharper blurred to the blurrier: a shot enlarged
    into the other's frame lacks its fine detail, and a copy (a photo of a print, a blur) lacks more;
    otherwise the shots' difference would be mostly detail, which a blurred copy lacks in both."""
    fineness = {name: np.log(_fineness(x, valid)) for name, x in (("p", probe), ("a", first), ("b", second))}
    target = min(fineness.values())
    first, second, probe = (
        _sharpness_matched(x, target, valid) if fineness[name] > target else x
        for name, x in (("a", first), ("b", second), ("p", probe))
    )
    lo, hi = BAND
    fa, fb, fp = (_band(x, lo, hi) for x in (first, second, probe))
    if np.corrcoef(fa[valid], fb[valid])[0, 1] < MIN_TWIN_CORRELATION:
        return None  # not a burst: aligned, the two shots still differ widely
    difference = fa - fb
    energy = cv2.GaussianBlur(difference * difference, (0, 0), 3.0)
    where = valid & (energy >= np.quantile(energy[valid], 1.0 - DIFFERENT_SHARE))
    coef, *_ = np.linalg.lstsq(np.stack([fa[where], fb[where]], axis=1), fp[where], rcond=None)
    a, b = float(coef[0]), float(coef[1])
    return (a - b) / (abs(a) + abs(b) + 1e-9)


def _votes(probe: TwinFeatures, first: TwinFeatures, second: TwinFeatures) -> list[float] | None:
    """The vote (+1 ``first``, -1 ``second``) of each alignment of the probe (through the first shot,
    then through the second); None: nothing can be said."""
    h_sf, pair_points = _homography(second, first, PAIR_PX)
    if h_sf is None or len(pair_points) < MIN_PAIR_INLIERS:
        return None
    h_pf, seen_in_first = _homography(probe, first, PROBE_PX)
    h_ps, seen_in_second = _homography(probe, second, PROBE_PX)
    if h_pf is None or h_ps is None or min(len(seen_in_first), len(seen_in_second)) < MIN_PROBE_INLIERS:
        return None
    height, width = first.grey.shape
    size = (width, height)
    a = first.grey.astype(np.float32)
    b = cv2.warpPerspective(second.grey.astype(np.float32), h_sf, size, flags=cv2.INTER_LINEAR)
    b_in = cv2.warpPerspective(np.ones(second.grey.shape, np.float32), h_sf, size, flags=cv2.INTER_NEAREST) > 0.5
    edge = np.ones((2 * int(BAND[1]) + 1,) * 2, np.uint8)
    # where the probe shows the picture: its matches' hull (a crop, a print on a table, a screenshot's
    # picture cover part of its canvas only), in the first shot's frame
    seen_via_second = cv2.perspectiveTransform(seen_in_second.reshape(-1, 1, 2), h_sf).reshape(-1, 2)
    votes = []
    for h_p, seen in ((h_pf, seen_in_first), (h_sf @ h_ps, seen_via_second)):  # aligned through each shot
        p = cv2.warpPerspective(probe.grey.astype(np.float32), h_p, size, flags=cv2.INTER_LINEAR)
        valid = cv2.erode((b_in & _hull(seen, (height, width))).astype(np.uint8), edge) > 0
        if valid.sum() < MIN_OVERLAP * valid.size:
            return None
        vote = _which(p, a, b, valid)
        if vote is None:
            return None
        votes.append(vote)
    return votes


def twin_preference(probe: TwinFeatures, first: TwinFeatures, second: TwinFeatures) -> float | None:
    """Whether ``probe`` is a copy of ``first`` (towards +1) or of ``second`` (towards -1): of the two
    alignments (through each shot), the one that favours ``second`` less; ``None`` when the two are not
    burst shots of one scene or the probe is not tied to both (then nothing can be said)."""
    votes = _votes(probe, first, second)
    return None if votes is None else max(votes)


def settle_twins(
    probe: str,
    paths: Sequence[str],
    order: Sequence[int],
    tied: Sequence[bool],
    cache: FeatureCache,
    turned: Sequence[bool] | None = None,
) -> list[int]:
    """``order`` (positions into ``paths``, best first) with the first result replaced by a burst twin
    of it that the probe is a copy of: among the next :data:`DEPTH` - 1 results, those ``tied`` to the
    probe (a copy, or a homography), when the first is tied too and :func:`twin_preference` prefers the
    twin by :data:`PREFERENCE_MARGIN` through both alignments. A result ``turned`` against the probe
    (a quarter, or mirrored) never replaces one that is not: the same photo stored twice, once turned,
    is no burst, and the copy lying as the probe does stays first. Unreadable files change nothing."""
    order = list(order)
    if len(order) < 2 or not tied[order[0]]:
        return order
    turns = list(turned) if turned is not None else [False] * len(paths)
    first = order[0]
    rivals = [j for j in order[1:DEPTH] if tied[j] and (turns[first] or not turns[j])]
    # a burst shares most of its frame: the working copies' features, already verified, say so cheaply
    working = cached_features(cache, paths[first])
    rivals = [
        j
        for j in rivals
        if working is not None
        and (theirs := cached_features(cache, paths[j])) is not None
        and geometric_inliers(theirs, working, WORKING_INLIERS) >= WORKING_INLIERS
    ]
    if not rivals:
        return order
    wanted = [(probe, PROBE_SIDE), (paths[first], TWIN_SIDE), *((paths[j], TWIN_SIDE) for j in rivals)]
    with ThreadPoolExecutor(max_workers=min(len(wanted), os.cpu_count() or 1, 4)) as pool:  # SIFT frees the GIL
        mine, theirs_first, *theirs_rivals = pool.map(lambda item: cached_twin_features(cache, *item), wanted)
    if mine is None or theirs_first is None:
        return order
    best, best_preference = first, -PREFERENCE_MARGIN
    for j, theirs in zip(rivals, theirs_rivals, strict=True):
        preference = twin_preference(mine, theirs_first, theirs) if theirs is not None else None
        if preference is not None and preference < best_preference:
            best, best_preference = j, preference
    if best != first:
        order.remove(best)
        order.insert(0, best)
    return order


__all__ = [
    "TwinFeatures",
    "cached_twin_features",
    "settle_twins",
    "twin_features",
    "twin_features_of_path",
    "twin_preference",
]
