"""Pair verification: is one image an edited copy of the other?

A CNN cosine cannot tell an edited copy from another shot of the same scene, so
every candidate pair found by the CNN is checked here on the pixels:

0. Pictures of the same aspect ratio are first compared as they lie (resized onto each other, and
   mirrored), as in step 3 with no transform to find: a resize, a recompression, a recolour, a blur or a
   caption settles there, without local features (a blurred copy has few); so do stickers and
   watermarks, whose covered pixels are left out (:func:`occlusion_tolerant_score`). Only what does
   not settle goes on.
1. Local features (SIFT, on a grey working copy of fixed size) of both images,
   also of the mirrored first image, so flips are handled; SIFT itself is
   rotation and scale invariant (90-degree turns, small rotations, resizes, crops).
2. Ratio-test matches, then a RANSAC *similarity* transform (rotation, uniform
   scale, translation, optional mirror). Edited copies are related by exactly
   such a transform; another shot of the same scene is not (perspective,
   parallax, moving things), and a homography is deliberately not allowed.
3. The first image is warped onto the second with that transform and the two
   are compared densely over their overlap: local normalised cross-correlation
   on a grid of cells (robust to colour changes, greyscale, recompression, blur
   and noise; a quantile ignores cells hidden by text or logos), and how much of
   the smaller picture the overlap covers (one copy contains the other, whereas
   two re-framed shots only partly overlap).

:func:`verify_pair` returns a :class:`Verification` whose ``score`` in [0, 1] is
what thresholds are calibrated on (``searcher calibrate``). Features are cached
per image by :class:`FeatureCache`, so checking many pairs costs one feature
extraction per image.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import cv2
import numpy as np
from PIL import Image

from searcher.decode import DecodeError, open_image
from searcher.frames import cut_inside, inner_box
from searcher.thumbnails import THUMB_SIDE, thumbnail_vector

WORK_SIDE = 320  # longest side of the grey working copy
NFEATURES = 400  # 600 cost a third more time on the 3k library bench for the same recall (calibrated again at 400)
RATIO = 0.8
RANSAC_PX = 3.0
MIN_INLIERS = 8
GRID = 12  # cells per side of the overlap grid
MIN_CELLS = 6  # textured cells needed for a dense verdict
MIN_CELL_VAR = 4.0  # grey-level variance below which a cell is flat (no evidence)
CELL_QUANTILE = 10  # percentile of cell correlations that counts (all parts of a copy must match)
BLUR_SIGMA = 3.0  # pixels of blur before comparing (recompression, noise and blur matter little)
LOW_RANGE = 48.0  # grey levels (0.5 to 99.5 percentile) below which a working copy is stretched to the full range
LOW_CONTRAST = 0.01  # SIFT's contrast threshold for a picture where the default (0.04) finds almost nothing
FEW_KEYPOINTS = 50  # keypoints under which a picture is detected again with LOW_CONTRAST (haze, fog, night)
# longest side of the copy SIFT runs on (points are mapped back to the working copy): SIFT doubles its input
# first, so at 320 three quarters of its time went into the doubled octave (37 -> 9 ms a picture). Keypoints
# are placed half as finely, so misfits grow (a burst shot's more than a copy's) and the threshold is lower
SIFT_SIDE = 160
FEW_COARSE = 80  # keypoints found there under which SIFT runs on the working copy itself (small or plain pictures)
FULL_FIT_PX = 0.45  # median keypoint misfit (working-copy pixels) up to which a transform gets full credit
# occlusion-tolerant comparison (occlusion_tolerant_score): what counts as a pixel the copy covered
OUTLIER_SIGMAS = 4.0
OUTLIER_FLOOR = 6.0  # grey levels
MAX_OUTLIERS = 0.25  # share of the pixels: more, and the pictures differ too widely for covered parts
COVERED_MEDIAN = 0.7  # median cell correlation a pair needs before covered parts are looked for
# a score this high settles a pair: the mirrored match and the other direction are not tried (they could
# only raise it). No verdict changes at any threshold up to this (the shipped one is 0.6718, the fallback 0.95);
# only the score of a pair already above it may be lower than the best of all four tries.
EARLY_ACCEPT = 0.95
# pictures whose aspect ratios differ by at most this are first compared as they lie (step 0)
ALIGNED_ASPECT = 0.02
# textured cells that comparison needs (a quarter of the grid): a dark or flat picture has a handful,
# and two shots of one night sky agree on them; such pairs are left to the local features
ALIGNED_MIN_CELLS = 36
# the thumbnail (16 x 16 grey levels, any aspect: searcher.thumbnails) pre-screens pairs and finds blurred copies
# thumbnails less alike than this (normalised correlation, also mirrored) are not compared as they lie:
# copies that pass there agree at 0.9 and more (a blur or a caption hardly changes a 16 x 16 thumbnail)
ALIGNED_THUMB_MIN = 0.5
# bump when the score changes (cached scores are dropped); v2: frame edges masked; v3: EARLY_ACCEPT,
# mirrored features from the plain ones; v4: pictures of one aspect ratio compared as they lie first, 400 keypoints;
# v5-v8 (one change): misfit in the original's pixels, low-range pictures stretched, low-contrast ones detected
# with a lower bar, covered parts (stickers, captions, watermarks) tolerated in pictures compared as they lie;
# v9: SIFT on a 160-pixel copy (on the working copy for pictures with under 80 keypoints there), the
# low-contrast retry only under 50 keypoints: half the time on the 3k library bench, threshold 0.67
VERIFY_VERSION = "v9"
# geometric evidence for a query's results (:func:`geometric_inliers`): the RANSAC reprojection error
# (working-copy pixels) of a homography between two pictures' SIFT matches
HOMOGRAPHY_PX = 5.0
HOMOGRAPHY_ITERS = 2000

cv2.setNumThreads(1)


@dataclass
class _Side:
    points: np.ndarray  # (n, 2) float32 keypoint coordinates in the working image
    descriptors: np.ndarray | None  # (n, 128) uint8: SIFT's values are whole numbers under 256 (exact, 1/4 the memory)
    step: float = 1.0  # working-copy pixels per pixel of the copy SIFT ran on


class Features:
    """What verification needs of one image: its grey working copy and local features.

    The local features (SIFT, most of the cost: about 10 ms an image) are extracted on first use, so an
    image whose pairs all settle as they lie (step 0) never pays for them; those of the mirrored picture
    (for flipped copies) are derived from them on first use. Kept small (about 160 KB for a 320-pixel
    working copy, about 480 KB with the cells of step 0) so a library's features fit in memory. Thread-safe.
    """

    def __init__(self, grey: np.ndarray, upscale: float = 1.0) -> None:
        self._grey = np.asarray(grey, dtype=np.uint8)  # (h, w) grey levels
        self.upscale = max(1.0, float(upscale))  # working copy / original size, when the original was smaller
        self._plain: _Side | None = None
        self._mirrored: _Side | None = None
        self._lock = threading.Lock()
        self._cells: dict[int, _Cells | None] = {}
        self._thumb = thumbnail_vector(self._grey)

    def cells(self, mirrored: bool) -> _Cells | None:
        """The working copy (mirrored or not) prepared for comparisons as it lies with pictures of its own
        size (:func:`aligned_check`): blurred, masked, split into cells (computed once per image)."""
        key = int(mirrored)
        if key not in self._cells:
            grey = np.ascontiguousarray(self.grey[:, ::-1]) if mirrored else self.grey
            self._cells[key] = _Cells.of(grey)
        return self._cells[key]

    @property
    def thumb(self) -> np.ndarray | None:
        """The picture as a 16 x 16 grey thumbnail, zero mean and unit norm (256 values; None if flat):
        the dot product of two is their normalised correlation."""
        return self._thumb

    @property
    def plain(self) -> _Side:
        """SIFT keypoints and descriptors of the working copy (extracted on first use)."""
        if self._plain is None:
            with self._lock:
                if self._plain is None:
                    self._plain = _detect(self._grey)
        return self._plain

    def side(self, mirrored: bool) -> _Side:
        return self.mirrored if mirrored else self.plain

    @property
    def grey(self) -> np.ndarray:
        """The grey working copy, (h, w) float32 in [0, 255]."""
        return self._grey.astype(np.float32)

    @property
    def mirrored(self) -> _Side:
        """The features of the left-right mirrored picture, from the plain ones (:func:`_mirror`)."""
        if self._mirrored is None:
            self._mirrored = _mirror(self.plain, self._grey.shape[1])
        return self._mirrored

    @property
    def shape(self) -> tuple[int, int]:
        return self._grey.shape  # type: ignore[return-value]


@dataclass
class Verification:
    """The verdict on one pair; ``score`` is the calibrated quantity."""

    score: float
    inliers: int = 0
    matches: int = 0
    correlation: float = 0.0
    containment: float = 0.0
    scale: float = 0.0
    angle: float = 0.0
    mirrored: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 4), "inliers": self.inliers, "matches": self.matches,
            "correlation": round(self.correlation, 4), "containment": round(self.containment, 4),
            "scale": round(self.scale, 4), "angle": round(self.angle, 2), "mirrored": self.mirrored, **self.details,
        }  # fmt: skip


_sift_local = threading.local()


def _sift(low_contrast: bool = False) -> cv2.SIFT:
    name = "low" if low_contrast else "sift"
    sift = getattr(_sift_local, name, None)
    if sift is None:
        sift = cv2.SIFT_create(nfeatures=NFEATURES, contrastThreshold=LOW_CONTRAST if low_contrast else 0.04)
        setattr(_sift_local, name, sift)
    return sift


def working_grey(img: Image.Image, side: int = WORK_SIDE) -> np.ndarray:
    """Luminance resized so the longest side is ``side`` (aspect kept), float32; a picture whose grey
    levels span less than :data:`LOW_RANGE` (a night sky, say) is stretched to the full range first, or
    its cells would all look flat and its copies could not be told from other pictures."""
    grey = img.convert("L")
    w, h = grey.size
    f = side / max(w, h)
    size = (max(8, round(w * f)), max(8, round(h * f)))
    if size != grey.size:
        grey = grey.resize(size, Image.Resampling.BILINEAR if f > 1 else Image.Resampling.BOX)
    out = np.asarray(grey, dtype=np.float32)
    lo, hi = np.percentile(out, (0.5, 99.5))
    if 1.0 <= hi - lo < LOW_RANGE:
        out = np.clip((out - lo) * (255.0 / (hi - lo)), 0.0, 255.0).astype(np.float32)
    return out


def _detect(grey: np.ndarray) -> _Side:
    """SIFT keypoints and descriptors of the working copy ``grey``, in its pixels.

    Detected on a :data:`SIFT_SIDE` copy; a picture with under :data:`FEW_COARSE` keypoints there (little
    texture, or small) on the working copy itself, and one with under :data:`FEW_KEYPOINTS` even so
    (haze, fog, night) again with SIFT's contrast bar lowered."""
    full = grey.astype(np.uint8)
    h, w = full.shape
    image, step = full, 1.0
    if max(h, w) > SIFT_SIDE:
        f = SIFT_SIDE / max(h, w)
        image = cv2.resize(full, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
        step = w / image.shape[1]
    kps, desc = _sift().detectAndCompute(image, None)
    if len(kps) < FEW_COARSE and step > 1.0:
        image, step = full, 1.0
        kps, desc = _sift().detectAndCompute(image, None)
    if len(kps) < FEW_KEYPOINTS:
        kps, desc = _sift(low_contrast=True).detectAndCompute(image, None)
    pts = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
    pts = (pts + 0.5) * step - 0.5  # pixel centres of the SIFT copy -> the working copy's
    return _Side(pts, None if desc is None else np.clip(np.rint(desc), 0, 255).astype(np.uint8), step)


# SIFT's descriptor is a 4 x 4 grid of 8-bin orientation histograms in the keypoint's own frame, stored
# row-major as (row, column, bin). Mirroring the picture left-right mirrors that frame: rows swap ends
# (the frame turns the other way) and each gradient angle a becomes -a (bin o -> (8 - o) mod 8).
_MIRROR_BINS = np.array([((3 - r) * 4 + c) * 8 + (8 - o) % 8 for r in range(4) for c in range(4) for o in range(8)])


def _mirror(side: _Side, width: int) -> _Side:
    """The features SIFT finds in the mirrored picture, without detecting again: the same keypoints
    mirrored, descriptors with their bins permuted. On the shared photos 95-97 % of the keypoints match
    those of a fresh detection on the mirrored picture at the same place (within half a pixel)."""
    points = side.points.copy()
    # x -> w - 1 - x in SIFT's copy, plus the half pixel of SIFT's own upsampling, in working-copy pixels
    points[:, 0] = (width - 1.0 + side.step / 2) - points[:, 0]
    desc = None if side.descriptors is None else np.ascontiguousarray(side.descriptors[:, _MIRROR_BINS])
    return _Side(points, desc, side.step)


def single_threaded_blas() -> contextlib.AbstractContextManager[object]:
    """Keep numpy's BLAS on one thread while verifying (callers run pairs on threads of their own).

    Descriptor distances are one small matrix product per pair; OpenBLAS starting its own threads for
    each, on top of the callers', made a product 15-60 ms instead of 3 ms on a loaded 2-core machine.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def features_of_image(img: Image.Image, original_side: int | None = None) -> Features:
    """``original_side``: the longest side of the original, when ``img`` was decoded smaller."""
    grey = working_grey(img)
    return Features(grey, upscale=max(grey.shape) / (original_side or max(img.size)))


def features_of_path(path: str | os.PathLike[str]) -> Features:
    """Decode ``path`` (EXIF orientation applied) and extract features; raises DecodeError."""
    decoded = open_image(path, min_side=WORK_SIDE)
    return features_of_image(decoded.image, max(decoded.width, decoded.height))


INNER_DETECT_SIDE = 320  # longest side of the copy the picture inside a frame is looked for on


def inner_features_of_path(path: str | os.PathLike[str]) -> Features | None:
    """Features of the picture inside ``path``'s frame (a screenshot's picture, a photo in a solid
    frame or letterbox, a photographed print cut out straight: :func:`searcher.frames.inner_box`,
    looked for on a copy whose longest side is :data:`INNER_DETECT_SIDE`), cut from the decoded
    original; ``None`` when it has no frame. Raises DecodeError."""
    decoded = open_image(path, min_side=WORK_SIDE)
    img = decoded.image
    f = INNER_DETECT_SIDE / max(img.size)
    small = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BILINEAR)
    found = inner_box(np.asarray(small, dtype=np.uint8))
    if found is None:
        return None
    crop = cut_inside(img, found[0])
    return features_of_image(crop, round(max(crop.size) * decoded.width / img.width))


# one image's Features at WORK_SIDE 320: grey copy + 600 descriptors (uint8) + points + cells (float32)
FEATURE_BYTES = 480_000


def feature_cache_capacity(wanted: int, memory_share: float = 0.25) -> int:
    """How many images' features to keep: ``wanted`` if they fit in ``memory_share`` of the memory
    available now (at least 4,096)."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 4 << 30
    return max(4096, min(wanted, int(available * memory_share / FEATURE_BYTES)))


