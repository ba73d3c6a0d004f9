"""How the default query orders its verified first results: copy score only, or copies then homography inliers.

    # choose on Flowers-17 with the 'tune' parameters of the widened edits
    .venv/bin/python scripts/spatial_eval.py ../shared/datasets/flowers17/images --split tune \
        --out scripts/results/spatial_tune_flowers17.json
    # report on holidays-dev with the 'report' parameters, with Holidays mAP under each rule
    .venv/bin/python scripts/spatial_eval.py ../shared/datasets/holidays-dev/images --split report \
        --groundtruth ../shared/datasets/holidays-dev/groundtruth.json \
        --out scripts/results/spatial_report_holidays.json

For every edited copy (8 sources x the 35 kinds of ``KIND_SETS["wide"]``) and, with
``--groundtruth``, every Holidays query: the first 10 results of the default retrieval (regional
probes, rotated views, DBA), each with its cosine, its verified score
(:func:`searcher.verify.verify_symmetric`) and the inliers of a homography
(:func:`searcher.verify.geometric_inliers`). Then each ordering rule is applied to the same records:

- ``score``: best verified score first (the default query before);
- ``copies+spatial``: :func:`searcher.rerank.verified_head` (copies at the duplicates threshold
  first, then results with at least ``G`` homography inliers, most first, then by score),
  for several ``G``;

each for a verification gap of 0.05, 0.1 and always (``inf``). A copy counts as found at rank 1 when
its source, or a picture the CNN and verification cannot tell from it (Flowers-17 holds a few
identical photos under two names), comes first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from searcher import rerank, verify  # noqa: E402
from searcher.duplicates import thresholds_for  # noqa: E402
from searcher.edits import KIND_SETS, make_benchmark  # noqa: E402
from searcher.evaluate import (  # noqa: E402
    GroundTruth,
    Ranker,
    RetrievalOptions,
    _embed_paths,
    _prepare,
    _probe_regions,
    average_precision,
    resolve_names,
    sample_sources,
)
from searcher.library import Library  # noqa: E402

TOP = 10
GAPS = (0.05, 0.1, float("inf"))
INLIER_BARS = (10, 15, 20, 30)


def order(rec: dict, rule: str, gap: float, bar: int, copy_at: float) -> list[int]:
    """Positions of ``rec``'s results after verification under ``rule`` (unchanged when not verified)."""
    n = len(rec["ids"])
    if not rerank.needs_verification(rec["cos"], TOP, gap):
        return list(range(n))
    if rule == "score":
        head = rerank.verified_head(rec["cos"], rec["ver"])
    else:
        head = rerank.verified_head(rec["cos"], rec["ver"], rec["geo"], copy_at, min_inliers=bar)
    return head + list(range(len(head), n))


