"""Speed benchmark of searcher: indexing, memory, query latency, vector search, duplicates.

    python scripts/bench.py                 # full run (~10-15 min on 2 idle cores, ~10 GB RAM at peak)
    python scripts/bench.py --quick         # tiny sizes (< 1 min): proves the script still runs
    python scripts/bench.py --sections indexing,search --out bench-out/x.json

Writes one JSON report (default ``bench-out/bench.json``) and prints a short table. Every
ratio compares numbers measured in the same run on the same machine; the load average is
recorded at the start and end of each section (other work on the machine skews timings).

1. ``indexing``: images/s of ``Library.index`` (scan, hash, decode, embed, SQLite, FAISS; the
   model is built beforehand) on generated 3000x2000 and 1024x768 JPEGs (holidays-dev photos,
   upscaled, cropped, with sensor-like noise) and on flowers17, next to the model's pure
   inference rate on pre-decoded batches and the naive approach (``keras.utils.load_img`` +
   ``model.predict`` one image at a time), plus decoding alone (1 vs N threads, processes,
   with and without JPEG draft) and a check that the compiled model traced exactly once.
2. ``memory``: peak RSS (VmHWM) of a child process indexing 10k and 50k generated small
   JPEGs (a few hundred pictures, each file made unique by a JPEG comment so the content-hash
   dedup does not skip it; identical pixels give identical vectors, which does not matter for
   memory). The child uses the tiny ``mobilenet_025_128`` backbone with random weights so 50k
   images index in about a minute: the pipeline and its buffers are the same for every model.
3. ``latency``: query latency p50/p99 for the CLI started cold (an indexed probe: no TensorFlow;
   a new image: TensorFlow and the model load) and the warm HTTP server (``searcher serve``).
4. ``search``: FAISS search alone (``VectorIndex.search``, re-ranking included) at 10k, 100k
   and 1M vectors for flat / ivfpq / hnsw, with recall@10 against exact search. The vectors are
   real EfficientNet-Lite0 embeddings of the shared photos grown to 1M by mixing and noise
   (each is a convex mix of two real photos' vectors plus the difference of two others and
   small Gaussian noise; pairwise cosine statistics are reported next to the real ones). HNSW
   is built up to ``--hnsw-max`` vectors (its build is ~1 ms per vector on 2 cores) and its 1M
   build time is extrapolated (n log n fit), which the report says.
5. ``duplicates``: time of the candidate + grouping stage of ``searcher duplicates`` over 100k
   vectors (``scripts/bench_duplicates.py``'s ``time_stage`` on its planted-duplicate vectors).

``--scale`` (never part of the runs above) hands over to ``scripts/bench_scale.py``: the
memory-bounded ``ivfpq-disk`` index at 1M and 10M vectors (build time, peak RSS, disk, p50/p99,
recall@10), one child process per size.

``--dup-library 3000,30000`` (never part of the runs above) hands over to ``scripts/dup_library_bench.py``
once per size: ``searcher duplicates`` on a library of edited copies + other shots of the same scenes,
with the time split (candidates / thumbnails / verification / grouping), pair precision, copy-to-original
recall per kind of edit and why each missed copy was missed (``scripts/results/dup_library_SIZE.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(REPO / "scripts") not in sys.path:  # bench_runtime.py beside this file
    sys.path.insert(0, str(REPO / "scripts"))

SECTIONS = ("indexing", "memory", "latency", "search", "duplicates", "runtimes")
OPTIONAL_SECTIONS = ("web",)  # run only when named: --sections web (scripts/bench_web.py, ~5 min)

FULL = {
    "big_images": 192,  # 3000x2000
    "mid_images": 256,  # 1024x768
    "flowers": None,  # all 1360
    "naive_images": 64,
    "decode_images": 96,
    "memory_files": (10_000, 50_000),
    "memory_pictures": 400,
    "cli_runs": 10,
    "cli_new_runs": 3,
    "server_requests": 100,
    "search_sizes": (10_000, 100_000, 1_000_000),
    "flat_threshold_sizes": (20_000, 50_000),
    "queries": 200,
    "flat_queries": {10_000: 200, 20_000: 100, 50_000: 60, 100_000: 40, 1_000_000: 10},
    "hnsw_max": 100_000,
    "duplicates_n": 100_000,
    "runtime_images": 256,  # 1024x768, per runtime (scripts/bench_runtime.py)
}
QUICK = {
    "big_images": 6,
    "mid_images": 8,
    "flowers": 24,
    "naive_images": 4,
    "decode_images": 6,
    "memory_files": (100, 300),
    "memory_pictures": 20,
    "cli_runs": 1,
    "cli_new_runs": 0,
    "server_requests": 5,
    "search_sizes": (3_000,),
    "flat_threshold_sizes": (),
    "queries": 30,
    "flat_queries": {3_000: 30},
    "hnsw_max": 3_000,
    "duplicates_n": 3_000,
    "runtime_images": 8,
}


# --- small helpers -------------------------------------------------------------------------------


def shared_dir() -> Path:
    return Path(os.environ.get("SEARCHER_SHARED", REPO.parent / "shared"))


def load() -> float:
    return round(os.getloadavg()[0], 2)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else float("nan")


def latency_summary(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else None,
    }


def rss_kb(field: str = "VmRSS") -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    import faiss

    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_mb": mem,
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
    }


class Section:
    """Records wall time and load average around one section of the report."""

    def __init__(self, report: dict[str, Any], name: str) -> None:
        self.data: dict[str, Any] = report.setdefault(name, {})
        self.name = name

    def __enter__(self) -> dict[str, Any]:
        self.started = time.perf_counter()
        self.data["load_avg_start"] = load()
        print(f"== {self.name} (load {self.data['load_avg_start']})", flush=True)
        return self.data

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.data["load_avg_end"] = load()
        self.data["seconds"] = round(time.perf_counter() - self.started, 1)
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            self.data["error"] = f"{type(exc).__name__}: {exc}"
            print(f"   {self.name} failed: {self.data['error']}", flush=True)
            return not os.environ.get("BENCH_RAISE")
        return False


# --- generated photos ----------------------------------------------------------------------------


def source_photos() -> list[Path]:
    files = sorted((shared_dir() / "datasets" / "holidays-dev" / "images").glob("*.jpg"))
    if not files:
        raise SystemExit(f"no holidays-dev photos under {shared_dir()}: set SEARCHER_SHARED")
    return files


def make_photos(out: Path, n: int, size: tuple[int, int], seed: int, quality: int = 90) -> dict[str, Any]:
    """``n`` distinct JPEGs of ``size`` made from real photos: random crop, upscale, noise."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    src = source_photos()
    total = 0
    for i in range(n):
        with Image.open(src[(i * 7 + seed) % len(src)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.8, 1.0)), int(h * rng.uniform(0.8, 1.0))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            big = im.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.Resampling.BICUBIC)
        arr = np.asarray(big, dtype=np.int16)
        noise = rng.integers(-10, 11, size=arr.shape[:2] + (1,), dtype=np.int16)  # luminance grain: ~1.8 MB at 6 Mpx
        arr = np.clip(arr + noise, 0, 255).astype(np.uint8)
        path = out / f"gen_{seed}_{i:05d}.jpg"
        Image.fromarray(arr).save(path, quality=quality)
        total += path.stat().st_size
    return {"files": n, "size": f"{size[0]}x{size[1]}", "mean_file_mb": round(total / max(n, 1) / 1e6, 2)}


