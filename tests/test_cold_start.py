"""Cold start, checked structurally: which modules each everyday command imports.

A cold `searcher info` is mostly Python importing modules, so the way to keep it quick is to keep
heavy modules out of commands that do not need them. Each command below runs in a fresh
interpreter through a tiny wrapper that prints ``sorted(sys.modules)`` at exit; the test asserts
that the modules a command must not need are absent. No wall times here: they live in
``scripts/bench_runtime.py --cold-cli`` (README "Speed").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from searcher import Library
from tests.conftest import REPO, synthetic_photo

WRAPPER = """
import atexit, json, sys
atexit.register(lambda: sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n"))
sys.argv = ["searcher", *sys.argv[1:]]
from searcher.cli import main
main()
"""

# Never needed by a command that embeds nothing: the inference runtimes, the exporter, Ray, and
# pydantic (typer >= 0.29 imports it at start-up: pyproject pins typer below that).
RUNTIMES = {"tensorflow", "keras", "tf_keras", "onnxruntime", "onnx", "tf2onnx", "ray", "pydantic"}
NUMERIC = {"numpy", "faiss"}
PIXELS = {"PIL", "pillow_heif", "cv2"}

# command -> (arguments, modules it must not import, modules it must import: the control that shows
# the wrapper sees what a command really loads)
COMMANDS: dict[str, tuple[list[str], set[str], set[str]]] = {
    "info": (["info"], RUNTIMES | NUMERIC | PIXELS, {"sqlalchemy"}),
    "failures": (["failures"], RUNTIMES | NUMERIC | PIXELS, {"sqlalchemy"}),
    "check": (["check", "--quick"], RUNTIMES | PIXELS, {"faiss"}),  # reads the FAISS file: faiss is its job
    "check-full": (["check"], RUNTIMES | PIXELS, {"faiss"}),
    # duplicates re-reads cached verification scores; searcher/verify.py still imports cv2 at the top
    # (so cv2 and Pillow are not asserted absent here).
    "duplicates": (["duplicates"], RUNTIMES | {"pillow_heif"}, {"faiss"}),
    # with --invariant none an indexed probe reuses its stored vector: no network, no model (the default
    # embeds it again: tests/test_fast_paths.py). By default the first 10 results are verified on the
    # pixels (README "Retrieval quality"), which loads cv2; with verification off nothing decodes pictures
    "query-indexed": (["query", "{probe}", "--invariant", "none"], RUNTIMES | {"pillow_heif"}, {"faiss"}),
    "query-indexed-unverified": (
        ["query", "{probe}", "--invariant", "none", "--verify", "0"],
        RUNTIMES | {"pillow_heif", "cv2"},
        {"faiss"},
    ),
}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> tuple[Path, Path]:
    """A small library (tiny real MobileNet) with one near-duplicate pair, its verification score cached."""
    root = tmp_path_factory.mktemp("cold")
    photos = root / "photos"
    photos.mkdir()
    for i in range(6):
        synthetic_photo(i).save(photos / f"p{i}.jpg", quality=90)
    Image.open(photos / "p0.jpg").resize((240, 180)).save(photos / "p0-small.jpg", quality=80)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    weights = shared / "weights" / "mobilenet_0.25_128.weights.h5"
    with Library.open(root / "lib") as lib:
        report = lib.index([photos], backbone="mobilenet_025_128", weights=str(weights))
        assert report.embedded == 7 and report.failed == 1
    first, _ = run(["duplicates"], root / "lib")  # computes and caches the pair's verification score
    assert first["code"] == 0
    return root / "lib", photos / "p1.jpg"


def run(args: list[str], lib: Path) -> tuple[dict, str]:
    env = {**os.environ, "SEARCHER_DEBUG": "0", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args, "--library", str(lib), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    marker = [line for line in proc.stderr.splitlines() if line.startswith("MODULES ")]
    assert marker, f"`searcher {' '.join(args)}` did not exit normally: {proc.stderr[-2000:]}"
    modules = set(json.loads(marker[-1][len("MODULES ") :]))
    return {"code": proc.returncode, "modules": modules, "stderr": proc.stderr[-2000:]}, proc.stdout


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_leaves_heavy_modules_out(name: str, library: tuple[Path, Path]) -> None:
    lib, probe = library
    args, absent, present = COMMANDS[name]
    result, stdout = run([a.format(probe=probe) for a in args], lib)
    assert result["code"] == 0, result["stderr"]
    loaded = top_level(result["modules"])
    assert not (absent & loaded), f"`searcher {' '.join(args)}` imported {sorted(absent & loaded)}"
    assert present <= loaded, f"the control failed: {sorted(present - loaded)} not seen"
    json.loads(stdout)  # the command really answered


def test_indexed_probe_answer_and_no_indexing_pipeline(library: tuple[Path, Path]) -> None:
    """With ``--invariant none`` the indexed probe is answered from its stored vector without the
    indexing or decoding stages (pixel verification off: it decodes the pictures it compares)."""
    lib, probe = library
    result, stdout = run(["query", str(probe), "-k", "3", "--invariant", "none", "--verify", "0"], lib)
    assert result["code"] == 0, result["stderr"]
    assert not {"searcher.indexing", "searcher.pipeline", "searcher.decode", "searcher.embed"} & result["modules"]
    [answer] = json.loads(stdout)
    assert len(answer["results"]) == 3
    assert all(Path(r["path"]).name != probe.name for r in answer["results"])


def test_info_does_not_load_the_query_or_index_halves(library: tuple[Path, Path]) -> None:
    lib, _ = library
    result, stdout = run(["info"], lib)
    assert result["code"] == 0
    assert not {"searcher.indexing", "searcher.querying", "searcher.vector_index"} & result["modules"]
    assert json.loads(stdout)["images"] == 7
