"""The default query's quality and cost, measured through the product's own code paths (issue 13).

    .venv/bin/python scripts/default_query_report.py ../shared/datasets/holidays-dev/images --split report \
        --sources 8 --groundtruth ../shared/datasets/holidays-dev/groundtruth.json \
        --out scripts/results/default_query_report_holidays.json

Three settings of the instance preset, each on the same edited copies (widened edits, ``--split``
parameters) and, with ``--groundtruth``, on Holidays mAP:

- ``before``: global vectors only, no verification (the default before regional probes);
- ``regions``: plus the probe's regions against the global vectors (:mod:`searcher.regions`);
- ``default``: what ``searcher query`` does now (the preset: regions, then the first
  ``verify_top`` verified and re-ordered, :func:`searcher.rerank.verified_head`; only when the two
  best cosines are within ``verify_gap``, every query since the gap is infinite). Holidays mAP is
  measured with the same verification.

Near-duplicates: :func:`searcher.evaluate.near_duplicate_benchmark`; mAP:
:func:`searcher.evaluate.evaluate_folder`; cost per query: ``Library.query`` on ``--timed`` copies
(new probes, embedding included), p50 and mean, with the load average beside it: with no features
of the results cached (``searcher query``, a new process each time) and with the library kept open
(``searcher serve``: the second pass over the same copies, the results' features cached).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from searcher import rerank  # noqa: E402
from searcher.edits import KIND_SETS, make_benchmark  # noqa: E402
from searcher.evaluate import (  # noqa: E402
    GroundTruth,
    RetrievalOptions,
    evaluate_folder,
    folder_vectors,
    near_duplicate_benchmark,
    sample_sources,
)
from searcher.library import Library  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--split", choices=("tune", "report"), required=True)
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--groundtruth", default=None)
    ap.add_argument("--timed", type=int, default=20, help="copies timed through Library.query per setting")
    ap.add_argument("--settings", default="before,regions,default", help="which settings to run (comma-separated)")
    ap.add_argument(
        "--product", default="", help="also measure recall through Library.query itself, with these numbers of "
        "thumbnail candidates (comma-separated, e.g. 0,5: searcher.querying.THUMBNAIL_EXTRAS)",
    )  # fmt: skip
    ap.add_argument(
        "--kinds", default="", help="only these kinds of edit with --product (comma-separated; default: all 35)"
    )
    ap.add_argument("--backbone", default=None, help="backbone to measure (default: the library's default, Lite0)")
    ap.add_argument("--weights", default=None, help="its weights file, where they are not bundled")
    ap.add_argument(
        "--no-twins", action="store_true", help="without the burst-twin step (searcher.twins), to measure what it adds"
    )
    ap.add_argument(
        "--no-corners", action="store_true",
        help="without the corners of a photographed print or screen (searcher.frames.picture_quad)",
    )  # fmt: skip
    ap.add_argument(
        "--no-deeper", action="store_true", help="without verifying deeper when nothing in the first results is tied"
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.no_twins:
        from searcher import twins

        twins.DEPTH = 1  # no result after the first is compared with it
    if args.no_corners:
        from searcher import frames

        frames.picture_quad = lambda pixels: None  # type: ignore[assignment]  # boxes only, as before
    if args.no_deeper:
        rerank.DEFAULTS = rerank.PRESETS["instance"] = replace(rerank.DEFAULTS, verify_deeper=0)

    preset = rerank.DEFAULTS
    settings = {
        "before": (replace(preset, regional_margin=None), 0, float("inf")),
        "regions": (preset, 0, float("inf")),
        "default": (preset, preset.verify_top, preset.verify_gap),
    }
    settings = {name: settings[name] for name in args.settings.split(",") if name}
    lib_dir = Path(tempfile.gettempdir()) / f"searcher-tune-{Path(args.folder).resolve().parent.name}"
    out: dict = {"folder": str(Path(args.folder).resolve()), "split": args.split, "sources": args.sources,
                 "seed": args.seed, "kinds": args.kinds or "all", "backbone": args.backbone or "library default",
                 "twins": not args.no_twins, "corners": not args.no_corners, "deeper": not args.no_deeper,
                 "preset": {"verify_top": preset.verify_top, "verify_gap": str(preset.verify_gap),
                            "verify_deeper": preset.verify_deeper,
                            "regional_margin": preset.regional_margin}, "settings": {}}  # fmt: skip
    with Library.open(lib_dir, create=True) as lib:
        for name, (p, top, gap) in settings.items():
            options = replace(RetrievalOptions.from_preset("instance"), regional_margin=p.regional_margin)
            t = time.monotonic()
            nd = near_duplicate_benchmark(
                lib, args.folder, sources=args.sources, kinds=KIND_SETS["wide"], seed=args.seed, options=options,
                verify_top=top, verify_gap=gap, split=args.split, verify_deeper=p.verify_deeper if top else 0,
            )  # fmt: skip
            row = {
                "recall@1": nd.overall["recall@1"],
                "recall@10": nd.overall["recall@10"],
                "copies": nd.copies,
                "worst": min((v["recall@1"], k) for k, v in nd.per_kind.items()),
                "per_kind": {k: v["recall@1"] for k, v in nd.per_kind.items()},
                "misses": nd.misses,
                "verified_share": nd.verified_share,
                "seconds_near_duplicates": round(time.monotonic() - t, 1),
            }
            if args.groundtruth:
                report = evaluate_folder(
                    lib, args.folder, GroundTruth.load(args.groundtruth), options, verify_top=top, verify_gap=gap,
                    verify_deeper=p.verify_deeper if top else 0,
                )
                row["holidays_mAP"] = round(report.metrics.map, 4)
            out["settings"][name] = row
            print(name, row["recall@1"], row["worst"], row["verified_share"], row.get("holidays_mAP"), flush=True)
        if settings and args.timed > 0:  # cost per query of the settings above (needs their indexed library)
            # cost per query through Library.query (new probes: the copies are not indexed)
            model = lib.find_model()
            _, paths, _ = folder_vectors(lib, model, str(Path(args.folder).resolve()))
            with tempfile.TemporaryDirectory() as tmp:
                chosen = sample_sources(paths, max(1, args.timed // 5), args.seed + 1)
                kinds = ("crop_small", "screenshot", "combo_social", "perspective", "jpeg")
                manifest = make_benchmark(chosen, tmp, kinds, seed=args.seed + 1, split=args.split)
                lib.query([manifest[0]["copy"]], k=10)  # the network is loaded and traced once, not timed
                for name, (p, top, gap) in settings.items():
                    rerank.PRESETS["_timed"] = replace(p, name="_timed", verify_top=top, verify_gap=gap)
                    ms, warm = [], []
                    verified = 0
                    for m in manifest:
                        lib._verify_cache = None  # as `searcher query` in a new process: no features of the results yet
                        t = time.perf_counter()
                        (result,) = lib.query([m["copy"]], k=10, preset="_timed")
                        ms.append(1000 * (time.perf_counter() - t))
                        verified += any(h.verified is not None for h in result.results)
                    lib._verify_cache = None
                    for m in manifest:  # as `searcher serve`: the library stays open, results' features are kept
                        t = time.perf_counter()
                        lib.query([m["copy"]], k=10, preset="_timed")
                        warm.append(1000 * (time.perf_counter() - t))
                    out["settings"][name]["ms_per_query_p50"] = round(float(np.median(ms)), 1)
                    out["settings"][name]["ms_per_query_mean"] = round(float(np.mean(ms)), 1)
                    out["settings"][name]["ms_per_query_p50_library_open"] = round(float(np.median(warm)), 1)
                    out["settings"][name]["timed_queries"] = len(ms)
                    out["settings"][name]["timed_verified"] = verified
                    print(name, "ms/query p50", round(float(np.median(ms)), 1), "mean", round(float(np.mean(ms)), 1))
                rerank.PRESETS.pop("_timed", None)
        for extras in [int(x) for x in args.product.split(",") if x.strip()]:
            row = product_recall(lib, args, extras)
            out["settings"][f"query_thumbnails_{extras}"] = row
            print(f"Library.query, {extras} thumbnails:", row["recall@1"], row["worst"], row["ms_per_query_p50"])
        if args.product and args.groundtruth and not settings:  # the default query's mAP (`searcher eval --verify 10`)
            t = time.monotonic()
            options = RetrievalOptions.from_preset("instance")
            report = evaluate_folder(
                lib, args.folder, GroundTruth.load(args.groundtruth), options, backbone=args.backbone,
                weights=args.weights, verify_top=preset.verify_top, verify_gap=preset.verify_gap,
                verify_deeper=preset.verify_deeper,
            )  # fmt: skip
            out["holidays_mAP_default_query"] = round(report.metrics.map, 4)
            out["seconds_mAP"] = round(time.monotonic() - t, 1)
            print("Holidays mAP, default query:", out["holidays_mAP_default_query"])
    out["loadavg"] = open("/proc/loadavg").read().split()[:3]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    brief = {k: {kk: v[kk] for kk in v if kk not in ("per_kind", "misses")} for k, v in out["settings"].items()}
    print(json.dumps(brief, indent=1))
    print("load", os.getloadavg())


def product_recall(lib: Library, args: argparse.Namespace, extras: int) -> dict:
    """Recall of the source through ``Library.query`` itself (k=10, default settings, a new probe each
    time: the copies are not indexed), on the same copies as :func:`near_duplicate_benchmark` makes."""
    from searcher import querying

    # up to date, thumbnails included (a library indexed before them gets them now)
    lib.index([args.folder], backbone=args.backbone, weights=args.weights)
    model = lib.find_model(args.backbone)
    _, paths, _ = folder_vectors(lib, model, str(Path(args.folder).resolve()))
    chosen = sample_sources(paths, args.sources, args.seed)
    ranks: dict[str, list[int]] = {}
    misses, ms = [], []
    querying.THUMBNAIL_EXTRAS = extras
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kinds = [k for k in args.kinds.split(",") if k] or KIND_SETS["wide"]
            manifest = make_benchmark(chosen, tmp, kinds, seed=args.seed, split=args.split)
            for m in manifest:
                t = time.perf_counter()
                (result,) = lib.query([m["copy"]], k=10, backbone=args.backbone)
                ms.append(1000 * (time.perf_counter() - t))
                found = [h.rank for h in result.results if h.path == m["source"]]
                rank = found[0] if found else 11
                ranks.setdefault(m["kind"], []).append(rank)
                if rank != 1:
                    top = result.results[0] if result.results else None
                    misses.append({
                        "source": m["source"], "kind": m["kind"], "rank": found[0] if found else None,
                        "top": top.path if top else None, "top_verified": top.verified if top else None,
                    })  # fmt: skip
    finally:
        querying.THUMBNAIL_EXTRAS = 5
    every = [r for v in ranks.values() for r in v]
    per_kind = {k: round(float(np.mean(np.asarray(v) == 1)), 4) for k, v in ranks.items()}
    return {
        "path": "Library.query (what `searcher query` runs)", "thumbnail_candidates": extras,
        "copies": len(every), "recall@1": round(float(np.mean(np.asarray(every) == 1)), 6),
        "recall@10": round(float(np.mean(np.asarray(every) <= 10)), 6),
        "worst": min((v, k) for k, v in per_kind.items()), "per_kind": per_kind, "misses": misses,
        "ms_per_query_p50": round(float(np.median(ms)), 1), "ms_per_query_mean": round(float(np.mean(ms)), 1),
        "note": "features of the results kept between queries (one open library, as searcher serve)",
    }  # fmt: skip


if __name__ == "__main__":
    main()
