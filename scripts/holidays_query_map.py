"""Holidays mAP through ``Library.query`` itself, for probes that are indexed photos of the library.

    python scripts/holidays_query_map.py [--folder ../shared/datasets/holidays-dev/images] [--out JSON]

Indexes the folder (only new work) into a library under the temp folder, then queries each ground-truth
query photo with k = the whole folder, twice: as ``searcher query photo.jpg`` does for an indexed photo
(its stored vector reused) and with ``invariant="rotations"`` (``--invariant rotations``: the photo
embedded as a new one is, with turned views and regional probes). Writes both mAPs and the seconds.
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
        for mode, extra in (("indexed probe (stored vector)", {}), ("--invariant rotations", {"invariant": True})):
            start = time.monotonic()
            rankings = {}
            for name in truth.queries:
                (result,) = lib.query([os.path.join(folder, name)], k=everything, **extra)
                rankings[name] = [os.path.basename(h.path) for h in result.results]
            metrics = score_rankings(rankings, truth.queries)
            out["modes"][mode] = {"mAP": round(metrics.map, 4), "seconds": round(time.monotonic() - start, 1)}
            print(mode, out["modes"][mode], flush=True)
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
