"""What the re-ranking presets cost per query at library scale (no network: probe vectors given).

For 10k and 100k vectors (real EfficientNet-Lite0 embeddings of the shared photos, mixed and noised
as in ``scripts/bench.py``), flat and IVF-PQ indexes: milliseconds per query of
:func:`searcher.rerank.retrieve` for plain search, the ``instance`` preset (one probe view; a new
photo adds 3 turned views, i.e. 4 searches), ``instance`` + QE and the ``category`` preset, and the
memory each needs per query (the shortlist's vectors and similarity matrix).

    .venv/bin/python scripts/bench_rerank.py      # ~3 min on 2 cores; writes bench-out/bench_rerank.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def per_query_ms(index: Any, probes: np.ndarray, settings: Any) -> dict[str, float]:
    from searcher import rerank

    def reconstruct(ids: np.ndarray) -> np.ndarray:
        return np.stack([index.reconstruct(int(i)) for i in ids])

    times = []
    for probe in probes:
        started = time.perf_counter()
        rerank.retrieve(index.search, reconstruct, probe[None], 10, settings)
        times.append(time.perf_counter() - started)
    ms = 1000 * np.asarray(times[1:])  # the first query warms caches
    return {"p50_ms": round(float(np.median(ms)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", default=str(REPO / "bench-out" / "bench_rerank.json"))
    parser.add_argument("--quick", action="store_true", help="An eighth of the photos as seeds (a smoke test).")
    args = parser.parse_args()
    import bench  # scripts/bench.py: the same generator of library-like vectors

    from searcher import rerank
    from searcher.vector_index import VectorIndex

    real = bench.real_vectors({"quick": args.quick}, Path("."))
    probes = np.concatenate(list(bench.grow(real, args.queries + 1, seed=999)))
    presets = {
        "plain": rerank.RerankSettings(),
        "instance": rerank.settings(preset_name="instance"),
        "instance + QE": rerank.settings(expand=True, preset_name="instance"),
        "category": rerank.settings(preset_name="category"),
    }
    result: dict[str, Any] = {"dim": int(real.shape[1]), "load_average_before": bench.load(), "sizes": {}}
    for n in (int(s) for s in args.sizes.split(",")):
        index = VectorIndex(real.shape[1])
        for start, chunk in zip(range(0, n, 50_000), bench.grow(real, n, seed=n), strict=False):
            index.add(np.arange(start, start + len(chunk), dtype=np.int64), chunk)
        entry: dict[str, Any] = {}
        for kind in ("flat", "ivfpq"):
            index.set_kind(kind)
            entry[kind] = {name: per_query_ms(index, probes, s) for name, s in presets.items()}
            for name, r in entry[kind].items():
                print(f"{n:>8,} {kind:6} {name:14} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms", flush=True)
        result["sizes"][str(n)] = entry
    dim = real.shape[1]
    result["memory_per_query_bytes"] = {
        name: s.shortlist * dim * 4 + s.shortlist**2 * 4 if s.active else 0 for name, s in presets.items()
    }
    result["load_average_after"] = bench.load()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
