"""Load test of `searcher serve` (the `web` section of scripts/bench.py; loopback only, bounded).

A library of generated photos (10,000 by default) is indexed, `searcher serve` is started in a child
process on a free loopback port, and 32 client threads mix uploads of new photos (POST /query) with
queries of indexed images (GET /query?path=) for 60 s. Reported: requests, errors, and p50/p99 latency
per kind of request.

    python scripts/bench.py --sections web                      # 10,000 images, 32 clients, 60 s
    python scripts/bench_web.py --images 2000 --seconds 20      # a smaller run on its own
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
UPLOAD_SHARE = 0.3  # the rest are indexed-path queries


def _photo(seed: int, size: tuple[int, int] = (240, 180)) -> Image.Image:
    """A distinct picture per seed: a gradient and a few shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base, slope = rng.uniform(0, 255, 3), rng.uniform(-1, 1, (3, 2))
    arr = np.stack([base[c] + slope[c, 0] * x + slope[c, 1] * y for c in range(3)], axis=-1)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        box = [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def build_library(folder: Path, library: Path, n: int) -> dict[str, Any]:
    """``n`` generated JPEGs in ``folder``, indexed into ``library`` with the default backbone."""
    from searcher import Library

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"{i // 1000:03d}" / f"photo_{i:06d}.jpg"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            _photo(i).save(path, quality=85)
    started = time.perf_counter()
    with Library.open(library) as lib:
        report = lib.index([folder], batch_size=64)
    return {"images": n, "index_s": round(time.perf_counter() - started, 1), "embedded": report.embedded}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(library: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "searcher", "serve", "-L", str(library), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"searcher serve exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("searcher serve did not answer /health within 180 s")


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def load_test(port: int, paths: list[str], clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """``clients`` threads for ``seconds`` (at most ``max_requests`` in all), loopback only."""
    uploads = []
    for i in range(8):  # new photos: edited copies of indexed ones (cropped, recompressed)
        buf = io.BytesIO()
        _photo(10 * i + 1).crop((10, 10, 230, 170)).save(buf, "JPEG", quality=70)
        uploads.append(buf.getvalue())
    latencies: dict[str, list[float]] = {"upload": [], "indexed": []}
    errors: list[str] = []
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < deadline:
            with lock:
                if issued[0] >= max_requests:
                    return
                issued[0] += 1
            kind = "upload" if rng.random() < UPLOAD_SHARE else "indexed"
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                if kind == "upload":
                    body = uploads[int(rng.integers(len(uploads)))]
                    conn.request("POST", "/query?k=10", body=body, headers={"Content-Type": "image/jpeg"})
                else:
                    path = paths[int(rng.integers(len(paths)))]
                    conn.request("GET", "/query?k=10&path=" + urllib.parse.quote(path, safe=""))
                res = conn.getresponse()
                payload = res.read()
                conn.close()
                ok = res.status == 200 and b'"results"' in payload
            except OSError as exc:
                ok, payload = False, str(exc).encode()
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if ok:
                    latencies[kind].append(elapsed)
                else:
                    errors.append(f"{kind}: {payload[:200]!r}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    wall = time.perf_counter() - started
    done = sum(len(v) for v in latencies.values())
    out: dict[str, Any] = {
        "clients": clients, "seconds": round(wall, 1), "requests": done + len(errors), "errors": len(errors),
        "error_samples": errors[:5], "requests_per_s": round(done / wall, 1) if wall else None,
    }  # fmt: skip
    for kind, values in latencies.items():
        out[kind] = {"n": len(values), "p50_ms": _percentile(values, 50), "p99_ms": _percentile(values, 99)}
    return out


def section_web(cfg: dict[str, Any], tmp: Path, data: dict[str, Any], ctx: dict[str, Any]) -> None:
    """The `web` section of scripts/bench.py."""
    n, clients, seconds = cfg.get("web_images", 10_000), cfg.get("web_clients", 32), cfg.get("web_seconds", 60.0)
    data.update(run_load(tmp, n, clients, seconds))


def run_load(tmp: Path, n: int, clients: int, seconds: float) -> dict[str, Any]:
    from searcher import Library

    data: dict[str, Any] = {"load_avg_start": round(os.getloadavg()[0], 2)}
    library = tmp / "web-library"
    data["library"] = build_library(tmp / "web-photos", library, n)
    with Library.open(library) as lib:
        paths = [row for row, _ in zip(_indexed_paths(lib), range(2000), strict=False)]
    port = _free_port()
    server = _start_server(library, port)
    try:
        data["load"] = load_test(port, paths, clients, seconds, max_requests=200_000)
    finally:
        server.terminate()
        server.wait(30)
    data["load_avg_end"] = round(os.getloadavg()[0], 2)
    return data


def _indexed_paths(lib) -> list[str]:
    from sqlalchemy import select

    from searcher.store import STATUS_OK, ImageRow

    with lib.sessions() as session:
        return list(session.scalars(select(ImageRow.path).where(ImageRow.status == STATUS_OK).order_by(ImageRow.id)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "bench_web.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="searcher-web-bench-") as tmp:
        data = run_load(Path(tmp), args.images, args.clients, args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data["load"], indent=2))


if __name__ == "__main__":
    main()