_T = TypeVar("_T")


class FeatureCache:
    """An LRU cache of :class:`Features` by key (a path or content hash); thread-safe. Other per-image
    features (:mod:`searcher.twins`) share it under keys of their own, computed by their own ``compute``."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, key: str, path: str | None = None, compute: Callable[[str], _T | None] = features_of_path
    ) -> _T | None:
        """Features of ``key``, computed from ``path`` (default: the key) on a miss by ``compute``
        (default :func:`features_of_path`); None if undecodable (or if ``compute`` says None)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            feats = compute(path or key)
        except (DecodeError, OSError, cv2.error):
            feats = None
        with self._lock:
            self._items[key] = feats
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return feats

    def put(self, key: str, feats: Features) -> None:
        with self._lock:
            self._items[key] = feats


def _distances(a: _Side, b: _Side) -> np.ndarray:
    """(len(a), len(b)) Euclidean distances between the descriptors, by one matrix product (BLAS)."""
    assert a.descriptors is not None and b.descriptors is not None
    da, db = a.descriptors.astype(np.float32), b.descriptors.astype(np.float32)
    sq = (da * da).sum(axis=1)[:, None] + (db * db).sum(axis=1)[None, :] - 2.0 * (da @ db.T)
    return np.sqrt(np.maximum(sq, 0.0, out=sq), out=sq)


