"""Regional descriptors: vectors of square parts of a picture, from the same forward pass.

The backbone's last feature map (:meth:`searcher.embed.Embedder.feature_maps`, 7 x 7 cells for a
224-pixel input) is pooled over a few square windows (R-MAC style, Tolias et al. 2016) instead of
only over the whole map. Each window's average is L2-normalised, so it lives in the same space as
the global vectors (which are the average of the whole map) and the two can be compared directly:

- a **crop** of an indexed picture (the probe) looks like one of that picture's regions: search the
  probe's global vector against the regions of the library;
- a **picture inside a screenshot frame** (the probe) is one of the probe's regions: search the
  probe's regions against the library's global vectors.

An image's regional score is the best of its matches (:func:`regional_scores`); it is merged with
the global ranking with a handicap (:func:`merge_regional`), so a region beats the whole picture
only when it is clearly closer.

Region ids in a FAISS index are ``image_id * REGION_SLOTS + region`` (:func:`region_ids`), so the
image of a region is an integer division away and nothing else needs storing.

What the product uses: the default query (the ``instance`` preset's ``regional_margin``) searches a
new probe's regions against the library's global vectors (:func:`searcher.querying.search_probes`),
which costs nothing at index time. Libraries do not store region vectors: on the tuning data they
added nothing over regional probes for 13x the storage (README, "Retrieval quality";
``scripts/regions_eval.py`` measures both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from searcher.rerank import Ranked, l2_normalise

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]

REGION_SLOTS = 64  # region ids per image in a region index (more than any grid here has)

# (side as a fraction of the map's short side, windows along each axis): 4 windows of 6/7 of the
# map and 9 of 5/7 for a 7 x 7 map, 13 in all; crops keeping 40-90% of the area fall between them.
DEFAULT_GRID: tuple[tuple[float, int], ...] = ((0.85, 2), (0.7, 3))


@dataclass(frozen=True)
class RegionSettings:
    """How regions are cut and how much a regional match is handicapped against a global one."""

    grid: tuple[tuple[float, int], ...] = DEFAULT_GRID
    margin: float = 0.05  # a regional match must beat the global score by this much
    depth: int = 100  # regions fetched per probe vector


def region_boxes(
    height: int, width: int, grid: Sequence[tuple[float, int]] = DEFAULT_GRID
) -> list[tuple[int, int, int, int]]:
    """Square windows ``(top, bottom, left, right)`` (cells, end exclusive) of a ``height x width``
    feature map: for each ``(fraction, count)`` of ``grid``, windows of side ``fraction`` of the
    short side, ``count`` positions evenly spaced along each axis (duplicates dropped)."""
    boxes: list[tuple[int, int, int, int]] = []
    short = min(height, width)
    for fraction, count in grid:
        side = max(1, min(short, round(fraction * short)))
        tops = np.unique(np.round(np.linspace(0, height - side, max(1, count))).astype(int))
        lefts = np.unique(np.round(np.linspace(0, width - side, max(1, count))).astype(int))
        for top in tops:
            for left in lefts:
                box = (int(top), int(top) + side, int(left), int(left) + side)
                if box not in boxes and box != (0, height, 0, width):
                    boxes.append(box)
    return boxes


def region_vectors(fmaps: np.ndarray, grid: Sequence[tuple[float, int]] = DEFAULT_GRID) -> np.ndarray:
    """(n, h, w, c) feature maps -> (n, regions, c) L2-normalised averages of each window of
    :func:`region_boxes` (the same pooling as the global ``avg`` vectors)."""
    fmaps = np.asarray(fmaps, np.float32)
    n, h, w, c = fmaps.shape
    boxes = region_boxes(h, w, grid)
    # integral image: any window's sum in four look-ups
    integral = np.zeros((n, h + 1, w + 1, c), np.float32)
    integral[:, 1:, 1:] = fmaps.cumsum(1).cumsum(2)
    out = np.empty((n, len(boxes), c), np.float32)
    for r, (t, b, left, right) in enumerate(boxes):
        out[:, r] = integral[:, b, right] - integral[:, t, right] - integral[:, b, left] + integral[:, t, left]
    return l2_normalise(out.reshape(-1, c)).reshape(n, len(boxes), c)


def global_vectors(fmaps: np.ndarray) -> np.ndarray:
    """(n, h, w, c) -> (n, c): the plain ``avg`` global vectors (what the library stores)."""
    return l2_normalise(np.asarray(fmaps, np.float32).mean(axis=(1, 2)))


def rmac_vectors(fmaps: np.ndarray, grid: Sequence[tuple[float, int]] = DEFAULT_GRID) -> np.ndarray:
    """(n, h, w, c) -> (n, c): one R-MAC-style vector per image, the sum of the L2-normalised
    global vector and region vectors, L2-normalised again."""
    summed = global_vectors(fmaps) + region_vectors(fmaps, grid).sum(1)
    return l2_normalise(summed)


def region_ids(image_ids: np.ndarray, regions: int) -> np.ndarray:
    """(n * regions,) region ids of ``image_ids`` (row-major: image, then region)."""
    if regions > REGION_SLOTS:
        raise ValueError(f"at most {REGION_SLOTS} regions per image, not {regions}")
    image_ids = np.asarray(image_ids, np.int64)
    return (image_ids[:, None] * REGION_SLOTS + np.arange(regions, dtype=np.int64)[None]).ravel()


def image_of(region_id: np.ndarray) -> np.ndarray:
    """The image id of each region id (-1 stays -1: an empty FAISS slot)."""
    region_id = np.asarray(region_id, np.int64)
    return np.where(region_id < 0, -1, region_id // REGION_SLOTS)


def best_per_image(scores: np.ndarray, ids: np.ndarray, exclude: Sequence[int] = ()) -> dict[int, float]:
    """{image id: best score} over every (score, id) pair (ids < 0 and ``exclude`` dropped)."""
    best: dict[int, float] = {}
    skip = set(int(i) for i in exclude)
    for s, i in zip(np.ravel(scores), np.ravel(ids), strict=True):
        i = int(i)
        if i < 0 or i in skip:
            continue
        if s > best.get(i, -np.inf):
            best[i] = float(s)
    return best


def regional_scores(
    probe_global: np.ndarray,
    probe_regions: np.ndarray | None,
    search_regions: SearchFn | None,
    search_globals: SearchFn,
    depth: int = 100,
    exclude: Sequence[int] = (),
) -> dict[int, float]:
    """{image id: best regional cosine} for one probe: its global vector(s) against the library's
    regions (``search_regions``, ids of :func:`region_ids`; ``None``: a library without regions),
    and its regions (``probe_regions``) against the library's global vectors."""
    best: dict[int, float] = {}
    if search_regions is not None:
        s, rid = search_regions(np.atleast_2d(probe_global).astype(np.float32), depth)
        best = best_per_image(s, image_of(rid), exclude)
    if probe_regions is not None and len(probe_regions):
        s, ids = search_globals(np.asarray(probe_regions, np.float32), max(1, depth // 4))
        for i, v in best_per_image(s, ids, exclude).items():
            if v > best.get(i, -np.inf):
                best[i] = v
    return best


def merge_regional(ranked: Ranked, regional: dict[int, float], k: int, margin: float) -> Ranked:
    """``ranked`` (the global ranking) with each image scored by ``max(global, regional - margin)``,
    images found only by their regions added; best first, ties keep the global order."""
    scores = {int(i): float(s) for s, i in zip(ranked.scores, ranked.ids, strict=True)}
    variant = {int(i): int(v) for i, v in zip(ranked.ids, ranked.variant, strict=True)}
    for i, s in regional.items():
        scores[i] = max(scores.get(i, -np.inf), s - margin)
    position = {int(i): n for n, i in enumerate(ranked.ids)}
    order = sorted(scores, key=lambda i: (-scores[i], position.get(i, len(position)), i))[:k]
    return Ranked(
        np.asarray([scores[i] for i in order], np.float32),
        np.asarray(order, np.int64),
        np.asarray([variant.get(i, 0) for i in order], np.int64),
    )
