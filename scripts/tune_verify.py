"""Collect the CNN shortlist and the pixel-verification scores of its head, then score policies for
verifying the first results by default (issue 13).

    # tune: the 'tune' parameters of the widened edits, on folders that are not Holidays
    .venv/bin/python scripts/tune_verify.py ../shared/datasets/flowers17/images --split tune --sources 30 \
        --out scripts/results/verify_tune_flowers17.json
    # report: Holidays with the 'report' parameters, and Holidays mAP (--groundtruth) under each policy
    .venv/bin/python scripts/tune_verify.py ../shared/datasets/holidays-dev/images --split report \
        --sources 30 --groundtruth ../shared/datasets/holidays-dev/groundtruth.json --policy 10,inf,sort \
        --out scripts/results/verify_report_holidays.json

A policy is (top N, gap, mode): when the first two cosine scores differ by less than ``gap``
(``inf``: always), the first N results are verified; mode ``sort`` orders them by verified score
(ties keep the CNN order), ``promote`` moves only those at or above the shipped duplicate
threshold ahead. Probes use the default query (the instance preset: rotation views, DBA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from searcher.edits import KIND_SETS, make_benchmark  # noqa: E402
from searcher.evaluate import (  # noqa: E402
    GroundTruth,
    Ranker,
    RetrievalOptions,
    _database_vectors,
    _embed_paths,
    _prepare,
    average_precision,
    resolve_names,
    sample_sources,
)
from searcher.library import Library  # noqa: E402
from searcher.rerank import needs_verification  # noqa: E402
from searcher.verify import FeatureCache, verified_scores  # noqa: E402

POLICIES = [(0, 0.0, "sort")] + [
    (n, gap, mode) for n in (3, 5, 10) for gap in (0.02, 0.05, 0.1, float("inf")) for mode in ("sort", "promote")
]


def apply_policy(cos: list[float], ver: list[float], n: int, gap: float, mode: str, threshold: float) -> list[int]:
    """Positions (into the head) in their new order; the tail is untouched."""
    head = list(range(len(ver)))
    if not needs_verification(cos, n, gap):
        return head
    top, rest = head[:n], head[n:]
    if mode == "sort":
        top.sort(key=lambda j: (-ver[j], j))
    else:
        top = sorted([j for j in top if ver[j] >= threshold], key=lambda j: (-ver[j], j)) + [
            j for j in top if ver[j] < threshold
        ]
    return top + rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--split", choices=("tune", "report"), required=True)
    ap.add_argument("--sources", type=int, default=30)
    ap.add_argument("--kinds", default="wide", choices=sorted(KIND_SETS))
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=10, help="verify this many per probe (policies use a prefix)")
    ap.add_argument("--groundtruth", default=None, help="also score instance retrieval (mAP) under each policy")
    ap.add_argument("--policy", action="append", default=[], help="N,gap,mode to score (default: the grid)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from searcher.duplicates import thresholds_for

    policies = [(int(n), float(g), m) for n, g, m in (p.split(",") for p in args.policy)] or POLICIES
    lib_dir = Path(tempfile.gettempdir()) / f"searcher-tune-{Path(args.folder).resolve().parent.name}"
    options = RetrievalOptions.from_preset("instance")
    seconds: dict[str, float] = {}
    with Library.open(lib_dir, create=True) as lib:
        root, model, ids, paths, vectors = _prepare(
            lib, args.folder, backbone=args.backbone, weights=None, pooling=None, index=True, progress=None,
            seconds=seconds,
        )  # fmt: skip
        th = thresholds_for(model)
        vectors = _database_vectors(lib, model, paths, vectors, options)
        ranker = Ranker(ids, vectors, options)
        path_of = {int(i): p for p, i in zip(paths, ids, strict=True)}
        id_of = {p: int(i) for p, i in zip(paths, ids, strict=True)}
        cache = FeatureCache(capacity=4096)
        records = []
        verify_s = 0.0
        verified_pairs = 0
        with tempfile.TemporaryDirectory() as tmp:
            kinds = KIND_SETS[args.kinds]
            chosen = sample_sources(paths, args.sources, args.seed)
            t = time.monotonic()
            manifest = make_benchmark(chosen, tmp, kinds, seed=args.seed, split=args.split)
            seconds["edit"] = time.monotonic() - t
            t = time.monotonic()
            probes = _embed_paths(lib, model, [m["copy"] for m in manifest], options)
            seconds["embed_probes"] = time.monotonic() - t
            t = time.monotonic()
            for entry, variants in zip(manifest, probes, strict=True):
                ranked = ranker.rank(variants, k=args.top)
                head = [int(i) for i in ranked.ids]
                v0 = time.monotonic()
                ver = verified_scores(entry["copy"], [path_of[i] for i in head], cache)
                verify_s += time.monotonic() - v0
                verified_pairs += len(head)
                records.append({
                    "kind": entry["kind"], "source": id_of[entry["source"]], "ids": head,
                    "cos": [round(float(s), 5) for s in ranked.scores], "ver": [round(float(s), 4) for s in ver],
                })  # fmt: skip
            seconds["rank_and_verify"] = time.monotonic() - t
        holidays = []
        if args.groundtruth:
            gt = GroundTruth.load(args.groundtruth)
            found, _ = resolve_names(gt.names(), root, paths)
            queries = [q for q in gt.queries if q in found]
            qprobes = _embed_paths(lib, model, [found[q] for q in queries], options)
            for q, variants in zip(queries, qprobes, strict=True):
                qid = id_of[found[q]]
                ranked = ranker.rank(variants, exclude=[qid])
                order = [int(i) for i in ranked.ids]
                head = order[: args.top]
                v0 = time.monotonic()
                ver = verified_scores(found[q], [path_of[i] for i in head], cache)
                verify_s += time.monotonic() - v0
                verified_pairs += len(head)
                pos = {id_of[found[p]] for p in gt.queries[q] if p in found}
                holidays.append({"order": order, "cos": [float(s) for s in ranked.scores[: args.top]], "ver": ver,
                                 "pos": sorted(pos)})  # fmt: skip

    results = []
    for n, gap, mode in policies:
        per_kind: dict[str, list[bool]] = {}
        triggered = 0
        for r in records:
            new = apply_policy(r["cos"], r["ver"], n, gap, mode, th.verified)
            triggered += needs_verification(r["cos"], n, gap)
            per_kind.setdefault(r["kind"], []).append(r["ids"][new[0]] == r["source"])
        row = {
            "top": n, "gap": gap if np.isfinite(gap) else "inf", "mode": mode,
            "recall@1": round(float(np.mean([x for v in per_kind.values() for x in v])), 4),
            "worst_kind": min(((round(float(np.mean(v)), 4), k) for k, v in per_kind.items())),
            "per_kind": {k: round(float(np.mean(v)), 4) for k, v in per_kind.items()},
            "verified_share": round(triggered / max(1, len(records)), 4),
        }  # fmt: skip
        if holidays:
            aps = []
            for h in holidays:
                head = apply_policy(h["cos"], h["ver"], n, gap, mode, th.verified)
                order = [h["order"][j] for j in head] + h["order"][len(head):]
                rel = np.asarray([i in set(h["pos"]) for i in order])
                aps.append(average_precision(rel, len(h["pos"])))
            row["holidays_mAP"] = round(float(np.mean(aps)), 4)
        results.append(row)
    out = {
        "folder": root, "backbone": model.backbone, "split": args.split, "kinds": args.kinds,
        "sources": args.sources, "probes": len(records), "images": len(ids), "threshold": th.verified,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "ms_per_verified_pair": round(1000 * verify_s / max(1, verified_pairs), 2),
        "loadavg": open("/proc/loadavg").read().split()[:3], "policies": results,
        "records": records, "holidays": [{k: v for k, v in h.items() if k != "order"} for h in holidays],
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    best = sorted(results, key=lambda r: (-r["recall@1"], r["verified_share"]))[:8]
    for r in [results[0], *best]:
        print(r["top"], r["gap"], r["mode"], r["recall@1"], r["worst_kind"], r["verified_share"], r.get("holidays_mAP"))
    print(out["seconds"], out["ms_per_verified_pair"], "ms/pair", os.getloadavg())


if __name__ == "__main__":
    main()