def _match(a: _Side, b: _Side, dist: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test matches from ``a`` to ``b`` (each ``b`` point used once, first come first served).

    ``dist``: the distance matrix of ``a`` to ``b`` when the caller has it (``_distances(b, a).T`` serves
    the other direction: one product for both). The same matches as OpenCV's brute-force 2-NN.
    """
    if a.descriptors is None or b.descriptors is None or len(a.points) < 2 or len(b.points) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    d = np.array(_distances(a, b) if dist is None else dist, dtype=np.float32, order="C")  # a copy: changed below
    rows = np.arange(len(d))
    best = d.argmin(axis=1)  # the nearest (ties: the lower index, as OpenCV)
    first = d[rows, best]
    d[rows, best] = np.inf
    second = d.min(axis=1)  # the second nearest
    ok = np.flatnonzero(first < RATIO * second)
    _, once = np.unique(best[ok], return_index=True)  # first query (in order) to claim each train point
    ok = ok[np.sort(once)]
    return a.points[ok].astype(np.float32), b.points[best[ok]].astype(np.float32)


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray | None, int, float]:
    """RANSAC similarity (4 dof) from ``src`` to ``dst``: (matrix, inliers, median inlier misfit in px)."""
    if len(src) < MIN_INLIERS:
        return None, 0, 0.0
    cv2.setRNGSeed(12345)  # RANSAC samples from OpenCV's RNG: fixed seed, same answer every run
    m, inl = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX, maxIters=2000, confidence=0.995, refineIters=10
    )
    if m is None or inl is None or int(inl.sum()) < MIN_INLIERS:
        return None, 0, 0.0
    keep = inl.ravel().astype(bool)
    misfit = np.linalg.norm(src[keep] @ m[:, :2].T + m[:, 2] - dst[keep], axis=1)
    return m, int(keep.sum()), float(np.median(misfit))


def cell_correlations(a: np.ndarray, b: np.ndarray, mask: np.ndarray, grid: int = GRID) -> np.ndarray:
    """NCC of ``a`` and ``b`` in each cell of a ``grid`` x ``grid`` split of ``mask``'s bounding box.

    Only cells that lie (90 %) inside the mask and are textured in both images count.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) < 64:
        return np.zeros(0, np.float32)
    y0, x0 = ys.min(), xs.min()
    ch, cw = (ys.max() + 1 - y0) // grid, (xs.max() + 1 - x0) // grid
    if ch < 3 or cw < 3:
        return np.zeros(0, np.float32)
    sl = (slice(y0, y0 + grid * ch), slice(x0, x0 + grid * cw))

    def cells(x: np.ndarray) -> np.ndarray:
        return x.reshape(grid, ch, grid, cw).sum(axis=(1, 3), dtype=np.float64)

    m = mask[sl].astype(np.float64)
    pa, pb = a[sl].astype(np.float64) * m, b[sl].astype(np.float64) * m
    n = cells(m)
    ok = n >= 0.9 * ch * cw
    n = np.maximum(n, 1.0)
    sa, sb = cells(pa) / n, cells(pb) / n
    va = cells(pa * pa) / n - sa * sa
    vb = cells(pb * pb) / n - sb * sb
    cov = cells(pa * pb) / n - sa * sb
    ok &= (va >= MIN_CELL_VAR) & (vb >= MIN_CELL_VAR)
    return (cov[ok] / np.sqrt(va[ok] * vb[ok])).astype(np.float32)


