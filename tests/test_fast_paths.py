"""Commands that need no embedding never import TensorFlow and answer quickly.

Each command runs in a fresh interpreter (``python -c``) that calls the typer app, then
reports whether ``tensorflow`` / ``keras`` were imported and how long the command took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from searcher import Library
from tests.conftest import REPO

RUNNER = """
import json, sys, time
t0 = time.perf_counter()
from searcher.cli import app
code = 0
try:
    app(args=sys.argv[1:], prog_name="searcher", standalone_mode=False)
except SystemExit as exc:
    code = exc.code or 0
except BaseException as exc:
    code = repr(exc)
seconds = time.perf_counter() - t0
heavy = sorted(m for m in ("tensorflow", "keras", "tf_keras", "onnxruntime", "onnx", "tf2onnx") if m in sys.modules)
sys.stdout.flush()
sys.stderr.write("\\nFASTPATH " + json.dumps({"heavy": heavy, "seconds": seconds, "code": code}) + "\\n")
"""


@pytest.fixture(scope="module")
def small_library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.conftest import synthetic_photo

    root = tmp_path_factory.mktemp("fast")
    photos = root / "photos"
    photos.mkdir()
    for i in range(6):
        synthetic_photo(i).save(photos / f"p{i}.jpg", quality=90)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with Library.open(root / "lib") as lib:
        report = lib.index([photos])
        assert report.embedded == 6 and report.failed == 1
    return root / "lib", photos


def run_cli(*args: str, env_extra: dict[str, str] | None = None) -> tuple[dict, str]:
    env = {**os.environ, "SEARCHER_DEBUG": "0", "COLUMNS": "200", **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    marker = [line for line in proc.stderr.splitlines() if line.startswith("FASTPATH ")]
    assert marker, f"the command did not finish: {proc.stderr[-2000:]}"
    return json.loads(marker[-1][len("FASTPATH ") :]), proc.stdout


COMMANDS = {
    "info": lambda lib, photos: ["info", "--library", str(lib), "--json"],
    "failures": lambda lib, photos: ["failures", "--library", str(lib), "--json"],
    # the fast path: an indexed probe's stored vector (the default query embeds it again, see below)
    "query-indexed": lambda lib, photos: [
        "query",
        str(photos / "p1.jpg"),
        "--invariant",
        "none",
        "--library",
        str(lib),
        "--json",
    ],  # fmt: skip
    "duplicates": lambda lib, photos: ["duplicates", "--library", str(lib), "--json"],
    "check": lambda lib, photos: ["check", "--library", str(lib), "--json"],
    "backbones": lambda lib, photos: ["backbones", "--json"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_does_not_import_tensorflow(name: str, small_library: tuple[Path, Path]) -> None:
    from searcher.cli import app

    command = COMMANDS[name](*small_library)[0]
    if command not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        pytest.skip(f"`searcher {command}` is not part of the CLI yet")
    started = time.perf_counter()
    result, stdout = run_cli(*COMMANDS[name](*small_library))
    wall = time.perf_counter() - started
    assert result["code"] == 0, (result, stdout[-2000:])
    assert result["heavy"] == [], f"`searcher {command}` imported {result['heavy']}"
    # In-process time of the command (imports included); generous for a loaded 2-core CI box.
    # Measured on an idle box: ~0.5-0.8 s wall per command, TensorFlow's import alone is ~3-5 s.
    assert result["seconds"] < 6.0, result
    print(f"{name}: {result['seconds']:.2f} s in-process, {wall:.2f} s wall")


def test_query_by_indexed_image_answers_with_neighbours(small_library: tuple[Path, Path]) -> None:
    lib, photos = small_library
    result, stdout = run_cli(
        "query", str(photos / "p1.jpg"), "-k", "3", "--invariant", "none", "--library", str(lib), "--json"
    )  # fmt: skip
    assert result["heavy"] == [] and result["code"] == 0
    [answer] = json.loads(stdout)
    assert len(answer["results"]) == 3
    assert all(Path(r["path"]).name != "p1.jpg" for r in answer["results"])  # the probe is left out


def test_query_of_a_new_image_does_load_the_model(small_library: tuple[Path, Path], tmp_path: Path) -> None:
    """The control: the check above would be meaningless if TensorFlow never showed up in sys.modules."""
    from tests.conftest import synthetic_photo

    lib, _ = small_library
    probe = tmp_path / "new.jpg"
    synthetic_photo(99).save(probe)
    result, _ = run_cli("query", str(probe), "--library", str(lib), "--json", "--runtime", "tensorflow")
    assert result["code"] == 0 and "tensorflow" in result["heavy"] and "onnxruntime" not in result["heavy"]


def test_query_of_a_new_image_on_onnxruntime_does_not_import_tensorflow(
    small_library: tuple[Path, Path], tmp_path: Path
) -> None:
    """Once the model's ONNX export is cached and verified, a new photo is embedded by ONNX Runtime
    alone: TensorFlow, Keras and the exporter stay out of the process (that is the cold-start win)."""
    pytest.importorskip("onnxruntime")
    from tests.conftest import synthetic_photo

    lib, _ = small_library
    with Library.open(lib) as opened:  # export and verify here if no cache has it yet
        assert opened.embedder_for(opened.find_model(), runtime="onnxruntime").runtime == "onnxruntime"
    probe = tmp_path / "new.jpg"
    synthetic_photo(98).save(probe)
    result, stdout = run_cli(
        "query", str(probe), "--library", str(lib), "--json", env_extra={"SEARCHER_RUNTIME": "onnx"}
    )
    assert result["code"] == 0 and result["heavy"] == ["onnxruntime"], result
    [answer] = json.loads(stdout)
    assert len(answer["results"]) == 6


def test_default_query_of_an_indexed_image_embeds_it_on_onnxruntime(small_library: tuple[Path, Path]) -> None:
    """By default an indexed probe is embedded again (turned views and regions rank better than its
    stored vector): with the model's ONNX export cached, that costs ONNX Runtime, never TensorFlow."""
    pytest.importorskip("onnxruntime")
    lib, photos = small_library
    with Library.open(lib) as opened:  # export and verify here if no cache has it yet
        assert opened.embedder_for(opened.find_model(), runtime="onnxruntime").runtime == "onnxruntime"
    probe = photos / "p1.jpg"
    result, stdout = run_cli(
        "query", str(probe), "-k", "3", "--library", str(lib), "--json", env_extra={"SEARCHER_RUNTIME": "onnx"}
    )
    assert result["code"] == 0 and result["heavy"] == ["onnxruntime"], result
    [answer] = json.loads(stdout)
    assert len(answer["results"]) == 3
    assert all(Path(r["path"]).name != "p1.jpg" for r in answer["results"])  # still left out of its results
