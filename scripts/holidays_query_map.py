"""Holidays mAP through ``Library.query`` itself, for probes that are indexed photos of the library.

    python scripts/holidays_query_map.py [--folder ../shared/datasets/holidays-dev/images] [--out JSON]

Indexes the folder (only new work) into a library under the temp folder, then queries each ground-truth
query photo with k = the whole folder, twice: as ``searcher query photo.jpg`` does by default (the indexed
photo embedded again like a new one, with turned views and regional probes) and with ``invariant="none"``
(``--invariant none``: the fast path, its stored vector reused, no network). Writes both mAPs and the
seconds per query (pixel verification of the first 10 included, as the default query does it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from quality_report import HOLIDAYS  # the shared photos (SEARCHER_SHARED)

from searcher.evaluate import GroundTruth, score_rankings
from searcher.library import Library

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=str(HOLIDAYS / "images"))
    ap.add_argument("--groundtruth", default=str(HOLIDAYS / "groundtruth.json"))
    ap.add_argument("--out", default=str(HERE / "results" / "holidays_query_map.json"))
    args = ap.parse_args()
    folder = str(Path(args.folder).resolve())
    truth = GroundTruth.load(args.groundtruth)
    out: dict = {"folder": folder, "queries": len(truth.queries), "modes": {}}
    with Library.open(Path(tempfile.gettempdir()) / "searcher-holidays-query-map", create=True) as lib:
        lib.index([folder])
        everything = len(os.listdir(folder))
        modes = (("default (embedded again)", {}), ("--invariant none (stored vector)", {"invariant": "none"}))
        for mode, extra in modes:
            start = time.monotonic()
            rankings = {}
            for name in truth.queries:
                (result,) = lib.query([os.path.join(folder, name)], k=everything, **extra)
                rankings[name] = [os.path.basename(h.path) for h in result.results]
            metrics = score_rankings(rankings, truth.queries)
            seconds = time.monotonic() - start
            out["modes"][mode] = {
                "mAP": round(metrics.map, 4),
                "seconds": round(seconds, 1),
                "ms_per_query": round(1000 * seconds / len(truth.queries)),
            }
            print(mode, out["modes"][mode], flush=True)
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