def cell_score(ncc: np.ndarray) -> float:
    """The correlation that counts, from the per-cell correlations of an aligned pair: a low quantile
    (every part of a copy must match, not just most of it)."""
    return float(np.clip(np.percentile(ncc, CELL_QUANTILE), 0.0, 1.0))


def occlusion_tolerant_score(a: np.ndarray, b: np.ndarray, grid: int = GRID) -> float:
    """:func:`cell_score` with the pixels a sticker, a caption or a watermark covers left out.

    ``a`` and ``b``: aligned, blurred grey levels of one size, a multiple of ``grid`` on each side. Each
    cell's grey levels of ``b`` are fitted as a linear function of ``a``'s; pixels the fit misses by more
    than :data:`OUTLIER_SIGMAS` robust deviations (or :data:`OUTLIER_FLOOR` grey levels) are outliers, the
    fit is redone without them, and cells keep their correlation over their inliers (cells mostly
    outliers are dropped). The quantile of those is scaled by the inlier share, and none of it counts
    when more than :data:`MAX_OUTLIERS` of the pixels are outliers: another shot of the scene, aligned,
    differs everywhere (parallax, moving things), not in a few added shapes.
    """
    h, w = a.shape
    ch, cw = h // grid, w // grid

    def sums(x: np.ndarray) -> np.ndarray:
        return x.reshape(grid, ch, grid, cw).sum(axis=(1, 3), dtype=np.float64)

    def spread(c: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(c.astype(np.float32), ch, 0), cw, 1)

    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    weight = np.ones_like(a32)
    for fit in (True, False):
        n = np.maximum(sums(weight), 1.0)
        ma, mb = sums(a32 * weight) / n, sums(b32 * weight) / n
        va = sums(a32 * a32 * weight) / n - ma * ma
        vb = sums(b32 * b32 * weight) / n - mb * mb
        cov = sums(a32 * b32 * weight) / n - ma * mb
        if not fit:
            break
        slope = np.clip(cov / np.maximum(va, 1e-6), 0.0, 8.0)
        miss = np.abs(b - (spread(slope) * a + spread(mb - slope * ma)))
        sigma = 1.4826 * float(np.median(miss))
        weight = (miss <= max(OUTLIER_SIGMAS * sigma, OUTLIER_FLOOR)).astype(np.float32)
    outliers = 1.0 - float(weight.mean())
    ok = (sums(weight) >= 0.5 * ch * cw) & (va >= MIN_CELL_VAR) & (vb >= MIN_CELL_VAR)
    if outliers > MAX_OUTLIERS or int(ok.sum()) < MIN_CELLS:
        return 0.0
    return cell_score(cov[ok] / np.sqrt(va[ok] * vb[ok])) * (1.0 - outliers)


