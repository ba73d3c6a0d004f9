"""The `runtimes` section of scripts/bench.py: TensorFlow and ONNX Runtime side by side.

For each runtime, in one run on the same files: indexing 1024x768 JPEGs (images/s), the model's
pure inference rate on the same images pre-decoded (batch 32, and batch 4 as the server runs it),
their ratio, the p50/p99 of `searcher serve` answering a new uploaded photo (four rotated views),
and a cold `searcher query` of a new photo. The naive `load_img` + `predict` loop is TensorFlow's
by nature and is measured once.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from pathlib import Path
from typing import Any

RUNTIMES = ("tensorflow", "onnxruntime")


def server_new_probe(lib_dir: Path, probe: Path, requests: int, latency_summary) -> dict[str, Any]:
    """p50/p99 of POST /query with a new photo, after one warm-up request: the default (four
    rotated views, the first 10 verified) and, under ``upright``, ``?invariant=none`` (one view),
    under ``unverified``, ``?verify=0``, on the same server."""
    from searcher.serve import make_server

    server = make_server(lib_dir, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    body = probe.read_bytes()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=300)

        def call(url: str = "/query?k=10") -> float:
            started = time.perf_counter()
            conn.request("POST", url, body=body, headers={"Content-Type": "image/jpeg"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"POST /query: HTTP {resp.status}")
            return time.perf_counter() - started

        call()
        out = latency_summary([call() for _ in range(requests)])
        out["runtime"] = server.service.embedder().runtime
        upright = "/query?k=10&invariant=none"
        call(upright)
        out["upright"] = latency_summary([call(upright) for _ in range(requests)])
        unverified = "/query?k=10&verify=0"  # the default verifies the first 10 on the pixels
        out["unverified"] = latency_summary([call(unverified) for _ in range(requests)])
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    return out


def measure_runtime(rt: str, cfg: dict[str, Any], tmp: Path, folder: Path, probe: Path, bench: Any) -> dict[str, Any]:
    """One runtime's figures (run in a process of its own: see :func:`section_runtimes`)."""
    from searcher.runtime import set_default_runtime

    set_default_runtime(rt)
    files = sorted(folder.glob("*.jpg"))
    entry: dict[str, Any] = {"load_avg": bench.load()}
    embedder, build_s = bench.warm_library_model(tmp / f"rt-warm-{rt}")
    entry["embedder"] = embedder.runtime  # what was really used (a failed export falls back)
    entry["build_and_warm_s"] = round(build_s, 1)
    pixels = bench.predecode(files, embedder.input_size)
    lib_dir = tmp / f"rt-lib-{rt}"
    entry["index"] = bench.index_folder(folder, lib_dir)
    entry["pure_inference"] = bench.pure_inference(embedder, pixels)
    entry["pure_inference_batch4"] = bench.pure_inference(embedder, pixels, batch=4)
    entry["index_vs_pure"] = round(entry["index"]["images_per_s"] / entry["pure_inference"]["images_per_s"], 3)
    entry["cpu_bound_index_vs_pure"] = round(
        entry["pure_inference"]["cpu_ms_per_image"] / entry["index"]["cpu_ms_per_image"], 3
    )
    if rt == "tensorflow":
        entry["naive"] = bench.naive(embedder, files[: cfg["naive_images"]])
    entry["server_post_new_image"] = server_new_probe(lib_dir, probe, cfg["server_requests"], bench.latency_summary)
    if cfg["cli_new_runs"]:
        os.environ["SEARCHER_RUNTIME"] = rt
        args = ["query", str(probe), "--library", str(lib_dir), "--json"]
        entry["cli_cold_new_image"] = bench.latency_summary(bench.cli_times(args, cfg["cli_new_runs"]))
    entry["load_avg_after"] = bench.load()
    return entry


