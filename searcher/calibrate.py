"""Calibrate the near-duplicate threshold on the user's own pictures.

``searcher calibrate`` takes a sample of the library, makes edited copies of each
picture in a temporary folder (:mod:`searcher.edits`: recompression, resizes,
thumbnails, crops, flips, rotations, colour changes, borders, captions), and
scores with :mod:`searcher.verify`:

* positives: each picture against each of its edited copies;
* negatives: each picture against its nearest CNN neighbours in the library (the
  hard cases: other shots of the same scene look alike to a CNN), and each edited
  copy against those neighbours too.

A neighbour that is already a duplicate of the picture is not a negative: libraries (and
public datasets: Oxford Flowers 17 holds re-encoded copies of some of its photos) contain
real duplicates, and counting one as a negative counts it once per edit kind as a false
"positive" that scores about 1, which makes every threshold miss the target. So neighbours
with the same bytes, the same decoded pixels, or the same picture up to re-encoding and
resizing (:func:`same_picture`: mean grey difference below :data:`SAME_PICTURE_MAD` at a
common size) are left out and listed in the report (``library_duplicates``), as are pairs
the caller names in ``known_duplicates``. The highest-scoring negatives that remain are
listed too (``top_negatives``), so a surprising threshold can be traced to its pairs.

The threshold is the lowest verified score at which precision (positives above it
over everything above it) reaches the target (default 0.99), and never below the
highest negative score when the sample is too small to afford any false positive.
It is stored per model in ``models.duplicate_threshold``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from searcher import store
from searcher.edits import EDIT_KINDS, make_benchmark
from searcher.store import STATUS_OK, ImageRow, ModelRow
from searcher.verify import FeatureCache, verify_symmetric

if TYPE_CHECKING:
    from searcher.library import Library, Progress

SAME_PICTURE_COSINE = 0.9  # neighbours at least this close are checked with same_picture()


@dataclass
class CalibrationReport:
    model: str
    backbone: str
    threshold: float
    target_precision: float
    precision: float
    recall: float
    positives: int
    negatives: int
    sample: int
    recall_by_kind: dict[str, float] = field(default_factory=dict)
    negative_max: float = 0.0
    seconds: float = 0.0
    stored: bool = False
    positive_quantiles: dict[str, float] = field(default_factory=dict)
    top_negatives: list[dict[str, Any]] = field(default_factory=list)
    library_duplicates: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("threshold", "precision", "recall", "negative_max", "seconds"):
            out[key] = round(out[key], 4)
        out["recall_by_kind"] = {k: round(v, 4) for k, v in self.recall_by_kind.items()}
        out["positive_quantiles"] = {k: round(v, 4) for k, v in self.positive_quantiles.items()}
        return out


SAME_PICTURE_MAD = 4.0  # mean absolute grey difference (0-255) below which two pictures are one
SAME_PICTURE_SIDE = 64  # compared at this longest side (a resized copy is within ~2, a burst ~15+)


def same_picture(a: str, b: str) -> bool:
    """Whether two files hold the same picture up to re-encoding and resizing (not crops or edits).

    Both are decoded (EXIF orientation applied), must have the same aspect ratio (within 1 %),
    and are compared as grey images of :data:`SAME_PICTURE_SIDE` px: mean absolute difference
    below :data:`SAME_PICTURE_MAD` grey levels. Other shots of a scene, even a burst from a
    tripod, differ by much more; a re-saved JPEG differs by under 1, a resized copy by about 2.
    """
    from PIL import Image

    from searcher.decode import DecodeError, open_image

    try:
        ia, ib = open_image(a).image, open_image(b).image
    except (DecodeError, OSError):
        return False
    (wa, ha), (wb, hb) = ia.size, ib.size
    if abs(wa / ha - wb / hb) > 0.01 * (wa / ha):
        return False
    f = SAME_PICTURE_SIDE / max(wa, ha)
    size = (max(8, round(wa * f)), max(8, round(ha * f)))
    ga = np.asarray(ia.convert("L").resize(size, Image.Resampling.BOX), np.float32)
    gb = np.asarray(ib.convert("L").resize(size, Image.Resampling.BOX), np.float32)
    return float(np.abs(ga - gb).mean()) < SAME_PICTURE_MAD


def threshold_for_precision(pos: np.ndarray, neg: np.ndarray, target: float = 0.99) -> tuple[float, float, float]:
    """Lowest threshold t with precision(score >= t) >= ``target``; returns (t, precision, recall).

    Candidate thresholds are the observed scores. When none reaches the target, the score just
    above the highest negative is returned.
    """
    pos = np.sort(np.asarray(pos, np.float64))
    neg = np.sort(np.asarray(neg, np.float64))
    if len(pos) == 0:
        raise ValueError("no positive pairs to calibrate on")
    candidates = np.unique(np.concatenate([pos, neg]))
    best: tuple[float, float, float] | None = None
    # the loosest threshold that still meets the target; a few "negatives" at the very top (real
    # duplicates already in the user's library) do not block it as long as precision holds
    for t in candidates[::-1]:
        tp = len(pos) - np.searchsorted(pos, t, side="left")
        fp = len(neg) - np.searchsorted(neg, t, side="left")
        if tp == 0:
            continue
        precision = tp / (tp + fp)
        if precision >= target:
            best = (float(t), float(precision), float(tp / len(pos)))
    if best is None:
        t = float(np.nextafter(neg[-1], 2.0)) if len(neg) else float(pos[0])
        tp = len(pos) - np.searchsorted(pos, t, side="left")
        return t, 1.0 if tp else 0.0, float(tp / len(pos))
    return best


def sample_rows(lib: Library, model: ModelRow, n: int, seed: int = 0) -> list[ImageRow]:
    """A deterministic sample of ``n`` distinct, still-present pictures of the library."""
    with lib.sessions() as session:
        have = set(store.vector_ids(session, model.id).tolist())
        rows = [
            r
            for r in session.execute(
                select(ImageRow).where(ImageRow.status == STATUS_OK).order_by(ImageRow.id)
            ).scalars()
            if r.id in have and r.content_hash
        ]
    seen: set[str] = set()
    unique = []
    for r in rows:
        if r.content_hash not in seen:
            seen.add(r.content_hash)  # type: ignore[arg-type]
            unique.append(r)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    out = []
    for i in order:
        if os.path.exists(unique[i].path):
            out.append(unique[i])
        if len(out) >= n:
            break
    return out


def calibrate(
    lib: Library,
    *,
    sample: int = 40,
    target_precision: float = 0.99,
    kinds: Sequence[str] = EDIT_KINDS,
    neighbours: int = 5,
    seed: int = 0,
    backbone: str | None = None,
    store_result: bool = True,
    known_duplicates: Iterable[tuple[str, str]] = (),
    workers: int = 2,
    progress: Progress | None = None,
) -> CalibrationReport:
    """Measure verified scores of edited copies vs hard negatives; store the threshold (see module doc).

    ``known_duplicates``: pairs of paths known to be duplicates of each other (never negatives).
    """
    from searcher.duplicates import PIXEL_COSINE, pixel_hash
    from searcher.library import LibraryError, Progress

    progress = progress or Progress()
    started = time.monotonic()
    model = lib.find_model(backbone)
    rows = sample_rows(lib, model, sample, seed)
    if len(rows) < 3:
        raise LibraryError("calibration needs at least 3 indexed pictures; index more first")
    index = lib.vector_index(model)
    with lib.sessions() as session:
        vecs = store.vectors_for(session, model.id, [r.id for r in rows])
    query = np.stack([vecs[r.id] for r in rows])
    scores, ids = index.search(query, neighbours + 8)
    all_rows = lib._rows_by_id({int(i) for i in ids.ravel() if i >= 0})
    cache = FeatureCache(capacity=100_000)
    with tempfile.TemporaryDirectory(prefix="searcher-calibrate-") as tmp:
        progress.begin("Making edited copies", len(rows))
        manifest: list[dict[str, Any]] = []
        for i, r in enumerate(rows):
            for item in make_benchmark([r.path], os.path.join(tmp, f"{i:05d}"), kinds, seed=seed * 100_003 + i):
                item["row"] = i
                manifest.append(item)
            progress.advance()
        progress.end()
        positives: list[tuple[str, str, str]] = [(m["source"], m["copy"], m["kind"]) for m in manifest]
        negatives: list[tuple[str, str]] = []
        duplicates_found: list[dict[str, Any]] = []
        known = {frozenset(os.path.realpath(p) for p in pair) for pair in known_duplicates}
        for i, r in enumerate(rows):
            taken = 0
            for s, j in zip(scores[i], ids[i], strict=True):
                other = all_rows.get(int(j))
                if other is None or other.content_hash == r.content_hash or not os.path.exists(other.path):
                    continue
                pair = frozenset((os.path.realpath(r.path), os.path.realpath(other.path)))
                why = None
                if pair in known:
                    why = "known duplicate"
                elif s >= PIXEL_COSINE and pixel_hash(other.path) == pixel_hash(r.path):
                    why = "same pixels"
                elif s >= SAME_PICTURE_COSINE and same_picture(r.path, other.path):
                    why = "same picture (re-encoded or resized)"
                if why is not None:
                    # a real duplicate already in the library, not a negative (nor are its edited copies)
                    duplicates_found.append({"a": r.path, "b": other.path, "cosine": round(float(s), 4), "why": why})
                    continue
                negatives.append((r.path, other.path))
                for m in manifest:
                    if m["row"] == i:
                        negatives.append((m["copy"], other.path))
                taken += 1
                if taken >= neighbours:
                    break

        def score(pair: tuple[str, ...]) -> float:
            fa, fb = cache.get(pair[0]), cache.get(pair[1])
            if fa is None or fb is None:
                return 0.0
            a, b = (fa, fb) if pair[0] <= pair[1] else (fb, fa)
            return verify_symmetric(a, b).score

        progress.begin("Verifying", len(positives) + len(negatives))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pos_scores = []
            for s in pool.map(score, positives):
                pos_scores.append(s)
                progress.advance()
            neg_scores = []
            for s in pool.map(score, negatives):
                neg_scores.append(s)
                progress.advance()
        progress.end()
    pos = np.array(pos_scores)
    neg = np.array(neg_scores)
    top = np.argsort(-neg, kind="stable")[:10] if len(neg) else []
    top_negatives = [{"a": negatives[t][0], "b": negatives[t][1], "score": round(float(neg[t]), 4)} for t in top]
    threshold, precision, recall = threshold_for_precision(pos, neg, target_precision)
    by_kind: dict[str, list[bool]] = {}
    for (_, _, kind), s in zip(positives, pos, strict=True):
        by_kind.setdefault(kind, []).append(bool(s >= threshold))
    report = CalibrationReport(
        model=model.key, backbone=model.backbone, threshold=threshold, target_precision=target_precision,
        precision=precision, recall=recall, positives=len(pos), negatives=len(neg), sample=len(rows),
        recall_by_kind={k: float(np.mean(v)) for k, v in by_kind.items()},
        negative_max=float(neg.max()) if len(neg) else 0.0, seconds=time.monotonic() - started,
        positive_quantiles={f"p{q}": float(np.percentile(pos, q)) for q in (5, 10, 25, 50)},
        top_negatives=top_negatives, library_duplicates=duplicates_found,
    )  # fmt: skip
    if store_result:
        with lib.sessions() as session, session.begin():
            row = session.get(ModelRow, model.id)
            assert row is not None
            row.duplicate_threshold = threshold
        report.stored = True
    return report
