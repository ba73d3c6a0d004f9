"""Time the candidate + grouping stage of `searcher duplicates` on 100,000 realistic vectors.

    python scripts/bench_duplicates.py [--n 100000] [--sizes 25000,50000] [--vectors bench-out/shared_vectors.npy]

Realistic vectors: real EfficientNet-Lite0 embeddings of the ../shared photos (``--vectors``,
written by ``scripts/dup_benchmark.py --scan-datasets``; embedded here when missing). Each
synthetic vector mixes two real ones (weight 0.55-1 on the first) plus Gaussian noise, so it
stays in the non-negative cone that real pooled CNN features live in (random unrelated photos
are at cosine 0.3-0.6, not 0); 1 % of them are planted near-duplicates of another synthetic
vector (cosine about 0.97). The nearest-neighbour cosine distribution of the synthetic set is
printed next to the real one's.

Measured: candidate generation (:func:`searcher.duplicates.candidate_pairs`: exact below
``IVF_MIN`` vectors, PCA + inverted lists with exact re-scoring above), the candidate recall of
the planted duplicates and of exact neighbours above the floor (on a sample of queries),
grouping (:func:`searcher.duplicates.group_units` over the candidate edges, as the ``similar``
tier runs it), peak memory, and how many pairs the verifier would get (cosine >= the candidate
floor): pixel verification itself is timed per pair by dup_benchmark.py, and that number times
the per-pair cost is the real cost of a first ``duplicates`` run on a library this big.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from searcher import duplicates as dup  # noqa: E402


def shared_dir() -> Path:
    return Path(os.environ.get("SEARCHER_SHARED", REPO.parent / "shared"))


def real_vectors(path: Path | None) -> np.ndarray:
    if path is not None and path.exists():
        return np.load(path).astype(np.float32)
    from searcher.decode import load_for_model
    from searcher.embed import cached_embedder

    emb = cached_embedder("efficientnet_lite0")
    data = shared_dir() / "datasets"
    files = sorted((data / "holidays-dev" / "images").glob("*.jpg")) + sorted(
        (data / "flowers17" / "images").glob("*.jpg")
    )
    out = []
    for start in range(0, len(files), 32):
        batch = np.stack([load_for_model(f, emb.input_size)[0] for f in files[start : start + 32]])
        out.append(emb.embed(batch))
    vecs = np.concatenate(out)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs)
    return vecs


def synthetic(base: np.ndarray, n: int, seed: int = 0, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``n`` vectors near the real ones (see the module docstring) and the planted pairs ``(m, 2)``."""
    rng = np.random.default_rng(seed)
    dim = base.shape[1]
    out = np.empty((n, dim), np.float32)
    scale = float(np.mean(np.linalg.norm(base - base.mean(0), axis=1)))
    for start in range(0, n, 20000):
        m = min(20000, n - start)
        a = base[rng.integers(0, len(base), m)]
        b = base[rng.integers(0, len(base), m)]
        w = rng.uniform(0.55, 1.0, (m, 1)).astype(np.float32)
        x = w * a + (1 - w) * b + rng.normal(0, noise * scale / np.sqrt(dim), (m, dim)).astype(np.float32)
        out[start : start + m] = x
    chosen = rng.choice(n, size=2 * (n // 100), replace=False)  # disjoint: no copy of a copy
    src, dup_of = chosen[: n // 100], chosen[n // 100 :]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out[dup_of] = out[src] + rng.normal(0, 0.25 / np.sqrt(dim), (len(dup_of), dim)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, np.stack([src, dup_of], axis=1)


def nn_cosines(vecs: np.ndarray, queries: int = 500, seed: int = 1) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    q = rng.choice(len(vecs), size=min(queries, len(vecs)), replace=False)
    sims = vecs[q] @ vecs.T
    sims[np.arange(len(q)), q] = -1
    top = np.sort(sims, axis=1)[:, ::-1]
    return {
        "nn1_median": round(float(np.median(top[:, 0])), 3),
        "nn10_median": round(float(np.median(top[:, min(9, top.shape[1] - 1)])), 3),
        "random_pair_median": round(float(np.median(sims[:, : min(2000, sims.shape[1])])), 3),
    }


def candidate_recall(vecs: np.ndarray, i: np.ndarray, j: np.ndarray, k: int, floor: float, queries: int = 400):
    """Of the exact k nearest neighbours (cosine >= floor) of some rows, how many are candidates."""
    rng = np.random.default_rng(2)
    q = rng.choice(len(vecs), size=min(queries, len(vecs)), replace=False)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    sims = vecs[q] @ vecs.T
    sims[np.arange(len(q)), q] = -2
    top = np.argsort(-sims, axis=1)[:, :k]
    want = hit = 0
    for row, qi in enumerate(q.tolist()):
        for c in top[row].tolist():
            if sims[row, c] >= floor:
                want += 1
                hit += (min(qi, c), max(qi, c)) in found
    return round(hit / max(1, want), 4)


def time_stage(vectors: np.ndarray, planted: np.ndarray, k: int = dup.DEFAULT_K) -> dict:
    floor = min(dup.DEFAULT_CANDIDATE_COSINE, dup.DEFAULT_SIMILAR_COSINE)
    t0 = time.perf_counter()
    i, j, s = dup.candidate_pairs(vectors, k=k, min_cosine=floor)
    t1 = time.perf_counter()
    # the bookkeeping find_duplicates does with candidate pairs, then the representative grouping
    cos = {(a, b): c for a, b, c in zip(i.tolist(), j.tolist(), s.tolist(), strict=True)}
    nbrs: dict[int, set[int]] = {}
    for a, b in cos:
        nbrs.setdefault(a, set()).add(b)
        nbrs.setdefault(b, set()).add(a)
    groups = dup.group_units(
        len(vectors), list(range(len(vectors))), lambda a, b: cos.get((min(a, b), max(a, b))), nbrs,
        dup.DEFAULT_SIMILAR_COSINE, lazy_limit=0,
    )  # fmt: skip
    t2 = time.perf_counter()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    planted_hit = np.mean([(min(a, b), max(a, b)) in found for a, b in planted.tolist()])
    return {
        "n": len(vectors),
        "index": "exact (flat)" if len(vectors) < dup.IVF_MIN else f"PCA-{dup.REDUCED_DIM} + IVF, exact re-score",
        "candidate_pairs": len(i),
        "pairs_to_verify": int((s >= dup.DEFAULT_CANDIDATE_COSINE).sum()),
        "groups": len(groups),
        "candidates_s": round(t1 - t0, 2),
        "grouping_s": round(t2 - t1, 2),
        "total_s": round(t2 - t0, 2),
        "planted_duplicate_recall": round(float(planted_hit), 4),
        "candidate_recall_vs_exact_knn": candidate_recall(vectors, i, j, k, floor),
        "peak_rss_mb": round(rss1 / 1024, 1),  # the whole process so far (vectors included)
        "vectors_mb": round(vectors.nbytes / 1e6, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def run(n: int = 100_000, vectors_path: Path | None = None, sizes: tuple[int, ...] = (), threads: int = 0) -> dict:
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    base = real_vectors(vectors_path)
    results = []
    real_stats = nn_cosines(base)
    for size in sorted({*sizes, n}):
        vecs, planted = synthetic(base, size)
        stats = nn_cosines(vecs)
        results.append({**time_stage(vecs, planted), "synthetic_cosines": stats})
        print(json.dumps(results[-1]), flush=True)
    # fit t = a * n^b over the sizes that use the same index kind as the largest
    big = [r for r in results if (r["n"] >= dup.IVF_MIN) == (n >= dup.IVF_MIN)] or results
    if len(big) >= 2:
        b = float(np.polyfit(np.log([r["n"] for r in big]), np.log([r["total_s"] for r in big]), 1)[0])
    else:
        b = 1.5
    last = results[-1]
    est = last["total_s"] * (1_000_000 / last["n"]) ** b
    return {
        "command": "python scripts/bench_duplicates.py " + " ".join(sys.argv[1:]),
        "base_real_vectors": len(base),
        "real_cosines": real_stats,
        "runs": results,
        "scaling_exponent": round(b, 3),
        "estimate_1m_s": round(float(est), 1),
        "estimate_1m_pairs_to_verify": int(last["pairs_to_verify"] * 1_000_000 / last["n"]),
        "cpu_count": os.cpu_count(),
        "faiss_threads": threads or "default",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--sizes", default="25000,50000", help="smaller sizes to fit the scaling exponent")
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss's default)")
    ap.add_argument("--vectors", type=Path, default=REPO / "bench-out" / "shared_vectors.npy")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "bench_duplicates.json")
    args = ap.parse_args()
    sizes = tuple(int(x) for x in args.sizes.split(",") if x)
    result = run(args.n, args.vectors, sizes=sizes, threads=args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