def section_runtimes(cfg: dict[str, Any], tmp: Path, data: dict[str, Any], ctx: dict[str, Any], bench: Any):
    """Each runtime measured in a fresh process, one after the other, on the same files: in one
    process, whichever runtime ran second was slowed by the first one's thread pools (ONNX Runtime
    indexing 81 -> 57 img/s after TensorFlow had run), which a user's run never sees."""
    import json
    import subprocess
    import sys

    from PIL import Image

    from searcher.runtime import onnxruntime_available

    folder = tmp / "rt-jpeg_1024x768"
    data["generated"] = bench.make_photos(folder, cfg["runtime_images"], (1024, 768), seed=7)
    files = sorted(folder.glob("*.jpg"))
    probe = tmp / "rt-new-probe.jpg"
    Image.open(files[1]).resize((640, 480)).rotate(7).save(probe, quality=80)
    data["runs_in"] = "one child process per runtime"
    for rt in [r for r in RUNTIMES if r == "tensorflow" or onnxruntime_available()]:
        print(f"   runtime {rt} ...", flush=True)
        out = tmp / f"rt-{rt}.json"
        child = [sys.executable, str(Path(__file__).resolve()), "--child", rt, json.dumps(cfg, default=list),
                 str(tmp), str(folder), str(probe), str(out)]  # fmt: skip
        proc = subprocess.run(child, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"runtime {rt}: {proc.stderr[-1500:]}")
        entry = json.loads(out.read_text())
        if "naive" in entry:
            data["naive"] = entry.pop("naive")
        data[rt] = entry
        srv = entry["server_post_new_image"]
        print(
            f"   {rt}: index {entry['index']['images_per_s']:.1f} img/s, pure "
            f"{entry['pure_inference']['images_per_s']:.1f} (x{entry['index_vs_pure']:.2f}), "
            f"server new photo p50 {srv['p50_ms']:.1f} ms",
            flush=True,
        )
    if "tensorflow" in data and "onnxruntime" in data:
        tf, ort = data["tensorflow"], data["onnxruntime"]
        data["onnx_vs_tf"] = {
            "index": round(ort["index"]["images_per_s"] / tf["index"]["images_per_s"], 3),
            "pure_inference": round(ort["pure_inference"]["images_per_s"] / tf["pure_inference"]["images_per_s"], 3),
            "pure_inference_batch4": round(
                ort["pure_inference_batch4"]["images_per_s"] / tf["pure_inference_batch4"]["images_per_s"], 3
            ),
            "server_p50": round(tf["server_post_new_image"]["p50_ms"] / ort["server_post_new_image"]["p50_ms"], 3),
        }


def table_lines(rt_report: dict[str, Any]) -> list[str]:
    """The side-by-side rows for bench.py's printed table."""
    lines = []
    naive = rt_report.get("naive", {}).get("images_per_s")
    for rt in RUNTIMES:
        e = rt_report.get(rt)
        if not e:
            continue
        cold = e.get("cli_cold_new_image", {}).get("p50_ms")
        lines.append(
            f"  {rt:11} 1024x768 index {e['index']['images_per_s']:6.1f} img/s | pure "
            f"{e['pure_inference']['images_per_s']:6.1f} (b4 {e['pure_inference_batch4']['images_per_s']:6.1f})"
            f" | x{e['index_vs_pure']:.2f} pure"
            + (f", x{e['index']['images_per_s'] / naive:.1f} naive ({naive:.1f})" if naive else "")
            + f" | serve new photo p50 {e['server_post_new_image']['p50_ms']:6.1f} ms"
            + (f" (upright only {e['server_post_new_image']['upright']['p50_ms']:.1f})"
               if "upright" in e["server_post_new_image"] else "")
            + (f" | cold CLI new photo {cold:.0f} ms" if cold else "")
        )
    return lines


