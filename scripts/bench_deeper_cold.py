"""What the default query's deeper verification costs a new photo with nothing like it in the library.

    python scripts/bench_deeper_cold.py [--probes 30] [--out JSON]

Indexes holidays-dev (only new work) into the library ``scripts/holidays_query_map.py`` uses, then queries
``--probes`` Flowers-17 photos (none of which is a copy or another shot of anything there, so verification
ties none of their first 10 results and the default also verifies results 11-30), the results' features
not cached (as a new ``searcher query`` process for each probe), with ``verify_deeper`` 0 and as shipped,
twice each, alternating. Writes p50 and mean per run and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from quality_report import FLOWERS, HOLIDAYS  # the shared photos (SEARCHER_SHARED)

from searcher import rerank
from searcher.duplicates import thresholds_for
from searcher.library import Library

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=30)
    ap.add_argument("--out", default=str(HERE / "results" / "deeper_cold_probes.json"))
    args = ap.parse_args()
    shipped = rerank.DEFAULTS
    probes = sorted(str(p) for p in (FLOWERS / "images").rglob("*.jpg"))[::40][: args.probes]
    runs = []
    with Library.open(Path(tempfile.gettempdir()) / "searcher-holidays-query-map", create=True) as lib:
        lib.index([HOLIDAYS / "images"])
        lib.query([probes[0]], k=10)  # the network is loaded once, not timed
        copy_at = thresholds_for(lib.find_model()).verified
        for deeper in (0, shipped.verify_deeper, 0, shipped.verify_deeper):
            rerank.DEFAULTS = rerank.PRESETS["instance"] = dataclasses.replace(shipped, verify_deeper=deeper)
            ms, untied = [], 0
            for probe in probes:
                lib._verify_cache = None  # no result's features kept from the probe before
                start = time.perf_counter()
                (result,) = lib.query([probe], k=10)
                ms.append(1000 * (time.perf_counter() - start))
                untied += not any(
                    (h.verified or 0.0) >= copy_at or (h.inliers or 0) >= rerank.SPATIAL_INLIERS for h in result.results
                )  # fmt: skip
            runs.append({"verify_deeper": deeper, "p50_ms": round(statistics.median(ms), 1),
                         "mean_ms": round(statistics.mean(ms), 1), "probes": len(ms), "none_tied": untied})  # fmt: skip
            print(runs[-1], flush=True)
    rerank.DEFAULTS = rerank.PRESETS["instance"] = shipped
    out = {"library": str(HOLIDAYS / "images"), "probes_from": str(FLOWERS / "images"), "runs": runs,
           "loadavg": os.getloadavg()}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