def unique_copies(pictures: list[bytes], out: Path, n: int, per_folder: int = 1000) -> None:
    """``n`` JPEG files cycling through ``pictures``, each made byte-unique by a JPEG comment."""
    for i in range(n):
        data = pictures[i % len(pictures)]
        comment = f"searcher bench copy {i}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        folder = out / f"d{i // per_folder:03d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        at = 2 + (2 + int.from_bytes(data[4:6], "big") if data[2:4] == b"\xff\xe0" else 0)  # after SOI, APP0
        (folder / f"c{i:06d}.jpg").write_bytes(data[:at] + segment + data[at:])


# --- 1. indexing ---------------------------------------------------------------------------------


def warm_library_model(tmp: Path) -> Any:
    """Index two images so the process-wide embedder (as Library builds it) is loaded; return it."""
    from PIL import Image

    from searcher import Library

    folder = tmp / "warm"
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(source_photos()[:2]):
        Image.open(f).save(folder / f"w{i}.jpg")
    started = time.perf_counter()
    with Library.open(tmp / "warm-lib") as lib:
        lib.index([folder])
        model = lib.find_model()
        embedder = lib.embedder_for(model)
    return embedder, time.perf_counter() - started


def index_folder(folder: Path, lib_dir: Path, **kw: Any) -> dict[str, Any]:
    from searcher import Library

    with Library.open(lib_dir) as lib:
        started, cpu = time.perf_counter(), time.process_time()
        report = lib.index([folder], **kw)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    embed_s = getattr(report, "embed_seconds", 0.0) or wall
    return {
        "images": report.embedded,
        "failed": report.failed,
        "wall_s": round(wall, 2),
        "images_per_s": round(report.embedded / wall, 2),
        "embed_stage_images_per_s": round(report.embedded / embed_s, 2),
        "cpu_ms_per_image": round(1000 * cpu / max(report.embedded, 1), 2),
    }


def predecode(files: list[Path], size: tuple[int, int]) -> np.ndarray:
    from searcher.pipeline import decode_stream

    return np.stack([d.pixels for d in decode_stream(files, str, size) if d.pixels is not None])


def pure_inference(embedder: Any, pixels: np.ndarray, batch: int = 32) -> dict[str, Any]:
    embedder.embed(pixels[:batch])  # warm
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(pixels), batch):
        embedder.embed(pixels[start : start + batch])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "images": len(pixels),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(pixels) / seconds, 2),
        "cpu_ms_per_image": round(1000 * cpu / len(pixels), 2),
    }