def targets(rt_report: dict[str, Any]) -> dict[str, tuple[Any, bool]]:
    out: dict[str, tuple[Any, bool]] = {}
    ort = rt_report.get("onnxruntime")
    if ort and ort.get("embedder") == "onnxruntime":
        out["onnxruntime 1024x768: index >= 0.85 x pure inference"] = (
            ort["index_vs_pure"],
            ort["index_vs_pure"] >= 0.85,
        )
        p50 = ort["server_post_new_image"]["p50_ms"]
        out["onnxruntime: serve new photo p50 < 30 ms"] = (p50, p50 < 30)
    return out


# --- cold CLI (python scripts/bench_runtime.py --cold-cli) --------------------------------------------

COLD_COMMANDS = ("info", "failures", "check", "duplicates", "query-indexed", "query-indexed-fast", "help")


def cold_cli(images: int, runs: int, out: Path) -> dict[str, Any]:
    """Wall and CPU time of everyday commands started cold (a fresh interpreter each run, the way a
    shell runs them) on a library of ``images`` Flowers-17 photos, indexed with the default
    backbone; ``duplicates`` runs once before timing, so its verification scores are cached, as on
    a library someone uses. CPU time (user + system of the child) is reported next to wall time: on
    a shared machine the wall time also counts waiting for a core."""
    import json
    import resource
    import statistics
    import subprocess
    import sys
    import tempfile

    import bench

    def timed(args: list[str]) -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run([searcher_bin, *args], capture_output=True, env=env, timeout=600)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode not in (0, 3):  # 3: duplicates/check found something, which is an answer
            raise RuntimeError(f"searcher {' '.join(args)}: exit {proc.returncode}: {proc.stderr.decode()[-800:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu

    searcher_bin = str(Path(sys.executable).with_name("searcher"))
    env = {**os.environ, "COLUMNS": "200"}
    report: dict[str, Any] = {"machine": bench.machine(), "runs": runs, "command": searcher_bin}
    files = sorted((bench.shared_dir() / "datasets" / "flowers17" / "images").glob("*.jpg"))[:images]
    with tempfile.TemporaryDirectory(prefix="searcher-cold-cli-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "photos"
        folder.mkdir()
        for f in files:
            os.symlink(f, folder / f.name)
        (folder / "broken.jpg").write_bytes(b"not an image")  # so `failures` has one to list
        lib = str(tmp / "lib")
        timed(["index", str(folder), "--library", lib, "-q", "--json"])
        timed(["duplicates", "--library", lib, "--json"])  # caches the verification scores
        report["library_images"] = len(files)
        probe = str(folder / files[3].name)
        args = {
            "info": ["info", "--library", lib, "--json"],
            "failures": ["failures", "--library", lib, "--json"],
            "check": ["check", "--library", lib, "--json"],
            "duplicates": ["duplicates", "--library", lib, "--json"],
            "query-indexed": ["query", probe, "--library", lib, "--json"],  # embedded again (ONNX Runtime)
            "query-indexed-fast": ["query", probe, "--invariant", "none", "--library", lib, "--json"],  # stored vector
            "help": ["--help"],
        }
        report["load_avg_start"] = bench.load()
        for name in COLD_COMMANDS:
            timed(args[name])  # one untimed run: the files are in the page cache, as on a second use
            samples = [timed(args[name]) for _ in range(runs)]
            walls, cpus = [w for w, _ in samples], [c for _, c in samples]
            report[name] = {
                "wall_median_s": round(statistics.median(walls), 3),
                "wall_min_s": round(min(walls), 3),
                "cpu_median_s": round(statistics.median(cpus), 3),
                "load_avg": bench.load(),
            }
            print(
                f"{name:14} wall median {report[name]['wall_median_s']:.3f} s (min {report[name]['wall_min_s']:.3f}), "
                f"cpu median {report[name]['cpu_median_s']:.3f} s, load {report[name]['load_avg']}",
                flush=True,
            )
        report["load_avg_end"] = bench.load()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"report: {out}")
    return report


# --- the GPU check (scripts/gpu_check.sh) ---------------------------------------------------------


def _make_chunk(args: tuple[str, int, int]) -> int:
    folder, n, seed = args
    import bench

    bench.make_photos(Path(folder), n, (1024, 768), seed=seed)
    return n


def gpu_check(images: int, batch_size: int, out: Path) -> dict[str, Any]:
    """Index ``images`` 1024x768 JPEGs with each runtime (a fresh library each) and report images/s,
    next to each runtime's pure inference rate; decode workers are the pipeline's default (every
    core when the model runs on a GPU)."""
    import json
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    import bench

    from searcher.pipeline import default_workers
    from searcher.runtime import onnxruntime_available, set_default_runtime

    report: dict[str, Any] = {"machine": bench.machine(), "images": images, "batch_size": batch_size}
    with tempfile.TemporaryDirectory(prefix="searcher-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "jpeg_1024x768"
        cores = os.cpu_count() or 1
        started = time.perf_counter()
        chunks = [(str(folder), images // cores + (i < images % cores), 1000 + i) for i in range(cores)]
        with ProcessPoolExecutor(cores) as pool:
            report["generated"] = sum(pool.map(_make_chunk, chunks))
        report["generate_s"] = round(time.perf_counter() - started, 1)
        files = sorted(folder.glob("*.jpg"))
        for rt in [r for r in RUNTIMES if r == "tensorflow" or onnxruntime_available()]:
            print(f"{rt} ...", flush=True)
            set_default_runtime(rt)
            embedder, build_s = bench.warm_library_model(tmp / f"warm-{rt}")
            entry: dict[str, Any] = {"embedder": embedder.runtime, "gpu": embedder.gpu, "build_s": round(build_s, 1)}
            entry["providers"] = getattr(getattr(embedder, "session", None), "get_providers", list)()
            entry["workers"] = default_workers(gpu=embedder.gpu)
            entry["load_avg"] = bench.load()
            entry["index"] = bench.index_folder(folder, tmp / f"lib-{rt}", batch_size=batch_size)
            pixels = bench.predecode(files[: min(len(files), 1024)], embedder.input_size)
            entry["pure_inference"] = bench.pure_inference(embedder, pixels, batch=batch_size)
            entry["index_vs_pure"] = round(entry["index"]["images_per_s"] / entry["pure_inference"]["images_per_s"], 3)
            report[rt] = entry
            print(
                f"{rt:11} gpu={embedder.gpu} index {entry['index']['images_per_s']:.0f} img/s, pure "
                f"{entry['pure_inference']['images_per_s']:.0f} img/s (x{entry['index_vs_pure']:.2f}), "
                f"{entry['workers']} decode workers",
                flush=True,
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"report: {out}")
    return report


if __name__ == "__main__":
    import argparse
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if len(sys.argv) > 1 and sys.argv[1] == "--child":  # one runtime of the bench's `runtimes` section
        import bench as bench_module

        rt, cfg_json, tmp_dir, folder_dir, probe_path, out_path = sys.argv[2:8]
        result = measure_runtime(
            rt, json.loads(cfg_json), Path(tmp_dir), Path(folder_dir), Path(probe_path), bench_module
        )
        Path(out_path).write_text(json.dumps(result, default=str))
        raise SystemExit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--cold-cli":  # cold start of everyday commands
        ap = argparse.ArgumentParser(description="cold CLI: wall and CPU time of everyday commands, median of N")
        ap.add_argument("--cold-cli", action="store_true")
        ap.add_argument("--images", type=int, default=200, help="Flowers-17 photos in the library")
        ap.add_argument("--runs", type=int, default=5)
        ap.add_argument("--out", type=Path, default=Path("bench-out/cold_cli.json"))
        args = ap.parse_args()
        cold_cli(args.images, args.runs, args.out)
        raise SystemExit(0)
    ap = argparse.ArgumentParser(description="GPU check: index N JPEGs with TensorFlow and with ONNX Runtime")
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("bench-out/gpu_check.json"))
    args = ap.parse_args()
    gpu_check(args.images, args.batch_size, args.out)
