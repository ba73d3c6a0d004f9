"""Time the candidate + grouping stage of `searcher duplicates` on 100,000 realistic vectors.

    python scripts/bench_duplicates.py [--n 100000] [--vectors bench-out/real_vectors.npy] [--out bench-out/...json]

Realistic vectors: real EfficientNet-Lite0 embeddings of the ../shared photos (taken from
``--vectors``, written by ``scripts/dup_benchmark.py``, or embedded here), each repeated with
noise so that a repeat sits at cosine ~0.8 from its origin (like other photos of a kind), plus
1 % planted near-duplicates (cosine ~0.98). Pixel verification is not part of this timing
(it runs only on candidate pairs above the cosine floor; its per-pair cost is measured by
dup_benchmark.py). Writes JSON with the timings at several sizes and an estimate for 1M.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from searcher.duplicates import DEFAULT_CANDIDATE_COSINE, DEFAULT_SIMILAR_COSINE, candidate_pairs, group_units  # noqa: E402


def shared_dir() -> Path:
    return Path(os.environ.get("SEARCHER_SHARED", REPO.parent / "shared"))


def real_vectors(path: Path | None) -> np.ndarray:
    if path is not None and path.exists():
        return np.load(path)
    from searcher.decode import load_for_model
    from searcher.embed import cached_embedder

    emb = cached_embedder("efficientnet_lite0")
    files = sorted((shared_dir() / "datasets" / "holidays-dev" / "images").glob("*.jpg"))
    files += sorted((shared_dir() / "datasets" / "flowers17" / "images").glob("*.jpg"))[::4]
    out = []
    for start in range(0, len(files), 32):
        batch = np.stack([load_for_model(f, emb.input_size)[0] for f in files[start : start + 32]])
        out.append(emb.embed(batch))
    vecs = np.concatenate(out)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs)
    return vecs


def synthetic(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dim = base.shape[1]
    origin = base[rng.integers(0, len(base), n)]
    sigma = np.full((n, 1), 0.75 / np.sqrt(dim), np.float32)  # cosine ~0.8 to the origin
    dup = rng.random(n) < 0.01
    sigma[dup] = 0.2 / np.sqrt(dim)  # planted near-duplicates, cosine ~0.98
    vecs = origin + rng.normal(size=(n, dim)).astype(np.float32) * sigma
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs.astype(np.float32)


def time_stage(vectors: np.ndarray, k: int = 10) -> dict:
    t0 = time.perf_counter()
    i, j, s = candidate_pairs(vectors, k=k, min_cosine=min(DEFAULT_CANDIDATE_COSINE, DEFAULT_SIMILAR_COSINE))
    t1 = time.perf_counter()
    nbrs: dict[int, set[int]] = {}
    score = {}
    for a, b, c in zip(i.tolist(), j.tolist(), s.tolist(), strict=True):
        nbrs.setdefault(a, set()).add(b)
        nbrs.setdefault(b, set()).add(a)
        score[(a, b)] = c
    groups = group_units(
        len(vectors), list(range(len(vectors))), lambda a, b: score.get((min(a, b), max(a, b))), nbrs,
        DEFAULT_SIMILAR_COSINE, lazy_limit=0,
    )  # fmt: skip
    t2 = time.perf_counter()
    return {
        "n": len(vectors),
        "candidate_pairs": len(i),
        "groups": len(groups),
        "candidates_s": round(t1 - t0, 3),
        "grouping_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
        "peak_pairs_memory_mb": round(len(vectors) * (k + 1) * 16 / 1e6, 1),
    }


def run(n: int = 100_000, vectors_path: Path | None = None, sizes: tuple[int, ...] = ()) -> dict:
    base = real_vectors(vectors_path)
    results = []
    for size in sorted({*sizes, n}):
        vecs = synthetic(base, size)
        results.append(time_stage(vecs))
        print(json.dumps(results[-1]), flush=True)
    # fit t = a * n^b on the sizes that use the same index kind as the largest
    big = [r for r in results if r["n"] >= 50_000] or results
    if len(big) >= 2:
        b = np.polyfit(np.log([r["n"] for r in big]), np.log([r["total_s"] for r in big]), 1)[0]
    else:
        b = 1.5
    last = results[-1]
    est = last["total_s"] * (1_000_000 / last["n"]) ** b
    return {
        "base_real_vectors": len(base),
        "runs": results,
        "scaling_exponent": round(float(b), 3),
        "estimate_1m_s": round(float(est), 1),
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--vectors", type=Path, default=REPO / "bench-out" / "real_vectors.npy")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "bench_duplicates.json")
    args = ap.parse_args()
    result = run(args.n, args.vectors, sizes=(50_000, 75_000))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