def first_is_source(rec: dict, o: list[int]) -> bool:
    top = o[0]
    if rec["ids"][top] == rec["source"]:
        return True
    if rec["source"] not in rec["ids"]:
        return False
    s = rec["ids"].index(rec["source"])  # a twin of the source: same cosine and score to the probe
    return abs(rec["cos"][top] - rec["cos"][s]) < 2e-3 and abs(rec["ver"][top] - rec["ver"][s]) < 2e-3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--split", choices=("tune", "report"), required=True)
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--groundtruth", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    options = replace(RetrievalOptions.from_preset("instance"), regional_margin=rerank.DEFAULTS.regional_margin)
    lib_dir = Path(tempfile.gettempdir()) / f"searcher-spatial-{Path(args.folder).resolve().parent.name}"
    cache = verify.FeatureCache()
    copies: list[dict] = []
    queries: list[dict] = []
    ms_score: list[float] = []
    ms_inliers: list[float] = []
    with Library.open(lib_dir, create=True) as lib:
        root, model, ids, paths, vectors = _prepare(
            lib, args.folder, backbone=None, weights=None, pooling=None, index=True, progress=None, seconds={}
        )  # fmt: skip
        copy_at = thresholds_for(model).verified
        path_of = {int(i): p for p, i in zip(paths, ids, strict=True)}
        ranker = Ranker(ids, vectors, options)

        def record(probe: str, ranked, variants: np.ndarray, k: int = TOP) -> dict:
            head = [int(i) for i in ranked.ids[:k]]
            mine = cache.get(probe)
            ver, geo = [], []
            for i in head:
                theirs = cache.get(path_of[i])
                readable = mine is not None and theirs is not None
                t = time.perf_counter()
                ver.append(verify.verify_symmetric(mine, theirs).score if readable else 0.0)
                t2 = time.perf_counter()
                geo.append(verify.geometric_inliers(mine, theirs) if readable else 0)
                ms_score.append(1000 * (t2 - t))
                ms_inliers.append(1000 * (time.perf_counter() - t2))
            cos = ranker.plain_scores(variants, ranked)[:k].tolist()
            return {"ids": head, "cos": cos, "ver": ver, "geo": geo}

        with tempfile.TemporaryDirectory() as tmp:
            manifest = make_benchmark(
                sample_sources(paths, args.sources, args.seed), tmp, KIND_SETS["wide"], seed=args.seed,
                split=args.split,
            )  # fmt: skip
            probes = _embed_paths(lib, model, [m["copy"] for m in manifest], options)
            regions = _probe_regions(lib, model, [m["copy"] for m in manifest], options)
            id_of = {p: int(i) for p, i in zip(paths, ids, strict=True)}
            for entry, variants, own in zip(manifest, probes, regions, strict=True):
                rec = record(entry["copy"], ranker.rank(variants, k=TOP, probe_regions=own), variants)
                copies.append({**rec, "kind": entry["kind"], "source": id_of[entry["source"]]})
        if args.groundtruth:
            gt = GroundTruth.load(args.groundtruth)
            found, _ = resolve_names(gt.names(), root, paths)
            row_of = {p: r for r, p in enumerate(paths)}
            names = [q for q in gt.queries if q in found]
            qpaths = [found[q] for q in names]
            probes = _embed_paths(lib, model, qpaths, options)
            regions = _probe_regions(lib, model, qpaths, options)
            for q, qp, variants, own in zip(names, qpaths, probes, regions, strict=True):
                ranked = ranker.rank(variants, exclude=[int(ids[row_of[qp]])], probe_regions=own)
                rec = record(qp, ranked, variants)
                rec["all"] = [int(i) for i in ranked.ids]
                rec["positives"] = [int(ids[row_of[found[p]]]) for p in gt.queries[q] if p in found]
                queries.append(rec)

    rules = [("score", 0)] + [("copies+spatial", b) for b in INLIER_BARS]
    table = {}
    for rule, bar in rules:
        for gap in GAPS:
            name = f"{rule}@{bar}|gap={gap}" if rule != "score" else f"score|gap={gap}"
            per_kind: dict[str, list[bool]] = defaultdict(list)
            for rec in copies:
                per_kind[rec["kind"]].append(first_is_source(rec, order(rec, rule, gap, bar, copy_at)))
            verified = [rerank.needs_verification(r["cos"], TOP, gap) for r in copies]
            row: dict = {
                "recall@1": round(float(np.mean([x for v in per_kind.values() for x in v])), 4),
                "worst": min((round(float(np.mean(v)), 3), k) for k, v in per_kind.items()),
                "per_kind_below_1": {k: round(float(np.mean(v)), 3) for k, v in per_kind.items() if not all(v)},
                "verified_share": round(float(np.mean(verified)), 4),
            }  # fmt: skip
            if queries:
                aps = []
                for rec in queries:
                    o = order(rec, rule, gap, bar, copy_at)
                    head = [rec["ids"][j] for j in o]
                    seen = set(head)
                    full = head + [i for i in rec["all"] if i not in seen]
                    positives = set(rec["positives"])
                    aps.append(average_precision([i in positives for i in full], len(positives)))
                row["holidays_mAP"] = round(float(np.mean(aps)), 4)
            table[name] = row
            print(name, row["recall@1"], row["worst"], row.get("holidays_mAP"), flush=True)
    out = {
        "folder": str(Path(args.folder).resolve()), "split": args.split, "sources": args.sources, "copies": len(copies),
        "queries": len(queries), "copy_threshold": copy_at, "homography_px": verify.HOMOGRAPHY_PX,
        "ms_verified_score_per_pair": round(float(np.mean(ms_score)), 2),
        "ms_inliers_per_pair": round(float(np.mean(ms_inliers)), 2),
        "loadavg": os.getloadavg(), "rules": table,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
