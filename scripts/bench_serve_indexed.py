"""`GET /query?path=` latency of `searcher serve` for indexed photos: the default against its fast paths.

    python scripts/bench_serve_indexed.py [--folder ../shared/datasets/holidays-dev/images] [--probes 40]

Indexes the folder (only new work) into the library ``scripts/holidays_query_map.py`` uses, then, with
a fresh in-process server per mode (so no mode profits from features another one cached), asks for the
10 neighbours of ``--probes`` different indexed photos (every 10th file) after one warm-up request:
the default (the photo embedded again, the first 10 results verified), ``invariant=none`` (its stored
vector), ``verify=0``, and both. Writes p50/p90 per mode and the load average.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

from quality_report import HOLIDAYS  # the shared photos (SEARCHER_SHARED)

from searcher.library import Library
from searcher.serve import make_server

HERE = Path(__file__).resolve().parent
MODES = {
    "default": "",
    "invariant=none": "&invariant=none",
    "verify=0": "&verify=0",
    "invariant=none&verify=0": "&invariant=none&verify=0",
}


def get(conn: http.client.HTTPConnection, url: str) -> float:
    """Milliseconds for one request, which must answer 200."""
    started = time.perf_counter()
    conn.request("GET", url)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"{url}: HTTP {response.status}")
    return 1000 * (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=str(HOLIDAYS / "images"))
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--out", default=str(HERE / "results" / "serve_indexed_latency.json"))
    args = ap.parse_args()
    folder = str(Path(args.folder).resolve())
    library = Path(tempfile.gettempdir()) / "searcher-holidays-query-map"
    with Library.open(library, create=True) as lib:
        lib.index([folder])
    probes = sorted(os.listdir(folder))[::10][: args.probes + 1]
    out: dict = {"folder": folder, "probes": len(probes) - 1, "modes": {}}
    for mode, extra in MODES.items():
        server = make_server(library, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=120)
        urls = [f"/query?path={quote(os.path.join(folder, name))}&k=10{extra}" for name in probes]
        get(conn, urls[0])  # warm-up: the model loaded, the index read
        ms = sorted(get(conn, url) for url in urls[1:])
        out["modes"][mode] = {"p50_ms": round(statistics.median(ms), 1), "p90_ms": round(ms[int(0.9 * len(ms))], 1)}
        print(mode, out["modes"][mode], flush=True)
        conn.close()
        server.shutdown()
        server.server_close()
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
