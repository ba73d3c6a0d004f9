"""The web app of `searcher serve`: its security boundary (tried to break) and, in headless Chromium,
search by upload and the duplicates quarantine -> undo round trip, with screenshots of each view.

Screenshots go to ``$SEARCHER_SCREENSHOTS`` or ``bench-out/screenshots/`` (kept after the run)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searcher.edits import apply_edit
from searcher.library import Library
from searcher.serve import make_server
from tests.conftest import REPO

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
SHOTS = Path(os.environ.get("SEARCHER_SCREENSHOTS", REPO / "bench-out" / "screenshots"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The sample photos indexed into a fresh library, served on a free loopback port."""
    root = tmp_path_factory.mktemp("web")
    photos = root / "photos"
    shutil.copytree(REPO / "data" / "sample-photos", photos)
    for f in photos.iterdir():  # equal dates, as a fresh checkout may not give them: the keep rule then looks at names
        os.utime(f, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes((photos / "coffee.jpg").read_bytes())
    with Library.open(root / "library") as lib:
        lib.index([photos])
    server = make_server(root / "library", "127.0.0.1", 0, max_upload=2 * 1024 * 1024)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield {"server": server, "photos": photos, "outside": outside, "root": root}
    server.shutdown()
    server.server_close()


def _request(served, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    port = served["server"].server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, data


def _q(path: str) -> str:
    return urllib.parse.quote(path, safe="")


# --- security ----------------------------------------------------------------------------------------


def test_non_loopback_needs_a_token(served) -> None:
    lib = served["root"] / "library"
    with pytest.raises(PermissionError, match="token"):
        make_server(lib, "0.0.0.0", 0)
    res = subprocess.run(
        [sys.executable, "-m", "searcher", "serve", "--host", "0.0.0.0", "--port", "0", "-L", str(lib)],
        capture_output=True, text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "SEARCHER_TOKEN"},
    )  # fmt: skip
    assert res.returncode == 2 and "without a token" in res.stderr


def test_only_indexed_files_are_served(served) -> None:
    photos, outside = served["photos"], served["outside"]
    ok, data = _request(served, "GET", f"/image?path={_q(str(photos / 'coffee.jpg'))}")
    assert ok == 200 and data == (photos / "coffee.jpg").read_bytes()
    status, _ = _request(served, "GET", f"/thumb?path={_q(str(photos / 'coffee.jpg'))}")
    assert status == 200
    attempts = [
        "/etc/passwd",
        str(outside / "secret.jpg"),
        str(photos / ".." / "outside" / "secret.jpg"),
        str(photos) + "/../../../../etc/passwd",
        "coffee.jpg",  # relative
        str(photos / "coffee.jpg") + "\x00.png",
        str(served["root"] / "library" / "library.db"),
    ]
    for raw in attempts:
        for route in ("/image", "/thumb"):
            status, data = _request(served, "GET", f"{route}?path={_q(raw)}")
            assert status == 404, (route, raw, status)
            assert b"root:" not in data
    status, _ = _request(served, "GET", "/static/..%2F..%2Fserve.py")
    assert status == 404


def test_a_symlink_swapped_in_for_an_indexed_file_is_refused(served, tmp_path) -> None:
    photos = served["photos"]
    victim = photos / "rocket (copy).jpg"
    backup = tmp_path / "backup.jpg"
    shutil.copy2(victim, backup)
    victim.unlink()
    victim.symlink_to(served["outside"] / "secret.jpg")
    try:
        for route in ("/image", "/thumb"):
            status, _ = _request(served, "GET", f"{route}?path={_q(str(victim))}")
            assert status == 404, route
    finally:
        victim.unlink()
        shutil.copy2(backup, victim)


def test_state_changes_need_csrf_and_same_origin(served) -> None:
    body = json.dumps({"batch": "x"}).encode()
    headers = {"Content-Type": "application/json"}
    for extra in (
        {},
        {"X-CSRF-Token": "wrong"},
        {"X-CSRF-Token": served["server"].policy.csrf, "Origin": "http://evil.example"},
    ):
        status, _ = _request(served, "POST", "/api/undo", body, {**headers, **extra})
        assert status in (401, 403), extra
    # with the page's token and no foreign origin it reaches the handler (which refuses the unknown batch)
    status, _ = _request(served, "POST", "/api/undo", body, {**headers, "X-CSRF-Token": served["server"].policy.csrf})
    assert status in (400, 404, 409)
    # DNS rebinding: a foreign Host on the loopback server without token
    port = served["server"].server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/browse", headers={"Host": "evil.example"})
    assert conn.getresponse().status in (400, 403)
    conn.close()


def test_bad_uploads_are_4xx(served) -> None:
    status, data = _request(served, "POST", "/query", b"this is not an image", {"Content-Type": "image/jpeg"})
    assert 400 <= status < 500 and b"error" in data
    status, _ = _request(served, "POST", "/query", b"\0" * (3 * 1024 * 1024), {"Content-Type": "image/jpeg"})
    assert status == 413
    multipart = {"Content-Type": "multipart/form-data; boundary=x"}
    status, _ = _request(served, "POST", "/query", b"--x\r\nbroken", multipart)
    assert 400 <= status < 500


def test_pages_and_status_answer(served) -> None:
    for page in ("/", "/browse", "/duplicates", "/status"):
        status, data = _request(served, "GET", page)
        assert status == 200 and b"<html" in data, page
    status, data = _request(served, "GET", "/api/status")
    info = json.loads(data)
    assert status == 200 and info["images"] == len([p for p in served["photos"].iterdir() if p.suffix != ".md"])


# --- in a real browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium: run scripts/install_browser.sh (Debian package chromium) to run the browser tests")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        yield b
        b.close()


def _all_images_loaded(page) -> None:
    """Lazy thumbnails below the fold load too, so a full-page screenshot shows them."""
    page.evaluate("document.querySelectorAll('img').forEach((i) => { i.loading = 'eager'; })")
    page.wait_for_function("() => [...document.images].every((i) => i.complete)", timeout=60_000)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_finds_the_original_first(served, browser, tmp_path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    image = Image.open(served["photos"] / "astronaut.jpg").convert("RGB")
    probe = tmp_path / "astronaut_edited.jpg"
    apply_edit(image, "combo_web", np.random.default_rng(3)).save(probe, quality=70)
    url = served["server"].url
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url + "/")
    page.set_input_files("#file", str(probe))
    page.wait_for_selector("#results figure", timeout=60_000)
    first = page.locator("#results figure").first.get_attribute("data-path")
    assert first == str(served["photos"] / "astronaut.jpg")
    _all_images_loaded(page)
    page.screenshot(path=str(SHOTS / "search.png"), full_page=True)
    # click a result: the URL then names it (bookmarkable), and the search runs from it
    # wait for the navigation itself, not the new page's load event (a loaded CI box once took over 30 s)
    with page.expect_navigation(url="**/?path=*", wait_until="commit", timeout=60_000):
        page.locator("#results figure a").first.click()
    page.wait_for_selector("#results figure", timeout=120_000)
    assert "astronaut.jpg" in urllib.parse.unquote(page.url)
    page.goto(url + "/browse")
    _all_images_loaded(page)
    page.screenshot(path=str(SHOTS / "browse.png"), full_page=True)
    page.goto(url + "/status")
    page.wait_for_selector("#images", timeout=30_000)
    page.screenshot(path=str(SHOTS / "status.png"), full_page=True)
    page.close()


def test_quarantine_then_undo_in_the_browser(served, browser) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    photos = served["photos"]
    before = {p.name: _sha(p) for p in photos.iterdir() if p.is_file()}
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(served["server"].url + "/duplicates")
    page.wait_for_selector("section.group", timeout=120_000)
    _all_images_loaded(page)
    page.screenshot(path=str(SHOTS / "duplicates.png"), full_page=True)
    button = page.locator("section.group.tier-exact button[data-action=quarantine]").first
    button.click()
    page.wait_for_selector("#undo-last", timeout=60_000)
    gone = [n for n in before if not (photos / n).exists()]
    assert gone, "quarantine moved nothing"
    assert "rocket.jpg" not in gone  # the original is kept, its copy moved
    page.screenshot(path=str(SHOTS / "duplicates-after-quarantine.png"), full_page=True)
    page.click("#undo-last")
    page.wait_for_load_state("load")
    page.wait_for_function("() => !document.querySelector('#undo-last')", timeout=60_000)
    after = {p.name: _sha(p) for p in photos.iterdir() if p.is_file()}
    assert after == before  # every file back, byte-identical
    page.close()


def test_thumbnails_are_cached_and_bounded(served) -> None:
    path = served["photos"] / "chelsea.jpg"
    _, first = _request(served, "GET", f"/thumb?path={_q(str(path))}")
    _, second = _request(served, "GET", f"/thumb?path={_q(str(path))}")
    assert first == second and Image.open(io.BytesIO(first)).size[0] <= 512
    status, data = _request(served, "GET", "/api/status")
    assert json.loads(data)["thumbnail_bytes"] > 0