def pipeline_only(embedder: Any, files: list[Path]) -> dict[str, Any]:
    """Decode + model through searcher.pipeline alone (no SQLite, hashing or FAISS), and how long
    the model waited for input (the first batch's decode is counted: nothing to overlap it with)."""
    from searcher.pipeline import prefetch_batches

    stats: dict[str, float] = {}
    started = time.perf_counter()
    n = 0
    for batch in prefetch_batches([str(f) for f in files], str, embedder.input_size, 32, stats=stats):
        embedder.embed(batch.pixels)
        n += len(batch)
    seconds = time.perf_counter() - started
    first = stats.get("first_wait_s", 0.0)
    return {
        "images": n,
        "images_per_s": round(n / seconds, 2),
        "first_batch_wait_s": round(first, 3),
        # after the first batch: the share of the time the model sat idle waiting for decoded input
        "model_waiting_after_first_batch": round((stats["wait_s"] - first) / max(seconds - first, 1e-9), 3),
    }


def naive(embedder: Any, files: list[Path]) -> dict[str, Any]:
    """What a first attempt looks like: keras.utils.load_img + model.predict, one image at a time."""
    import keras

    size = embedder.spec.input_size
    model, preprocess = embedder.model, embedder.spec.preprocess

    def one(path: Path) -> np.ndarray:
        img = keras.utils.load_img(path, target_size=(size, size))
        x = preprocess(keras.utils.img_to_array(img)[None])
        fmap = model.predict(x, verbose=0)
        v = fmap.mean(axis=(1, 2))[0]
        return v / np.linalg.norm(v)

    one(files[0])  # warm
    started = time.perf_counter()
    for f in files:
        one(f)
    seconds = time.perf_counter() - started
    return {"images": len(files), "seconds": round(seconds, 2), "images_per_s": round(len(files) / seconds, 2)}


