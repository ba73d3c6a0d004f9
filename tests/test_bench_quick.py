"""`scripts/bench.py --quick` runs end to end, so the benchmark cannot rot.

Runs in-process (the model is shared with the other tests); the memory section still starts
its child processes. Only the shape and sanity of the report are checked: timing targets
depend on the machine and are for the full run (see the report's ``targets``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.conftest import REPO


def load_bench():
    spec = importlib.util.spec_from_file_location("searcher_bench", REPO / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quick_writes_a_complete_report(tmp_path: Path, shared: Path, capsys) -> None:
    bench = load_bench()
    out = tmp_path / "bench.json"
    report = bench.run(quick=True, out=out)
    assert json.loads(out.read_text())["quick"] is True
    for name in bench.SECTIONS:
        assert name in report and "error" not in report[name], (name, report[name].get("error"))
        assert "load_avg_start" in report[name]

    idx = report["indexing"]
    for name in ("jpeg_3000x2000", "jpeg_1024x768", "flowers17"):
        entry = idx[name]
        assert entry["index"]["images"] > 0 and entry["index"]["failed"] == 0
        assert entry["index"]["images_per_s"] > 0 and entry["pure_inference"]["images_per_s"] > 0
        assert entry["naive"]["images_per_s"] > 0 and entry["index_vs_naive"] > 0
    assert idx["tf_function_traces_during_indexing"] == 0  # one trace at build time, never again
    big = idx["jpeg_3000x2000"]["decode"]
    assert big["draft_decoded_size"] == "375x250" and big["original_size"] == "3000x2000"  # JPEG draft at 1/8

    runs = report["memory"]["runs"]
    assert [r["files"] for r in runs] == list(bench.QUICK["memory_files"])
    assert all(r["embedded"] == r["files"] for r in runs)  # byte-unique copies: none skipped as duplicates

    lat = report["latency"]
    for key in ("cli_cold_indexed_probe", "cli_cold_info", "server_get_indexed_path", "server_post_new_image"):
        assert lat[key]["p50_ms"] > 0

    sizes = report["search"]["sizes"]
    [entry] = sizes.values()
    assert entry["flat"]["recall@10"] == 1.0
    assert entry["ivfpq"]["recall@10"] >= 0.9 and entry["hnsw"]["recall@10"] >= 0.9
    assert report["duplicates"]["total_s"] >= 0
    assert report["targets"]  # computed (met or not: machine dependent)
    printed = capsys.readouterr().out
    assert "searcher bench (quick)" in printed and "report:" in printed
