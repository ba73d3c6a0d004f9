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
    """p50/p99 of POST /query with a new photo, after one warm-up request."""
    from searcher.serve import make_server

    server = make_server(lib_dir, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    body = probe.read_bytes()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=300)

        def call() -> float:
            started = time.perf_counter()
            conn.request("POST", "/query?k=10", body=body, headers={"Content-Type": "image/jpeg"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"POST /query: HTTP {resp.status}")
            return time.perf_counter() - started

        call()
        out = latency_summary([call() for _ in range(requests)])
        out["runtime"] = server.service.embedder().runtime
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    return out


def section_runtimes(cfg: dict[str, Any], tmp: Path, data: dict[str, Any], ctx: dict[str, Any], bench: Any):
    from PIL import Image

    from searcher.runtime import onnxruntime_available, set_default_runtime

    folder = tmp / "rt-jpeg_1024x768"
    data["generated"] = bench.make_photos(folder, cfg["runtime_images"], (1024, 768), seed=7)
    files = sorted(folder.glob("*.jpg"))
    probe = tmp / "rt-new-probe.jpg"
    Image.open(files[1]).resize((640, 480)).rotate(7).save(probe, quality=80)
    pixels = None
    runtimes = [r for r in RUNTIMES if r == "tensorflow" or onnxruntime_available()]
    try:
        for rt in runtimes:
            print(f"   runtime {rt} ...", flush=True)
            set_default_runtime(rt)
            entry: dict[str, Any] = {"load_avg": bench.load()}
            embedder, build_s = bench.warm_library_model(tmp / f"rt-warm-{rt}")
            entry["embedder"] = embedder.runtime  # what was really used (a failed export falls back)
            entry["build_and_warm_s"] = round(build_s, 1)
            if pixels is None:
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
                data["naive"] = bench.naive(embedder, files[: cfg["naive_images"]])
            entry["server_post_new_image"] = server_new_probe(
                lib_dir, probe, cfg["server_requests"], bench.latency_summary
            )
            if cfg["cli_new_runs"]:
                os.environ["SEARCHER_RUNTIME"], before = rt, os.environ.get("SEARCHER_RUNTIME")
                try:
                    args = ["query", str(probe), "--library", str(lib_dir), "--json"]
                    entry["cli_cold_new_image"] = bench.latency_summary(bench.cli_times(args, cfg["cli_new_runs"]))
                finally:
                    os.environ.pop("SEARCHER_RUNTIME")
                    if before is not None:
                        os.environ["SEARCHER_RUNTIME"] = before
            entry["load_avg_after"] = bench.load()
            data[rt] = entry
            srv = entry["server_post_new_image"]
            print(
                f"   {rt}: index {entry['index']['images_per_s']:.1f} img/s, pure "
                f"{entry['pure_inference']['images_per_s']:.1f} (x{entry['index_vs_pure']:.2f}), "
                f"server new photo p50 {srv['p50_ms']:.1f} ms",
                flush=True,
            )
    finally:
        set_default_runtime("tensorflow")  # the other sections measure TensorFlow, as before
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