def decode_rates(files: list[Path], size: tuple[int, int]) -> dict[str, Any]:
    from searcher.decode import open_image, to_model_input
    from searcher.pipeline import decode_stream, default_workers

    out: dict[str, Any] = {}
    cores = default_workers()

    def rate(**kw: Any) -> float:
        started, cpu = time.perf_counter(), time.process_time()
        n = sum(1 for _ in decode_stream(files, str, size, **kw))
        out.setdefault("cpu_ms_per_image", round(1000 * (time.process_time() - cpu) / max(n, 1), 2))
        return round(n / (time.perf_counter() - started), 1)

    out["threads_1_images_per_s"] = rate(workers=1)
    out[f"threads_{cores}_images_per_s"] = rate(workers=cores)
    out[f"processes_{cores}_images_per_s_incl_startup"] = rate(workers=cores, processes=True)
    # one thread, with and without JPEG draft (DCT-domain downscaling)
    with_draft, without = [], []
    for f in files[: max(4, len(files) // 3)]:
        t = time.perf_counter()
        to_model_input(open_image(f, min_side=max(size)), size)
        with_draft.append(time.perf_counter() - t)
        t = time.perf_counter()
        to_model_input(open_image(f, min_side=None), size)
        without.append(time.perf_counter() - t)
    decoded = open_image(files[0], min_side=max(size))
    out["draft_ms"] = round(1000 * statistics.median(with_draft), 2)
    out["no_draft_ms"] = round(1000 * statistics.median(without), 2)
    out["draft_decoded_size"] = f"{decoded.image.size[0]}x{decoded.image.size[1]}"
    out["original_size"] = f"{decoded.width}x{decoded.height}"
    return out


def section_indexing(cfg: dict[str, Any], tmp: Path, data: dict[str, Any], ctx: dict[str, Any]) -> None:
    embedder, build_s = warm_library_model(tmp)
    ctx["embedder"] = embedder
    data["model"] = {"backbone": embedder.spec.name, "build_and_warm_s": round(build_s, 1), "gpu": embedder.gpu}
    traces_before = embedder._forward.experimental_get_tracing_count()
    size = embedder.input_size
    sets = {
        "jpeg_3000x2000": lambda d: make_photos(d, cfg["big_images"], (3000, 2000), seed=1),
        "jpeg_1024x768": lambda d: make_photos(d, cfg["mid_images"], (1024, 768), seed=2),
    }
    flowers = sorted((shared_dir() / "datasets" / "flowers17" / "images").glob("*.jpg"))
    for name, make in [*sets.items(), ("flowers17", None)]:
        print(f"   {name} ...", flush=True)
        entry: dict[str, Any] = {}
        if make is not None:
            folder = tmp / name
            started = time.perf_counter()
            entry["generated"] = make(folder)
            entry["generated"]["seconds"] = round(time.perf_counter() - started, 1)
            files = sorted(folder.glob("*.jpg"))
        else:
            files = flowers[: cfg["flowers"]] if cfg["flowers"] else flowers
            folder = tmp / "flowers-subset"
            if cfg["flowers"]:
                folder.mkdir(exist_ok=True)
                for f in files:
                    os.symlink(f, folder / f.name)
                files = sorted(folder.glob("*.jpg"))  # the paths the library knows them by
            else:
                folder = flowers[0].parent
            entry["files"] = len(files)
        entry["load_avg"] = load()
        entry["index"] = index_folder(folder, tmp / f"lib-{name}")
        entry["pure_inference"] = pure_inference(embedder, predecode(files, size))
        entry["pipeline_only"] = pipeline_only(embedder, files)
        entry["naive"] = naive(embedder, files[: cfg["naive_images"]])
        entry["decode"] = decode_rates(files[: cfg["decode_images"]], size)
        entry["load_avg_after"] = load()
        idx, pure, nav = entry["index"]["images_per_s"], entry["pure_inference"]["images_per_s"], entry["naive"]
        entry["index_vs_pure"] = round(idx / pure, 3)
        # With every core busy, rates go as 1 / CPU time per image: the best ratio this machine allows
        entry["cpu_bound_index_vs_pure"] = round(
            entry["pure_inference"]["cpu_ms_per_image"] / entry["index"]["cpu_ms_per_image"], 3
        )
        entry["index_vs_naive"] = round(idx / nav["images_per_s"], 3)
        data[name] = entry
        if name == "flowers17":
            ctx["flowers_lib"] = tmp / f"lib-{name}"
            ctx["flowers_files"] = files
        print(
            f"   {name}: index {idx:.1f} img/s, pure {pure:.1f}, naive {nav['images_per_s']:.1f} "
            f"(x{entry['index_vs_pure']:.2f} of pure, x{entry['index_vs_naive']:.2f} of naive)",
            flush=True,
        )
    data["tf_function_traces_during_indexing"] = embedder._forward.experimental_get_tracing_count() - traces_before
    data["tf_function_traces_total"] = embedder._forward.experimental_get_tracing_count()


# --- 2. memory -----------------------------------------------------------------------------------


def memory_child(folder: Path, lib_dir: Path, backbone: str) -> None:
    """Runs in a child process: index ``folder`` and print peak memory as JSON."""
    from searcher import Library
    from searcher.library import Progress

    samples: list[tuple[int, int]] = []

    class Sampler(Progress):
        done = 0

        def begin(self, label: str, total: int) -> None:
            self.label, self.total, self.done = label, total, 0
            if label == "Embedding":
                samples.append((0, rss_kb()))  # after scanning, hashing and planning

        def advance(self, n: int = 1) -> None:
            self.done += n
            if self.label == "Embedding" and self.done % 500 < n:
                samples.append((self.done, rss_kb()))

    with Library.open(lib_dir) as lib:
        started = time.perf_counter()
        report = lib.index([folder], backbone=backbone, weights="none", progress=Sampler())
        seconds = time.perf_counter() - started
        lib_dim = lib.find_model().dim
        index_bytes = len(lib.vector_index(lib.find_model())) * (4 * lib_dim + 16)
    print(
        "MEMORY "
        + json.dumps(
            {
                "embedded": report.embedded,
                "reused": report.reused,
                "seconds": round(seconds, 1),
                "vmhwm_mb": round(rss_kb("VmHWM") / 1024, 1),
                "rss_end_mb": round(rss_kb() / 1024, 1),
                "flat_index_mb": round(index_bytes / 2**20, 1),
                "rss_samples_mb": [(d, round(r / 1024, 1)) for d, r in samples],
                "dim": lib_dim,
            }
        ),
        flush=True,
    )


def section_memory(cfg: dict[str, Any], tmp: Path, data: dict[str, Any], ctx: dict[str, Any]) -> None:
    from PIL import Image

    src = source_photos()
    pictures = []
    for i in range(cfg["memory_pictures"]):
        with Image.open(src[i % len(src)]) as im:
            buf = io.BytesIO()
            im.convert("RGB").resize((320, 240)).rotate(90 * (i // len(src))).save(buf, format="JPEG", quality=85)
            pictures.append(buf.getvalue())
    data["backbone"] = "mobilenet_025_128 (random weights; 256-d)"
    data["note"] = (
        "each file is byte-unique (JPEG comment) so none is skipped by the content-hash dedup; "
        "the pixels repeat every memory_pictures files"
    )
    data["runs"] = []
    for n in cfg["memory_files"]:
        folder = tmp / f"mem-{n}"
        unique_copies(pictures, folder, n)
        cmd = [sys.executable, __file__, "--memory-child", str(folder), str(tmp / f"mem-lib-{n}")]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        line = [x for x in proc.stdout.splitlines() if x.startswith("MEMORY ")]
        if not line:
            raise RuntimeError(f"memory child failed: {proc.stderr[-1500:]}")
        run = {"files": n, **json.loads(line[-1][len("MEMORY ") :])}
        run["wall_s"] = round(time.perf_counter() - started, 1)
        run["rss_minus_flat_index_mb"] = round(run["vmhwm_mb"] - run["flat_index_mb"], 1)
        samples = run["rss_samples_mb"]
        if len(samples) >= 3:  # during the embedding stage only: pixels in flight, SQLite, the growing index
            run["pipeline_warmup_mb"] = round(samples[1][1] - samples[0][1], 1)  # threads, buffers, TF arenas
            (d0, r0), (d1, r1) = samples[1], samples[-1]  # from ~500 files in (after warm-up) to the end
            index_growth = (d1 - d0) * (4 * run["dim"] + 16) / 2**20
            run["embedding_stage_growth_mb"] = round(r1 - r0, 1)
            run["embedding_stage_growth_minus_index_mb"] = round(r1 - r0 - index_growth, 1)
        data["runs"].append(run)
        print(f"   {n} files: peak {run['vmhwm_mb']} MB (flat index {run['flat_index_mb']} MB)", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(tmp / f"mem-lib-{n}", ignore_errors=True)
    if len(data["runs"]) >= 2:
        a, b = data["runs"][0], data["runs"][-1]
        data["growth_mb_per_1k_files_excluding_index"] = round(
            (b["rss_minus_flat_index_mb"] - a["rss_minus_flat_index_mb"]) / ((b["files"] - a["files"]) / 1000), 3
        )
        if "rss_samples_mb" in a and a["rss_samples_mb"] and b["rss_samples_mb"]:
            # the file list and plan (paths, sizes, hashes) are held for the whole run: per-file metadata
            data["plan_metadata_kb_per_file"] = round(
                (b["rss_samples_mb"][0][1] - a["rss_samples_mb"][0][1]) * 1024 / (b["files"] - a["files"]), 2
            )


# --- 3. latency ----------------------------------------------------------------------------------


def cli_times(args: list[str], runs: int) -> list[float]:
    times = []
    env = {**os.environ, "COLUMNS": "200"}
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "searcher", *args], cwd=REPO, env=env, capture_output=True, timeout=600
        )
        times.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise RuntimeError(f"searcher {' '.join(args)} failed: {proc.stderr.decode()[-800:]}")
    return times


def section_latency(cfg: dict[str, Any], tmp: Path, data: dict[str, Any], ctx: dict[str, Any]) -> None:
    import http.client
    from urllib.parse import quote

    from PIL import Image

    from searcher.serve import make_server

    lib_dir, files = ctx.get("flowers_lib"), ctx.get("flowers_files")
    if lib_dir is None:  # the indexing section did not run: index a few flowers now
        files = sorted((shared_dir() / "datasets" / "flowers17" / "images").glob("*.jpg"))[:64]
        folder = tmp / "lat-photos"
        folder.mkdir(exist_ok=True)
        for f in files:
            os.symlink(f, folder / f.name)
        files = sorted(folder.glob("*.jpg"))
        lib_dir = tmp / "lat-lib"
        index_folder(folder, lib_dir)
    probe = str(files[3])
    new = tmp / "new-probe.jpg"
    Image.open(files[5]).resize((300, 220)).save(new, quality=70)
    data["library_images"] = len(files)
    data["cli_cold_indexed_probe"] = latency_summary(
        cli_times(["query", probe, "--library", str(lib_dir), "--json"], cfg["cli_runs"])
    )
    data["cli_cold_info"] = latency_summary(cli_times(["info", "--library", str(lib_dir), "--json"], cfg["cli_runs"]))
    if cfg["cli_new_runs"]:
        data["cli_cold_new_image"] = latency_summary(
            cli_times(["query", str(new), "--library", str(lib_dir), "--json"], cfg["cli_new_runs"])
        )
    server = make_server(lib_dir, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=120)
        body = new.read_bytes()

        def call(method: str, url: str, payload: bytes | None = None) -> float:
            started = time.perf_counter()
            conn.request(method, url, body=payload, headers={"Content-Type": "image/jpeg"} if payload else {})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{method} {url}: HTTP {resp.status}")
            return time.perf_counter() - started

        get_url = f"/query?path={quote(probe)}&k=10"
        call("GET", get_url)
        call("POST", "/query?k=10", body)
        data["server_get_indexed_path"] = latency_summary([call("GET", get_url) for _ in range(cfg["server_requests"])])
        data["server_post_new_image"] = latency_summary(
            [call("POST", "/query?k=10", body) for _ in range(cfg["server_requests"])]
        )
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    for key in ("cli_cold_indexed_probe", "cli_cold_info", "cli_cold_new_image", "server_post_new_image"):
        if key in data:
            print(f"   {key}: p50 {data[key]['p50_ms']:.1f} ms, p99 {data[key]['p99_ms']:.1f} ms", flush=True)


def section_runtimes(cfg: dict[str, Any], tmp: Path, data: dict[str, Any], ctx: dict[str, Any]) -> None:
    """TensorFlow and ONNX Runtime side by side (scripts/bench_runtime.py)."""
    import types

    from bench_runtime import section_runtimes as run_section

    run_section(cfg, tmp, data, ctx, types.SimpleNamespace(**globals()))


# --- 4. vector search ----------------------------------------------------------------------------


def real_vectors(ctx: dict[str, Any], tmp: Path) -> np.ndarray:
    """Real embeddings of the shared photos (holidays-dev, flowers17, sample photos)."""
    if "real_vectors" in ctx:
        return ctx["real_vectors"]
    from searcher.embed import cached_embedder
    from searcher.files import discover
    from searcher.pipeline import prefetch_batches

    embedder = ctx.get("embedder") or cached_embedder("efficientnet_lite0")
    roots = [shared_dir() / "datasets" / d for d in ("holidays-dev", "flowers17", "sample-photos")]
    paths = [e.path for e in discover([r for r in roots if r.exists()])]
    if ctx.get("quick"):
        paths = paths[::8]
    out = [embedder.embed(b.pixels) for b in prefetch_batches(paths, str, embedder.input_size, 32) if b.good]
    ctx["real_vectors"] = np.concatenate(out).astype(np.float32)
    return ctx["real_vectors"]


def grow(real: np.ndarray, n: int, seed: int, chunk: int = 50_000) -> Iterator[np.ndarray]:
    """``n`` vectors like real embeddings: (1-a) v_i + a v_j + b (v_k - v_l) + noise, normalised."""
    rng = np.random.default_rng(seed)
    r, d = real.shape
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        i, j, k, l_ = rng.integers(0, r, (4, m))
        a = rng.uniform(0.0, 0.5, (m, 1)).astype(np.float32)
        b = rng.uniform(0.0, 0.3, (m, 1)).astype(np.float32)
        x = (1 - a) * real[i] + a * real[j] + b * (real[k] - real[l_])
        x += (0.2 / np.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x


def cosine_stats(x: np.ndarray, sample: int = 2000) -> dict[str, float]:
    import faiss

    s = x[:sample]
    d, _ = faiss.knn(s, x, 11, metric=faiss.METRIC_INNER_PRODUCT)
    pair = (s[: sample // 2] @ s[sample // 2 :].T).ravel()
    return {
        "nn1_median": round(float(np.median(d[:, 1])), 3),
        "nn10_median": round(float(np.median(d[:, 10])), 3),
        "pair_mean": round(float(pair.mean()), 3),
    }


def search_latency(index: Any, queries: np.ndarray, truth: np.ndarray | None, k: int = 10) -> dict[str, Any]:
    times, found = [], []
    index.search(queries[:1], k)
    for q in queries:
        started = time.perf_counter()
        _, ids = index.search(q[None], k)
        times.append(time.perf_counter() - started)
        found.append(ids[0])
    out = latency_summary(times)
    if truth is not None:
        hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
        out["recall@10"] = round(sum(hits) / (k * len(found)), 4)
    return out


def section_search(cfg: dict[str, Any], tmp: Path, data: dict[str, Any], ctx: dict[str, Any]) -> None:
    import faiss

    from searcher import vector_index as vmod
    from searcher.vector_index import VectorIndex, bytes_per_vector

    real = real_vectors(ctx, tmp)
    dim = real.shape[1]
    data["real_vectors"] = {"n": len(real), "dim": dim, **cosine_stats(real, min(len(real), 2000))}
    data["generator"] = "(1-a) v_i + a v_j + b (v_k - v_l) + N(0, 0.2^2/d), a~U(0,.5), b~U(0,.3), normalised"
    data["auto"] = {"AUTO_ANN_MIN": vmod.AUTO_ANN_MIN, "AUTO_ANN_KIND": vmod.AUTO_ANN_KIND}
    data["bytes_per_vector"] = {k: bytes_per_vector(k, dim) for k in ("flat", "ivfpq", "hnsw")}
    queries = np.concatenate(list(grow(real, cfg["queries"], seed=999)))
    data["sizes"] = {}
    hnsw_builds: list[tuple[int, float]] = []
    for n in sorted({*cfg["search_sizes"], *cfg["flat_threshold_sizes"]}):
        started = time.perf_counter()
        index = VectorIndex(dim)
        for start, chunk in zip(range(0, n, 50_000), grow(real, n, seed=n), strict=False):
            index.add(np.arange(start, start + len(chunk), dtype=np.int64), chunk)
        entry: dict[str, Any] = {"build_vectors_s": round(time.perf_counter() - started, 1), "load_avg": load()}
        if n <= 200_000:
            ids, vecs = index.vectors()
            entry["generated_cosine_stats"] = cosine_stats(vecs)
            del ids, vecs
        t = time.perf_counter()
        _, truth = index.search(queries, 10, exact=True)
        entry["ground_truth_s"] = round(time.perf_counter() - t, 1)
        nq = cfg["flat_queries"].get(n, 20)
        entry["flat"] = search_latency(index, queries[:nq], truth[:nq])
        print(f"   {n:>9,} flat   p50 {entry['flat']['p50_ms']:8.2f} ms", flush=True)
        if n in cfg["search_sizes"]:
            kinds = ["ivfpq"] + (["hnsw"] if n <= cfg["hnsw_max"] else [])
            for kind in kinds:
                t = time.perf_counter()
                index.set_kind(kind)
                build = time.perf_counter() - t
                res = search_latency(index, queries, truth)
                res["build_s"] = round(build, 1)
                res["params"] = dict(index.params)
                if kind == "ivfpq":
                    nprobe, cands = vmod.ivf_search_params(n, int(index.params["nlist"]))
                    res["params"].update(nprobe=res["params"].get("nprobe") or nprobe)
                    res["params"].update(rerank_min=res["params"].get("rerank_min") or cands)
                res["ann_bytes_per_vector_serialized"] = round(len(faiss.serialize_index(index.ann)) / n, 1)
                if kind == "ivfpq":
                    sweep = []
                    base = dict(index.params)
                    for nprobe in (8, 16, 32, 64):
                        for cand in (100, 200, 400):
                            index.params.update(nprobe=nprobe, rerank_min=cand, rerank_factor=1)
                            r = search_latency(index, queries[: min(100, len(queries))], truth[:100])
                            sweep.append({"nprobe": nprobe, "candidates": cand, **r})
                    index.params = base
                    res["sweep"] = sweep
                else:
                    hnsw_builds.append((n, build))
                entry[kind] = res
                print(
                    f"   {n:>9,} {kind:6} p50 {res['p50_ms']:8.2f} ms  recall@10 {res['recall@10']:.3f}  "
                    f"build {build:.1f} s",
                    flush=True,
                )
                index.set_kind("flat")
        data["sizes"][str(n)] = entry
        del index
    if hnsw_builds:
        n0, t0 = max(hnsw_builds)
        est = t0 * (1_000_000 * np.log(1_000_000)) / (n0 * np.log(n0))
        data["hnsw_1m_build_s_extrapolated"] = {"from_n": n0, "measured_s": round(t0, 1), "estimate_s": round(est)}


# --- 5. duplicates -------------------------------------------------------------------------------


def section_duplicates(cfg: dict[str, Any], tmp: Path, data: dict[str, Any], ctx: dict[str, Any]) -> None:
    real = real_vectors(ctx, tmp)
    n = cfg["duplicates_n"]
    path = REPO / "scripts" / "bench_duplicates.py"
    if path.exists():
        spec = importlib.util.spec_from_file_location("bench_duplicates", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        made = mod.synthetic(real, n)  # its own realistic vectors with planted duplicates
        args = made if isinstance(made, tuple) else (made,)
        wanted = len(inspect.signature(mod.time_stage).parameters)
        data["method"] = "scripts/bench_duplicates.time_stage: searcher.duplicates candidate_pairs + grouping"
        data.update(mod.time_stage(*args[: max(1, wanted)]))
    else:  # fall back to the FAISS candidate stage alone
        import faiss

        vectors = np.concatenate(list(grow(real, n, seed=5)))
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        started = time.perf_counter()
        index.search(vectors, 11)
        data["method"] = "FAISS exact 10-NN of every vector (candidate stage only)"
        data.update({"n": n, "total_s": round(time.perf_counter() - started, 2)})
    print(f"   duplicates over {n:,} vectors: {data['total_s']} s", flush=True)


# --- report --------------------------------------------------------------------------------------


def targets(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    idx = report.get("indexing", {})
    for name in ("jpeg_3000x2000", "jpeg_1024x768", "flowers17"):
        if name in idx and "index_vs_pure" in idx[name]:
            out[f"{name}: index >= 0.8 x pure inference"] = (
                idx[name]["index_vs_pure"],
                idx[name]["index_vs_pure"] >= 0.8,
            )
            out[f"{name}: index >= 3 x naive"] = (idx[name]["index_vs_naive"], idx[name]["index_vs_naive"] >= 3)
    sizes = report.get("search", {}).get("sizes", {})
    big = max((int(n) for n in sizes if "ivfpq" in sizes[n]), default=None)
    if big is not None:
        r = sizes[str(big)]["ivfpq"]
        out[f"search at {big:,}: p50 < 5 ms"] = (r["p50_ms"], r["p50_ms"] < 5)
        out[f"search at {big:,}: recall@10 >= 0.95"] = (r["recall@10"], r["recall@10"] >= 0.95)
    dup = report.get("duplicates", {})
    if "total_s" in dup:
        out[f"duplicates over {dup.get('n', 0):,} vectors < 60 s"] = (dup["total_s"], dup["total_s"] < 60)
    mem = report.get("memory", {})
    runs = [r for r in mem.get("runs", []) if "embedding_stage_growth_minus_index_mb" in r]
    if runs and runs[-1]["files"] >= 5000:  # smaller runs: start-up noise
        g = runs[-1]["embedding_stage_growth_minus_index_mb"]
        out[f"memory while embedding {runs[-1]['files']:,} files grows < 64 MB beyond the index"] = (g, g < 64)
    from bench_runtime import targets as runtime_targets

    out.update(runtime_targets(report.get("runtimes", {})))
    return {k: {"value": v, "met": ok} for k, (v, ok) in out.items()}


def print_table(report: dict[str, Any]) -> None:
    lines = [f"searcher bench ({'quick' if report['quick'] else 'full'}), load avg {report['load_avg_start']}"]
    idx = report.get("indexing", {})
    for name in ("jpeg_3000x2000", "jpeg_1024x768", "flowers17"):
        e = idx.get(name)
        if e and "index" in e:
            rates = (e["index"]["images_per_s"], e["pure_inference"]["images_per_s"], e["naive"]["images_per_s"])
            lines.append(
                f"  index {name:15} {rates[0]:7.1f} img/s | pure {rates[1]:6.1f} | naive {rates[2]:6.1f}"
                f" | x{e['index_vs_pure']:.2f} pure, x{e['index_vs_naive']:.1f} naive"
            )
    from bench_runtime import table_lines

    lines.extend(table_lines(report.get("runtimes", {})))
    for run in report.get("memory", {}).get("runs", []):
        lines.append(
            f"  memory {run['files']:>7,} files: peak {run['vmhwm_mb']:7.1f} MB, "
            f"flat index {run['flat_index_mb']:.1f} MB"
        )
    lat = report.get("latency", {})
    for key in (
        "cli_cold_indexed_probe",
        "cli_cold_info",
        "cli_cold_new_image",
        "server_get_indexed_path",
        "server_post_new_image",
    ):
        if key in lat:
            lines.append(f"  {key:24} p50 {lat[key]['p50_ms']:9.2f} ms  p99 {lat[key]['p99_ms']:9.2f} ms")
    for n, e in report.get("search", {}).get("sizes", {}).items():
        for kind in ("flat", "ivfpq", "hnsw"):
            if kind in e:
                r = e[kind]
                lines.append(
                    f"  search {int(n):>9,} {kind:5} p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms"
                    f"  recall@10 {r.get('recall@10', float('nan')):.3f}"
                )
    dup = report.get("duplicates", {})
    if "total_s" in dup:
        lines.append(f"  duplicates over {dup.get('n', 0):,} vectors: {dup['total_s']} s")
    web = report.get("web", {}).get("load")
    if web:
        lines.append(f"  web load: {web['clients']} clients, {web['seconds']} s, {web['requests']} requests, "
                     f"{web['errors']} errors")
        for kind in ("upload", "indexed"):
            w = web[kind]
            lines.append(f"    {kind:8} p50 {w['p50_ms']} ms  p99 {w['p99_ms']} ms  (n {w['n']})")
    for name, t in report.get("targets", {}).items():
        lines.append(f"  [{'ok' if t['met'] else 'MISSED'}] {name}: {t['value']}")
    for name in SECTIONS:
        if report.get(name, {}).get("error"):
            lines.append(f"  section {name} FAILED: {report[name]['error']}")
    print("\n".join(lines), flush=True)


def section_web(cfg: dict[str, Any], tmp: Path, data: dict[str, Any], ctx: dict[str, Any]) -> None:
    """32 clients against `searcher serve` on a 10,000-image library for 60 s (scripts/bench_web.py)."""
    from bench_web import section_web as run_section

    run_section(cfg, tmp, data, ctx)


def run(quick: bool = False, out: Path | None = None, sections: tuple[str, ...] = SECTIONS, **overrides: Any) -> dict:
    cfg = {**(QUICK if quick else FULL), **{k: v for k, v in overrides.items() if v is not None}}
    report: dict[str, Any] = {
        "quick": quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_avg_start": load(),
        "machine": machine(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k != "flat_queries"},
    }
    ctx: dict[str, Any] = {"quick": quick}
    steps: dict[str, Callable[..., None]] = {
        "indexing": section_indexing,
        "latency": section_latency,
        "memory": section_memory,
        "search": section_search,
        "duplicates": section_duplicates,
        "runtimes": section_runtimes,
        "web": section_web,
    }
    started = time.perf_counter()
    import searcher.runtime

    previous_runtime = searcher.runtime._default
    searcher.runtime.set_default_runtime("tensorflow")  # sections before `runtimes` measure TensorFlow
    try:
        with tempfile.TemporaryDirectory(prefix="searcher-bench-") as tmp_name:
            tmp = Path(tmp_name)
            for name in steps:  # this order: the big vector sets come last
                if name in sections:
                    with Section(report, name) as data:
                        steps[name](cfg, tmp, data, ctx)
    finally:
        searcher.runtime.set_default_runtime(previous_runtime)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["load_avg_end"] = load()
    report["targets"] = targets(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    if out is not None:
        print(f"report: {out}  ({report['seconds']} s)")
    return report


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--scale" in argv:  # the memory-bounded index at 1M/10M vectors (~1 h): scripts/bench_scale.py
        from bench_scale import main as scale_main

        scale_main([a for a in argv if a != "--scale"])
        return
    if "--dup-library" in argv:  # duplicates on a library of edited copies (3k: ~2 min; 30k: ~30 min)
        sizes = argv[argv.index("--dup-library") + 1]
        for size in sizes.split(","):
            script = REPO / "scripts" / "dup_library_bench.py"
            subprocess.run([sys.executable, str(script), "--size", size.strip()], check=True)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", action="store_true", help="run scripts/bench_scale.py instead (see its --help)")
    ap.add_argument("--dup-library", metavar="SIZES", help="run scripts/dup_library_bench.py per size instead")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (< 1 min): a smoke test of the script")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "bench.json")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--search-sizes", help="e.g. 10000,100000,1000000")
    ap.add_argument("--hnsw-max", type=int, help="largest size at which HNSW is built (default 100000)")
    ap.add_argument("--memory-files", help="e.g. 10000,50000")
    ap.add_argument("--memory-child", nargs=2, metavar=("FOLDER", "LIBRARY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(Path(args.memory_child[0]), Path(args.memory_child[1]), "mobilenet_025_128")
        return
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = set(sections) - set(SECTIONS) - set(OPTIONAL_SECTIONS)
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")

    def ints(text: str | None) -> tuple[int, ...] | None:
        return tuple(int(x) for x in text.split(",")) if text else None

    run(
        args.quick, args.out, sections,
        search_sizes=ints(args.search_sizes), hnsw_max=args.hnsw_max, memory_files=ints(args.memory_files),
    )  # fmt: skip


if __name__ == "__main__":
    main()
