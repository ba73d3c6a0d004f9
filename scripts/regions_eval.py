"""Where the default query loses edited copies, and what regional descriptors win back (issue 13).

    # diagnose + tune on Flowers-17 (the 'tune' parameters of the widened edits)
    .venv/bin/python scripts/regions_eval.py ../shared/datasets/flowers17/images --split tune --sources 8 \
        --out scripts/results/regions_tune_flowers17.json
    # report on holidays-dev (the 'report' parameters), with Holidays mAP under each setting
    .venv/bin/python scripts/regions_eval.py ../shared/datasets/holidays-dev/images --split report --sources 8 \
        --groundtruth ../shared/datasets/holidays-dev/groundtruth.json \
        --out scripts/results/regions_report_holidays.json

For every edited copy: the rank of its source under the default query (the instance preset:
rotation views, DBA; 1, 2-10, 11-100 or absent from the first 100), then the rank after merging
regional matches (:mod:`searcher.regions`: the probe's global vector against the library's
region vectors, the probe's regions against the library's global vectors, each image keeping its
best, handicapped by ``margin``) for several margins. Database vectors and regions come from one
forward pass per image (:meth:`Embedder.feature_maps`); the script checks that the pooled map
equals the stored vector.
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

from searcher import regions, rerank  # noqa: E402
from searcher.decode import load_for_model  # noqa: E402
from searcher.edits import KIND_SETS, make_benchmark  # noqa: E402
from searcher.evaluate import (  # noqa: E402
    GroundTruth,
    Ranker,
    RetrievalOptions,
    _prepare,
    average_precision,
    resolve_names,
    sample_sources,
)
from searcher.library import Library  # noqa: E402
from searcher.rerank import needs_verification, verified_head  # noqa: E402
from searcher.verify import FeatureCache, verified_scores  # noqa: E402

MARGINS = (-0.04, -0.02, 0.0, 0.02, 0.04, 0.06, 0.1)
MODES = ("both", "db_regions", "probe_regions")
TWIN_COSINE = 0.98
POLICIES = [(0, 0.0)] + [(n, gap) for n in (3, 5, 10) for gap in (0.02, 0.05, 0.1, float("inf"))]


def reorder(order: list[int], cos: list[float], ver: dict[int, float], n: int, gap: float) -> list[int]:
    """``order`` with its first ``n`` sorted by verified score when the policy (n, gap) says so."""
    if not needs_verification(cos, n, gap):
        return order
    head = order[:n]
    return [head[j] for j in verified_head(cos[:n], [ver.get(i, 0.0) for i in head])] + order[n:]


def bucket(rank: int | None) -> str:
    if rank is None:
        return "absent"
    return "1" if rank == 1 else "2-10" if rank <= 10 else "11-100"


def feature_maps(embedder, pixel_list: list[np.ndarray], batch: int = 32) -> np.ndarray:
    out = [embedder.feature_maps(np.stack(pixel_list[s : s + batch])) for s in range(0, len(pixel_list), batch)]
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--split", choices=("tune", "report"), required=True)
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--kinds", default="wide", choices=sorted(KIND_SETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--groundtruth", default=None)
    ap.add_argument("--verify-top", type=int, default=10, help="verify this many (0: no verification figures)")
    ap.add_argument(
        "--verify-margins",
        default="none,-0.02,0.0",
        help="rankings to verify: none = global only, else regional margins",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    lib_dir = Path(tempfile.gettempdir()) / f"searcher-tune-{Path(args.folder).resolve().parent.name}"
    options = RetrievalOptions.from_preset("instance")
    kinds_views = rerank.invariance_kinds(rerank.DEFAULTS.invariant)
    verify_keys = [k.strip() for k in args.verify_margins.split(",") if k.strip()]
    seconds: dict[str, float] = {}
    with Library.open(lib_dir, create=True) as lib:
        root, model, ids, paths, stored = _prepare(
            lib, args.folder, backbone=None, weights=None, pooling=None, index=True, progress=None, seconds=seconds
        )
        embedder = lib.embedder_for(model)
        size = embedder.input_size
        t = time.monotonic()
        pixels = [load_for_model(p, size)[0] for p in paths]
        seconds["decode_db"] = time.monotonic() - t
        t = time.monotonic()
        fmaps = feature_maps(embedder, pixels)
        seconds["forward_db"] = time.monotonic() - t
        t = time.monotonic()
        db_regions = regions.region_vectors(fmaps)
        seconds["regions_db"] = time.monotonic() - t
        db_global = regions.global_vectors(fmaps)
        db_rmac = regions.rmac_vectors(fmaps)
        drift = float(np.abs(db_global - stored).max())
        n_regions = db_regions.shape[1]
        del pixels, fmaps
        region_search = rerank.matrix_search(
            db_regions.reshape(-1, db_regions.shape[2]), regions.region_ids(ids, n_regions)
        )
        global_search = rerank.matrix_search(stored, ids)
        ranker = Ranker(ids, stored, options)
        rmac_ranker = Ranker(ids, db_rmac, options)
        id_of = {p: int(i) for p, i in zip(paths, ids, strict=True)}
        # the same picture twice in the folder (Flowers-17 holds 64 such pairs): either counts as the source
        similar = stored @ stored.T
        twins = {int(ids[r]): set(ids[np.flatnonzero(similar[r] >= TWIN_COSINE)].tolist()) for r in range(len(ids))}
        del similar

        def probe(path: str) -> tuple[np.ndarray, np.ndarray]:
            px, _ = load_for_model(path, size)
            views = rerank.probe_views(px, kinds_views, options.trim)
            maps = embedder.feature_maps(np.stack(views))
            return regions.global_vectors(maps), regions.region_vectors(maps[:1])[0], regions.rmac_vectors(maps)

        def evaluate(variants, own_regions, exclude, k):
            base = ranker.rank(variants, k=k, exclude=exclude)
            t0 = time.monotonic()
            reg = {
                "both": regions.regional_scores(variants[0], own_regions, region_search, global_search, 100, exclude),
                "db_regions": regions.regional_scores(variants[0], None, region_search, global_search, 100, exclude),
                "probe_regions": regions.regional_scores(variants[0], own_regions, None, global_search, 100, exclude),
            }
            cost = (time.monotonic() - t0) / 3
            return base, reg, cost

        path_of = {int(i): p for p, i in zip(paths, ids, strict=True)}
        cache = FeatureCache(capacity=8192)
        verify_cost = [0.0, 0]  # seconds, pairs

        def verified_lists(probe_path: str, base, reg, exclude, depth: int) -> tuple[dict, dict]:
            """The rankings to verify ({key: (ids, scores)}, ``depth`` long) and the verified score
            of every id in the first ``--verify-top`` of any of them."""
            lists = {}
            for key in verify_keys:
                ranked = base if key == "none" else regions.merge_regional(base, reg["both"], depth, float(key))
                lists[key] = ([int(i) for i in ranked.ids[:depth]], [float(x) for x in ranked.scores[:depth]])
            head = sorted({i for ids_, _ in lists.values() for i in ids_[: args.verify_top]})
            t0 = time.monotonic()
            scores = verified_scores(probe_path, [path_of[i] for i in head], cache) if args.verify_top else []
            verify_cost[0] += time.monotonic() - t0
            verify_cost[1] += len(head)
            return lists, dict(zip(head, scores, strict=True))

        records = []
        region_seconds = []
        with tempfile.TemporaryDirectory() as tmp:
            chosen = sample_sources(paths, args.sources, args.seed)
            manifest = make_benchmark(chosen, tmp, KIND_SETS[args.kinds], seed=args.seed, split=args.split)
            t = time.monotonic()
            for entry in manifest:
                variants, own, rmac = probe(entry["copy"])
                base, reg, cost = evaluate(variants, own, (), 100)
                region_seconds.append(cost)
                src = id_of[entry["source"]]
                where = np.flatnonzero(np.isin(base.ids, list(twins[src])))
                rec = {
                    "kind": entry["kind"],
                    "source": os.path.basename(entry["source"]),
                    "rank": int(where[0]) + 1 if len(where) else None,
                }
                for mode in MODES:
                    for m in MARGINS:
                        top = regions.merge_regional(base, reg[mode], 1, m).ids[0]
                        rec[f"{mode}@{m}"] = int(top) in twins[src]
                rec["rmac"] = int(rmac_ranker.rank(rmac, k=1).ids[0]) in twins[src]
                rec["twins"] = len(twins[src]) - 1
                if args.verify_top:
                    lists, ver = verified_lists(entry["copy"], base, reg, (), 10)
                    rec["lists"] = {k: {"ids": v[0], "cos": [round(x, 5) for x in v[1]]} for k, v in lists.items()}
                    rec["ver"] = {str(i): round(v, 4) for i, v in ver.items()}
                    rec["ok"] = sorted(twins[src])
                records.append(rec)
            seconds["probes"] = time.monotonic() - t
        holidays: dict[str, float] = {}
        if args.groundtruth:
            gt = GroundTruth.load(args.groundtruth)
            found, _ = resolve_names(gt.names(), root, paths)
            aps: dict[str, list[float]] = {}
            for q in (q for q in gt.queries if q in found):
                qid = id_of[found[q]]
                variants, own, rmac = probe(found[q])
                base, reg, _ = evaluate(variants, own, [qid], len(ids))
                pos = {id_of[found[p]] for p in gt.queries[q] if p in found}
                settings_ = [("default", None, 0.0)] + [(mode, mode, m) for mode in MODES for m in MARGINS]
                for name, mode, m in settings_:
                    ranked = base if mode is None else regions.merge_regional(base, reg[mode], len(ids), m)
                    rel = np.asarray([int(i) in pos for i in ranked.ids])
                    key = name if mode is None else f"{mode}@{m}"
                    aps.setdefault(key, []).append(average_precision(rel, len(pos)))
                if args.verify_top:
                    lists, ver = verified_lists(found[q], base, reg, [qid], len(ids))
                    for key, (order, cos) in lists.items():
                        for n, gap in POLICIES:
                            new = reorder(order, cos, ver, n, gap)
                            rel = np.asarray([i in pos for i in new])
                            aps.setdefault(f"{key}|{n},{gap}", []).append(average_precision(rel, len(pos)))
                ranked = rmac_ranker.rank(rmac, k=len(ids), exclude=[qid])
                rel = np.asarray([int(i) in pos for i in ranked.ids])
                aps.setdefault("rmac", []).append(average_precision(rel, len(pos)))
            holidays = {k: round(float(np.mean(v)), 4) for k, v in aps.items()}

    kinds = sorted({r["kind"] for r in records})
    diagnosis = {
        k: {
            b: sum(bucket(r["rank"]) == b for r in records if r["kind"] == k) for b in ("1", "2-10", "11-100", "absent")
        }
        for k in kinds
    }
    settings_out = {}
    for key in ["default", "rmac"] + [f"{mode}@{m}" for mode in MODES for m in MARGINS]:
        if key == "default":
            hit = [(r["kind"], r["rank"] == 1) for r in records]
        else:
            hit = [(r["kind"], r[key]) for r in records]
        per_kind = {k: round(float(np.mean([h for kk, h in hit if kk == k])), 3) for k in kinds}
        settings_out[key] = {
            "recall@1": round(float(np.mean([h for _, h in hit])), 4),
            "worst": min((v, k) for k, v in per_kind.items()),
            "per_kind": per_kind,
            "holidays_mAP": holidays.get(key),
        }
    policies_out = {}
    for key in verify_keys if args.verify_top else []:
        for n, gap in POLICIES:
            hit = []
            triggered = 0
            for r in records:
                order, cos = r["lists"][key]["ids"], r["lists"][key]["cos"]
                ver = {int(i): v for i, v in r["ver"].items()}
                triggered += needs_verification(cos, n, gap)
                hit.append((r["kind"], reorder(order, cos, ver, n, gap)[0] in set(r["ok"])))
            per_kind = {k: round(float(np.mean([h for kk, h in hit if kk == k])), 3) for k in kinds}
            name = f"{key}|{n},{gap}"
            policies_out[name] = {
                "regional_margin": None if key == "none" else float(key), "verify_top": n, "gap": str(gap),
                "recall@1": round(float(np.mean([h for _, h in hit])), 4),
                "worst": min((v, k) for k, v in per_kind.items()), "per_kind": per_kind,
                "verified_share": round(triggered / max(1, len(records)), 4), "holidays_mAP": holidays.get(name),
            }  # fmt: skip
    out = {
        "folder": root, "backbone": model.backbone, "split": args.split, "kinds": args.kinds,
        "sources": args.sources, "copies": len(records), "images": len(ids), "regions_per_image": n_regions,
        "grid": regions.DEFAULT_GRID, "stored_vs_pooled_max_diff": drift,
        "region_bytes_per_image": int(n_regions * db_regions.shape[2] * 4),
        "ms_region_search_per_probe": round(1000 * float(np.mean(region_seconds)), 2),
        "ms_region_vectors_per_image": round(1000 * seconds["regions_db"] / len(ids), 3),
        "ms_forward_per_image": round(1000 * seconds["forward_db"] / len(ids), 2),
        "seconds": {k: round(v, 2) for k, v in seconds.items()}, "loadavg": open("/proc/loadavg").read().split()[:3],
        "ms_per_verified_pair": round(1000 * verify_cost[0] / max(1, verify_cost[1]), 2),
        "diagnosis_default_rank": diagnosis, "settings": settings_out, "verification_policies": policies_out,
        "records": records,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("drift", drift, "regions", n_regions, out["seconds"], os.getloadavg())
    for k, d in diagnosis.items():
        print(f"{k:28s} {d}")
    for key, s in settings_out.items():
        print(f"{key:22s} R@1 {s['recall@1']:.3f} worst {s['worst']} mAP {s['holidays_mAP']}")
    for key, s in policies_out.items():
        print(
            f"{key:22s} R@1 {s['recall@1']:.3f} worst {s['worst']} share {s['verified_share']} mAP {s['holidays_mAP']}"
        )
    print("ms per verified pair", out["ms_per_verified_pair"])


if __name__ == "__main__":
    main()