def _scale(m: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


def _invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def _dense_check(ga: np.ndarray, gb: np.ndarray, m: np.ndarray) -> tuple[float, float, int]:
    """Warp ``ga`` onto ``gb`` with ``m`` and compare: (correlation, containment, textured cells)."""
    hb, wb = gb.shape
    s = _scale(m)
    # blur before warping (sigma scaled so it is BLUR_SIGMA after), reflecting at the edges, so no
    # black from outside the picture bleeds into the compared area
    blurred = cv2.GaussianBlur(ga, (0, 0), BLUR_SIGMA / s, borderType=cv2.BORDER_REFLECT)
    wa = cv2.warpAffine(blurred, m, (wb, hb), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    support = cv2.warpAffine(np.ones_like(ga), m, (wb, hb), flags=cv2.INTER_NEAREST) > 0.5
    overlap = float(support.sum())
    containment = min(1.0, overlap / max(1.0, min(float(ga.size) * s * s, float(gb.size))))
    edge = 2 * int(np.ceil(2 * BLUR_SIGMA)) + 1  # blur reaches this far across the picture edge
    # away from the edges of the warped picture AND of the frame: blur mixes whatever lies beyond a
    # picture's edge (a copy's added border, say) into the pixels just inside it
    mask = cv2.erode(
        support.astype(np.uint8), np.ones((edge, edge), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0
    ).astype(bool)
    wbb = cv2.GaussianBlur(gb, (0, 0), BLUR_SIGMA, borderType=cv2.BORDER_REFLECT)
    ncc = cell_correlations(wa, wbb, mask)
    if len(ncc) < MIN_CELLS:
        return 0.0, containment, len(ncc)
    return cell_score(ncc), containment, len(ncc)


@dataclass
class _Cells:
    """One picture's half of :func:`cell_correlations` against any picture of the same size compared as it
    lies (no warp): the blurred grey levels inside the mask over the grid, and the per-cell statistics."""

    values: np.ndarray  # (grid * ch, grid * cw) float32: blurred grey levels, 0 outside the mask
    count: np.ndarray  # (grid, grid) pixels of each cell inside the mask
    mean: np.ndarray  # (grid, grid) float64
    var: np.ndarray  # (grid, grid) float64
    ok: np.ndarray  # (grid, grid) bool: inside the mask and textured

    @staticmethod
    def of(grey: np.ndarray, grid: int = GRID) -> _Cells | None:
        """As :func:`_dense_check` prepares a picture for the identity transform (blur, mask, cells)."""
        edge = 2 * int(np.ceil(2 * BLUR_SIGMA)) + 1
        support = np.ones(grey.shape, np.uint8)
        mask = cv2.erode(support, np.ones((edge, edge), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        ys, xs = np.nonzero(mask)
        if len(ys) < 64:
            return None
        y0, x0 = ys.min(), xs.min()
        ch, cw = (ys.max() + 1 - y0) // grid, (xs.max() + 1 - x0) // grid
        if ch < 3 or cw < 3:
            return None
        sl = (slice(y0, y0 + grid * ch), slice(x0, x0 + grid * cw))
        blurred = cv2.GaussianBlur(grey, (0, 0), BLUR_SIGMA, borderType=cv2.BORDER_REFLECT)
        m = mask[sl].astype(np.float32)
        values = blurred[sl].astype(np.float32) * m
        n = _cell_sums(m, grid)
        ok = n >= 0.9 * ch * cw
        n = np.maximum(n, 1.0)
        mean = _cell_sums(values, grid) / n
        var = _cell_sums(values * values, grid) / n - mean * mean
        return _Cells(values, n, mean, var, ok & (var >= MIN_CELL_VAR))

    def correlations(self, other: _Cells) -> np.ndarray:
        """Per-cell NCC with ``other`` (a picture of the same size) where both are textured."""
        grid = self.count.shape[0]
        cov = _cell_sums(self.values * other.values, grid) / self.count - self.mean * other.mean
        ok = self.ok & other.ok
        return (cov[ok] / np.sqrt(self.var[ok] * other.var[ok])).astype(np.float32)


def _cell_sums(x: np.ndarray, grid: int) -> np.ndarray:
    h, w = x.shape
    return x.reshape(grid, h // grid, grid, w // grid).sum(axis=(1, 3), dtype=np.float64)


def _aligned_same_size(fa: Features, fb: Features, mirrored: bool) -> tuple[float, float, int]:
    """:func:`_dense_check` for two pictures of one size compared as they lie, from cached cells."""
    ca, cb = fa.cells(mirrored), fb.cells(False)
    if ca is None or cb is None:
        return 0.0, 1.0, 0
    ncc = ca.correlations(cb)
    if len(ncc) < MIN_CELLS:
        return 0.0, 1.0, len(ncc)
    corr = cell_score(ncc)
    # only as they lie (a transform fitted to a burst shot lines up all but what moved), and only where most
    # cells already agree: a copy with covered parts (cheap to rule out for the many pairs that differ)
    if corr < EARLY_ACCEPT and float(np.median(ncc)) >= COVERED_MEDIAN:
        corr = max(corr, occlusion_tolerant_score(ca.values, cb.values))
    return corr, 1.0, len(ncc)


def aligned_check(fa: Features, fb: Features) -> Verification | None:
    """Step 0: ``fa`` resized onto ``fb`` as it lies (and mirrored), compared densely; None when the
    aspect ratios differ (a crop, a border, a turn: left to the local features).

    The score is :func:`combine`'s with a perfect fit (nothing was estimated); it needs
    :data:`ALIGNED_MIN_CELLS` textured cells, else it is 0.
    """
    (ha, wa), (hb, wb) = fa.shape, fb.shape
    sx, sy = wb / wa, hb / ha
    if abs(sx / sy - 1.0) > ALIGNED_ASPECT:
        return None
    m = np.array([[sx, 0.0, (sx - 1.0) / 2], [0.0, sy, (sy - 1.0) / 2]], np.float32)  # pixel centres onto centres
    best = Verification(0.0, details={"aligned": True, "cells": 0})
    ta, tb = fa.thumb, fb.thumb
    if ta is None or tb is None:
        return best
    alike = {False: float(ta @ tb), True: float(ta.reshape(THUMB_SIDE, THUMB_SIDE)[:, ::-1].ravel() @ tb)}
    for mirrored in (False, True):
        if alike[mirrored] < ALIGNED_THUMB_MIN:
            continue
        if fa.shape == fb.shape:  # the common case (both resized to the working size): cells cached per image
            corr, containment, cells = _aligned_same_size(fa, fb, mirrored)
        else:
            ga = np.ascontiguousarray(fa.grey[:, ::-1]) if mirrored else fa.grey
            if _scale(m) >= 1:
                corr, containment, cells = _dense_check(ga, fb.grey, m)
            else:
                corr, containment, cells = _dense_check(fb.grey, ga, _invert(m))
        score = combine(corr, containment, 0.0) if cells >= ALIGNED_MIN_CELLS else 0.0
        if score > best.score:
            best = Verification(
                score, 0, 0, corr, containment, _scale(m), 0.0, mirrored, {"aligned": True, "cells": cells}
            )
        if score >= EARLY_ACCEPT:
            break
    return best


def verify_features(fa: Features, fb: Features, plain_dist: np.ndarray | None = None) -> Verification:
    """Verify two images given their features (see the module docstring); symmetric up to ties.

    ``plain_dist``: the descriptor distances of ``fa.plain`` to ``fb.plain`` if already computed."""
    best = Verification(0.0)
    for mirrored in (False, True):
        side_a = fa.side(mirrored)
        src, dst = _match(side_a, fb.plain, None if mirrored else plain_dist)
        m, inliers, residual = _similarity(src, dst)
        if m is None:
            best.matches = max(best.matches, len(src))
            continue
        s = _scale(m)
        if not (1 / 10 < s < 10):
            continue
        ga = np.ascontiguousarray(fa.grey[:, ::-1]) if mirrored else fa.grey
        # compare in the frame where the content is larger: detail a copy lacks shows there
        if s >= 1:
            corr, containment, cells = _dense_check(ga, fb.grey, m)
        else:
            corr, containment, cells = _dense_check(fb.grey, ga, _invert(m))
            residual /= s  # misfit in the frame compared
        # keypoints are placed to a fraction of a pixel of the original: a small picture enlarged to the
        # working size has its misfit enlarged with it (a 150-pixel copy: twice the misfit of its original)
        residual /= max(fa.upscale, fb.upscale)
        score = combine(corr, containment, residual)
        if score > best.score or best.inliers == 0:
            angle = float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
            best = Verification(
                score, inliers, len(src), corr, containment, s, angle, mirrored,
                {"residual_px": round(residual, 3), "cells": cells},
            )  # fmt: skip
        if score >= EARLY_ACCEPT:
            break
    return best


def combine(correlation: float, containment: float, residual_px: float) -> float:
    """The verified score in [0, 1].

    ``correlation``: a low quantile of the per-cell correlations after alignment (every part
    of a copy matches, not just most of it). ``containment``: how much of the smaller picture
    the overlap covers; an edited copy lies inside the other's frame (about 1), two re-framed
    shots only partly overlap, so this ramps from 0 at 0.90 to 1 at 0.95. ``residual_px``: the
    median keypoint misfit of the similarity transform; copies fit to a fraction of a pixel,
    other shots (parallax, lens distortion, moving things) fit worse: full credit up to
    0.45 px, half credit from 0.95 px.
    """
    cont = float(np.clip((containment - 0.90) / 0.05, 0.0, 1.0))
    fit = float(np.clip(1.0 - (residual_px - FULL_FIT_PX), 0.5, 1.0))
    return float(correlation * cont * fit)


def verify_pair(a: str | os.PathLike[str] | Image.Image, b: str | os.PathLike[str] | Image.Image) -> Verification:
    """Verify two images given as paths or PIL images (symmetrised: the better direction counts)."""
    fa = features_of_image(a) if isinstance(a, Image.Image) else features_of_path(a)
    fb = features_of_image(b) if isinstance(b, Image.Image) else features_of_path(b)
    return verify_symmetric(fa, fb)


def verify_symmetric(fa: Features, fb: Features, settle_at: float = EARLY_ACCEPT) -> Verification:
    """Match both ways (A to B and B to A) and keep the better verdict: the order of a pair does not matter.

    First the pictures are compared as they lie (:func:`aligned_check`); a score of at least ``settle_at``
    there is final (a caller that only needs the verdict at its threshold passes the threshold: no
    local features are extracted for such pairs, and the score it gets may be below the best of all
    tries, never above). Otherwise the better of that and the local-feature verdicts counts.
    A verdict of at least :data:`EARLY_ACCEPT` one way is final. When A to B finds no transform at all
    (plain or mirrored), B to A is not tried: on 600 CNN-neighbour pairs of the shared photos, 547 found
    none one way and the other way never found one either, and skipping it halves the cost of the common
    case (two different pictures). Descriptor distances of the two plain sides are computed once, for
    both directions.
    """
    aligned = aligned_check(fa, fb)
    if aligned is not None and aligned.score >= min(settle_at, EARLY_ACCEPT):
        return aligned
    ok = all(f.plain.descriptors is not None and len(f.plain.points) >= 2 for f in (fa, fb))
    dist = _distances(fa.plain, fb.plain) if ok else None
    best = verify_features(fa, fb, dist)
    if best.score < EARLY_ACCEPT and best.inliers > 0:
        two = verify_features(fb, fa, None if dist is None else dist.T)
        best = two if two.score > best.score else best
    return aligned if aligned is not None and aligned.score > best.score else best


def geometric_inliers(fa: Features, fb: Features, min_matches: int = MIN_INLIERS) -> int:
    """Matches that one RANSAC homography explains (the better of ``fa`` as it is and mirrored):
    evidence that two pictures show the same flat or distant thing, which the copy score refuses
    on purpose: a photo of a print or of a screen, another shot of one facade. Two unrelated
    pictures have a handful by chance (0-7 on Flowers-17 and Holidays), a photo of a print 17-140.
    With fewer than ``min_matches`` matches no homography is fitted (0): a caller that only needs
    to know whether the count reaches a bar passes the bar and saves the fit for most pairs."""
    best = 0
    for mirrored in (False, True):
        src, dst = _match(fa.side(mirrored), fb.plain)
        if len(src) < max(MIN_INLIERS, min_matches):
            continue
        cv2.setRNGSeed(12345)  # RANSAC samples from OpenCV's RNG: fixed seed, same answer every run
        h, inliers = cv2.findHomography(
            src, dst, cv2.RANSAC, HOMOGRAPHY_PX, maxIters=HOMOGRAPHY_ITERS, confidence=0.995
        )  # fmt: skip
        if h is not None and inliers is not None:
            best = max(best, int(inliers.sum()))
    return best


def cached_by_file(
    cache: FeatureCache, path: str, compute: Callable[[str], _T | None] = features_of_path, tag: str = ""
) -> _T | None:
    """``compute(path)`` from ``cache``, under a key that changes with the file (size, mtime) and names
    what was computed (``tag``); ``None`` when the file is gone or cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return cache.get(f"{path}\0{st.st_size}\0{st.st_mtime_ns}{tag}", path, compute)


def cached_features(cache: FeatureCache, path: str) -> Features | None:
    """``path``'s features from ``cache`` (:func:`cached_by_file`)."""
    return cached_by_file(cache, path)


def cached_inner_features(cache: FeatureCache, path: str) -> Features | None:
    """The features of the picture inside ``path``'s frame (:func:`inner_features_of_path`) from
    ``cache``; ``None`` when it has no frame or cannot be read."""
    return cached_by_file(cache, path, inner_features_of_path, "\0inner")


def probe_views(cache: FeatureCache, probe: str, inside: bool = True) -> list[Features]:
    """What a query verifies against: the probe's features, and with ``inside`` those of the
    picture inside its frame when it has one (a screenshot: its picture fills a fifth of the
    screen, too little of the whole for the copy score); empty when the probe cannot be read."""
    mine = cached_features(cache, probe)
    if mine is None:
        return []
    inner = cached_inner_features(cache, probe) if inside else None
    return [mine] if inner is None else [mine, inner]


class Evidence(NamedTuple):
    """What verification says of one result of a query (:func:`verified_evidence`)."""

    score: float  # the verified (copy) score
    inliers: int  # homography inliers (:func:`geometric_inliers`), counted only for results that are not copies
    turned: bool = False  # the best verdict turned the picture a quarter or more, or mirrored it


def verified_evidence(
    probe: str,
    candidates: Sequence[str],
    cache: FeatureCache,
    copy_at: float = 1.0,
    min_matches: int = MIN_INLIERS,
    workers: int | None = None,
    inside: bool = False,
) -> list[Evidence]:
    """(verified score, :func:`geometric_inliers`, turned) of each candidate file against ``probe``; the
    inliers are counted only where the score is under ``copy_at`` (a copy needs no more evidence,
    and a pair settled as it lies has no local features to count with) and there are at least
    ``min_matches`` matches. ``(0.0, 0)`` where either file cannot be read. ``inside``: the picture
    inside the probe's frame is verified too and the better evidence counts (:func:`probe_views`).
    ``workers``: threads (default: one per core, at most 8)."""
    views = probe_views(cache, probe, inside)
    if not views:
        return [Evidence(0.0, 0)] * len(candidates)

    def evidence(path: str) -> Evidence:
        theirs = cached_features(cache, path)
        if theirs is None:
            return Evidence(0.0, 0)
        best, inliers = Evidence(0.0, 0), 0
        for view in views:
            verdict = verify_symmetric(view, theirs)
            if verdict.score > best.score:
                best = Evidence(verdict.score, 0, verdict.mirrored or abs(verdict.angle) > 45)
            if best.score >= copy_at:
                return best
            inliers = max(inliers, geometric_inliers(view, theirs, min_matches))
        return best._replace(inliers=inliers)

    workers = min(len(candidates), workers or os.cpu_count() or 1, 8)
    if workers <= 1:
        return [evidence(path) for path in candidates]
    # decoding, SIFT and the matrix products release the GIL: the results are verified on every core
    from concurrent.futures import ThreadPoolExecutor

    with single_threaded_blas(), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(evidence, candidates))


def verified_scores(probe: str, candidates: Sequence[str], cache: FeatureCache) -> list[float]:
    """The verified score of each candidate file against ``probe`` (0 where either cannot be read:
    a broken or vanished file is simply not a copy). Features come from, and stay in, ``cache``."""
    mine = cache.get(probe)
    if mine is None:
        return [0.0] * len(candidates)
    scores = []
    for path in candidates:
        theirs = cache.get(path)
        scores.append(verify_symmetric(mine, theirs).score if theirs is not None else 0.0)
    return scores
