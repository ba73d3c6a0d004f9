"""`searcher serve`: the HTTP JSON API, in-process on an ephemeral loopback port, and the CLI command."""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from searcher import Library
from searcher.serve import SearchServer, make_server
from tests.conftest import REPO, synthetic_photo


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("serve")
    photos = root / "photos"
    photos.mkdir()
    for i in range(8):
        synthetic_photo(i).save(photos / f"p{i}.jpg", quality=90)
    with Library.open(root / "lib") as lib:
        assert lib.index([photos]).embedded == 8
    return root / "lib", photos


@pytest.fixture(scope="module")
def server(library: tuple[Path, Path]) -> Iterator[SearchServer]:
    srv = make_server(library[0], "127.0.0.1", 0, max_upload=2_000_000)
    srv.service._refresh_every = 0.0  # pick up library changes at once (tests)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(
    srv: SearchServer, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict]:
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def test_health_and_info(server: SearchServer) -> None:
    assert server.server_address[0] == "127.0.0.1"
    status, health = request(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["warm"] is True
    assert health["vectors"] == 8 and health["index"].startswith("flat")
    status, info = request(server, "GET", "/info")
    assert status == 200 and info["images"] >= 8


def test_get_query_by_indexed_path(server: SearchServer, library: tuple[Path, Path]) -> None:
    _, photos = library
    from urllib.parse import quote

    status, answer = request(server, "GET", f"/query?path={quote(str(photos / 'p2.jpg'))}&k=3")
    assert status == 200, answer
    assert len(answer["results"]) == 3 and answer["k"] == 3
    assert all(Path(r["path"]).name != "p2.jpg" for r in answer["results"])
    scores = [r["score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    status, strict = request(server, "GET", f"/query?path={quote(str(photos / 'p2.jpg'))}&k=3&threshold=0.999")
    assert status == 200 and strict["results"] == []  # different synthetic pictures are not that close


def test_get_query_refuses_paths_that_are_not_indexed(server: SearchServer, tmp_path: Path) -> None:
    other = tmp_path / "x.jpg"
    synthetic_photo(50).save(other)
    status, answer = request(server, "GET", f"/query?path={other}")
    assert status == 404 and "not an indexed image" in answer["error"]
    assert request(server, "GET", "/query")[0] == 400
    assert request(server, "GET", "/query?path=/a&k=zero")[0] == 400
    assert request(server, "GET", "/query?path=/a&k=0")[0] == 400
    assert request(server, "GET", "/nothing-here")[0] == 404


def test_post_raw_image_body_finds_its_source(server: SearchServer, library: tuple[Path, Path]) -> None:
    _, photos = library
    copy = Image.open(photos / "p5.jpg").resize((200, 150))
    status, answer = request(server, "POST", "/query?k=2", jpeg_bytes(copy, quality=60), {"Content-Type": "image/jpeg"})
    assert status == 200, answer
    assert Path(answer["results"][0]["path"]).name == "p5.jpg"
    assert answer["results"][0]["score"] > 0.85 and answer["took_ms"] > 0


def test_post_multipart_upload(server: SearchServer, library: tuple[Path, Path]) -> None:
    _, photos = library
    data = jpeg_bytes(Image.open(photos / "p6.jpg").convert("L").convert("RGB"), quality=80)
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="probe.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, answer = request(
        server, "POST", "/query", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert status == 200, answer
    assert answer["query"] == "probe.jpg" and len(answer["results"]) == 1
    assert Path(answer["results"][0]["path"]).name == "p6.jpg"


def test_post_invariant_none_embeds_the_upright_view_only(server: SearchServer, library: tuple[Path, Path]) -> None:
    """?invariant=none: one view instead of four. An upright copy is still found; a turned copy is
    found by the default (rotations) and scores clearly lower with the upright view alone."""
    _, photos = library
    upright = jpeg_bytes(Image.open(photos / "p3.jpg").resize((200, 150)), quality=70)
    turned = jpeg_bytes(Image.open(photos / "p3.jpg").rotate(90, expand=True), quality=85)
    headers = {"Content-Type": "image/jpeg"}
    status, answer = request(server, "POST", "/query?k=1&invariant=none", upright, headers)
    assert status == 200 and Path(answer["results"][0]["path"]).name == "p3.jpg", answer
    status, rotations = request(server, "POST", "/query?k=8", turned, headers)
    assert status == 200 and Path(rotations["results"][0]["path"]).name == "p3.jpg", rotations
    status, single = request(server, "POST", "/query?k=8&invariant=none", turned, headers)
    assert status == 200
    score = {Path(r["path"]).name: r["score"] for r in single["results"]}.get("p3.jpg", -1.0)
    assert score < rotations["results"][0]["score"] - 0.02, (score, rotations["results"][0])
    status, answer = request(server, "POST", "/query?invariant=sideways", upright, headers)
    assert status == 400 and "invariant" in answer["error"]


def test_server_runs_numpy_blas_on_one_thread(server: SearchServer) -> None:
    from threadpoolctl import threadpool_info

    numpy_blas = [i for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]
    assert numpy_blas and all(i["num_threads"] == 1 for i in numpy_blas), numpy_blas


def test_post_errors(server: SearchServer) -> None:
    status, answer = request(server, "POST", "/query", b"certainly not an image", {"Content-Type": "image/jpeg"})
    assert status == 422 and "decode" in answer["error"]
    assert request(server, "POST", "/query", b"", {"Content-Type": "image/jpeg"})[0] == 400
    status, answer = request(server, "POST", "/query", b"x" * 2_000_001, {"Content-Type": "image/jpeg"})
    assert status == 413
    assert request(server, "POST", "/elsewhere", b"abc")[0] == 404
    assert request(server, "PUT", "/query", b"abc")[0] == 405
    # the server is still healthy after all that
    assert request(server, "GET", "/health")[0] == 200


def test_concurrent_queries(server: SearchServer, library: tuple[Path, Path]) -> None:
    _, photos = library
    data = jpeg_bytes(Image.open(photos / "p3.jpg"), quality=85)
    results: list[str] = []

    def one() -> None:
        status, answer = request(server, "POST", "/query?k=1", data, {"Content-Type": "image/jpeg"})
        results.append(Path(answer["results"][0]["path"]).name if status == 200 else f"error {status}")

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["p3.jpg"] * 6


def test_server_sees_images_indexed_while_it_runs(server: SearchServer, library: tuple[Path, Path]) -> None:
    lib_dir, photos = library
    extra = photos.parent / "later"
    extra.mkdir(exist_ok=True)
    synthetic_photo(77).save(extra / "late.jpg", quality=90)
    with Library.open(lib_dir) as lib:
        assert lib.index([extra]).embedded == 1
    time.sleep(0.05)
    status, health = request(server, "GET", "/health")
    assert health["vectors"] == 9
    data = jpeg_bytes(Image.open(extra / "late.jpg").resize((160, 120)), quality=70)
    status, answer = request(server, "POST", "/query?k=1", data, {"Content-Type": "image/jpeg"})
    assert status == 200 and Path(answer["results"][0]["path"]).name == "late.jpg"


def test_cli_serve_subprocess(library: tuple[Path, Path]) -> None:
    """`searcher serve --port 0` prints its URL and answers /health."""
    lib_dir, photos = library
    env = {**os.environ, "COLUMNS": "300"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "searcher", "serve", "--port", "0", "--library", str(lib_dir)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = ""
        deadline = time.monotonic() + 180
        while "http://" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "http://127.0.0.1:" in line, (line, proc.poll())
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/query?path={photos / 'p1.jpg'}&k=2")
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        assert resp.status == 200 and len(answer["results"]) == 2
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read())["warm"] is True
        conn.close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_post_query_verifies_the_first_results_unless_told_not_to(
    server: SearchServer, library: tuple[Path, Path]
) -> None:
    """As `searcher query`: the answer carries each verified result's score (1 = the same picture) and,
    for those that are not copies, the homography inliers; ?verify=0 answers in CNN order, unverified."""
    _, photos = library
    copy = jpeg_bytes(Image.open(photos / "p2.jpg").resize((240, 180)), quality=75)
    headers = {"Content-Type": "image/jpeg"}
    status, answer = request(server, "POST", "/query?k=5", copy, headers)
    assert status == 200, answer
    first = answer["results"][0]
    assert Path(first["path"]).name == "p2.jpg" and first["verified"] > 0.9 and "inliers" not in first
    assert all("verified" in r for r in answer["results"])
    assert all("inliers" in r for r in answer["results"][1:])  # not copies: their geometric evidence
    status, plain = request(server, "POST", "/query?k=5&verify=0", copy, headers)
    assert status == 200 and not any("verified" in r for r in plain["results"])
    assert {r["path"] for r in plain["results"]} == {r["path"] for r in answer["results"]}
    status, bad = request(server, "POST", "/query?verify=lots", copy, headers)
    assert status == 400 and "verify" in bad["error"]
    from urllib.parse import quote

    status, by_path = request(server, "GET", f"/query?k=3&verify=0&path={quote(str(photos / 'p2.jpg'))}")
    assert status == 200 and not any("verified" in r for r in by_path["results"])


def test_get_query_of_an_indexed_turned_copy(server: SearchServer, library: tuple[Path, Path]) -> None:
    """GET /query embeds the indexed image again with its turned views (as `searcher query PATH`), so an
    indexed copy turned by 90 degrees finds its original; ?invariant=none answers from the stored vector
    (no model run), where the original scores clearly lower."""
    from urllib.parse import quote

    lib_dir, photos = library
    extra = photos.parent / "turned"
    extra.mkdir(exist_ok=True)
    Image.open(photos / "p3.jpg").rotate(90, expand=True).save(extra / "p3-turned.jpg", quality=85)
    with Library.open(lib_dir) as lib:
        assert lib.index([extra]).embedded == 1
    path = quote(str(extra / "p3-turned.jpg"))
    status, turned = request(server, "GET", f"/query?path={path}&k=3")
    assert status == 200 and Path(turned["results"][0]["path"]).name == "p3.jpg", turned
    status, fast = request(server, "GET", f"/query?path={path}&k=9&invariant=none")
    assert status == 200, fast
    score = {Path(r["path"]).name: r["score"] for r in fast["results"]}.get("p3.jpg", -1.0)
    assert score < turned["results"][0]["score"] - 0.02, (score, turned["results"][0])
    status, bad = request(server, "GET", f"/query?path={path}&invariant=sideways")
    assert status == 400 and "invariant" in bad["error"]
