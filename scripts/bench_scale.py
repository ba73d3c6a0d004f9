"""Scale benchmark of the memory-bounded index (``ivfpq-disk``) at millions of vectors.

    python scripts/bench_scale.py --sizes 1000000,10000000 [--store float16] [--out scripts/results/bench_scale.json]
    python scripts/bench.py --scale ...        # the same (not part of the normal or quick run)

Each size runs in its own child process, so ``ru_maxrss`` is the peak resident memory of building
and querying that index alone. The vectors are made from real EfficientNet-Lite0 embeddings of the
shared photos the way ``bench.py``'s search section grows them (``bench.grow``), streamed in chunks
of 50k: nothing but the index and its vectors file is ever written. While they stream, the exact
top-10 of the query vectors is kept (float32, before any storage), so recall@10 is against true
exact search. The index grows the way a library's does: vectors are appended to the disk store,
IVF-PQ is trained (``maintain``) once 131,072 are in, and every later batch is encoded on add.

Reported per size: build time (index work only; generating the vectors and the running ground
truth are timed apart), save time, peak RSS, index and vectors file sizes, query p50/p99 (one query
at a time, 200 queries, warm process; the page cache holds what fits of the vectors file), recall@10,
and the largest difference between a returned score and the float32 cosine (float16 storage).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for entry in (str(REPO), str(REPO / "scripts")):
    if entry not in sys.path:
        sys.path.insert(0, entry)

TRAIN_AT = 131_072
CHUNK = 50_000


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def real_embeddings(path: Path) -> np.ndarray:
    """Real embeddings of the shared photos: the cached ``.npy`` when present, else embedded now."""
    if path.exists():
        return np.load(path).astype(np.float32)
    import bench

    vecs = bench.real_vectors({}, Path(tempfile.gettempdir()))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def merge_top(best_s: np.ndarray, best_i: np.ndarray, scores: np.ndarray, first: int, k: int = 10):
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    all_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
    all_i = np.concatenate([best_i, top + first], axis=1)
    order = np.argsort(-all_s, axis=1)[:, :k]
    return np.take_along_axis(all_s, order, axis=1), np.take_along_axis(all_i, order, axis=1)


def child(n: int, store: str, workdir: Path, vectors_path: Path, queries_n: int) -> dict[str, Any]:
    """Build, save and query one ``ivfpq-disk`` index of ``n`` vectors; returns its figures."""
    from bench import grow, latency_summary

    from searcher.vector_index import DISK_KIND, DISK_MAX_CELLS, VectorIndex, ivf_cells, ivf_search_params
    from searcher.vector_store import DiskVectors, new_store_path

    real = real_embeddings(vectors_path)
    dim = real.shape[1]
    queries = next(grow(real, queries_n, seed=999, chunk=queries_n))
    rss_start = rss_mb()
    home = workdir / f"scale-{n}.faiss"
    store_file = new_store_path(home)
    params = {"store": store, "nlist": min(ivf_cells(n), DISK_MAX_CELLS)}
    disk = DiskVectors(store_file, dim, store, create=True)
    index = VectorIndex(dim, kind=DISK_KIND, params=params, home=home, disk=disk)
    truth_s = np.full((queries_n, 10), -np.inf, np.float32)
    truth_i = np.full((queries_n, 10), -1, np.int64)
    generate_s = truth_time = index_s = 0.0
    started = time.perf_counter()
    chunks = grow(real, n, seed=n, chunk=CHUNK)
    for start in range(0, n, CHUNK):
        t = time.perf_counter()
        chunk = next(chunks)
        generate_s += time.perf_counter() - t
        t = time.perf_counter()
        truth_s, truth_i = merge_top(truth_s, truth_i, queries @ chunk.T, start)
        truth_time += time.perf_counter() - t
        t = time.perf_counter()
        index.add(np.arange(start, start + len(chunk), dtype=np.int64), chunk)
        if not index.approximate and start + len(chunk) >= min(n, TRAIN_AT):
            index.maintain()  # trains IVF-PQ on a sample read back from the vectors file
        index_s += time.perf_counter() - t
        if (start // CHUNK) % 20 == 0:
            print(f"  {n:,}: {start + len(chunk):,} added, {time.perf_counter() - started:.0f} s", flush=True)
    build_wall = time.perf_counter() - started
    t = time.perf_counter()
    index.save(home, revision=1)
    save_s = time.perf_counter() - t
    rss_built = rss_mb()
    peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nprobe, candidates = ivf_search_params(n, int(index.params["nlist"]))
    index.search(queries[:1], 10)
    times, found, score_err = [], [], 0.0
    for qi, q in enumerate(queries):
        t = time.perf_counter()
        s, ids = index.search(q[None], 10)
        times.append(time.perf_counter() - t)
        found.append(ids[0])
        exact = dict(zip(truth_i[qi].tolist(), truth_s[qi].tolist(), strict=True))
        for sc, i in zip(s[0].tolist(), ids[0].tolist(), strict=True):
            if i in exact:
                score_err = max(score_err, abs(sc - exact[i]))
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth_i, strict=True)]
    query = {**latency_summary(times), "recall@10": round(sum(hits) / (10 * len(found)), 4)}
    index_file = home.stat().st_size
    vectors_file = index.disk.path.stat().st_size
    del index
    t = time.perf_counter()
    loaded, _ = VectorIndex.load(home, dim)
    load_s = time.perf_counter() - t
    reopened = [loaded.search(q[None], 10)[1][0] for q in queries[:50]]
    same = float(np.mean([np.array_equal(a, b) for a, b in zip(reopened, found[:50], strict=True)]))
    return {
        "n": n,
        "dim": dim,
        "kind": DISK_KIND,
        "store": store,
        "params": {**loaded.params, "nprobe": nprobe, "candidates": candidates},
        "build_wall_s": round(build_wall, 1),
        "build_index_s": round(index_s, 1),
        "generate_vectors_s": round(generate_s, 1),
        "ground_truth_s": round(truth_time, 1),
        "save_s": round(save_s, 1),
        "load_s": round(load_s, 1),
        "reopened_same_results": same,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_build_mb": round(peak_build, 1),
        "rss_after_build_mb": rss_built,
        "rss_before_index_mb": rss_start,
        "index_file_mb": round(index_file / 1e6, 1),
        "vectors_file_mb": round(vectors_file / 1e6, 1),
        "query": query,
        "max_score_error_vs_float32": round(score_err, 6),
        "faiss_threads": os.environ.get("SEARCHER_FAISS_THREADS", "default"),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }


def run(sizes: list[int], store: str, out: Path, vectors_path: Path, queries_n: int = 200) -> dict[str, Any]:
    report: dict[str, Any] = {
        "command": "python scripts/bench_scale.py " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "runs": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="searcher-scale-", dir=os.environ.get("SEARCHER_SCALE_DIR")))
    try:
        for n in sizes:
            result = workdir / f"result-{n}.json"
            cmd = [sys.executable, __file__, "--child", str(n), "--store", store, "--workdir", str(workdir)]
            cmd += ["--vectors", str(vectors_path), "--queries", str(queries_n), "--result", str(result)]
            print(f"scale {n:,} ({store})", flush=True)
            code = subprocess.run(cmd, check=False).returncode
            entry = json.loads(result.read_text()) if result.exists() else {"n": n, "error": f"exit code {code}"}
            report["runs"].append(entry)
            print(json.dumps(entry), flush=True)
            for leftover in workdir.glob(f"scale-{n}.*"):  # 25 GB at 10M: gone before the next size
                leftover.unlink()
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--store", default="float16", choices=("float32", "float16"))
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--vectors", type=Path, default=REPO / "bench-out" / "shared_vectors.npy")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "bench_scale.json")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        entry = child(args.child, args.store, args.workdir, args.vectors, args.queries)
        args.result.write_text(json.dumps(entry))
        return
    run([int(x) for x in args.sizes.split(",") if x], args.store, args.out, args.vectors, args.queries)


if __name__ == "__main__":
    main()
