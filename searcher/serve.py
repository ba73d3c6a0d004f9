"""A small HTTP server that keeps the model warm and answers queries with JSON.

    searcher serve --port 8765        # or: make_server(library_path).serve_forever()

Endpoints (all answers are JSON, errors are ``{"error": "..."}`` with a 4xx/5xx status):

``GET /health``
    ``{"status": "ok", "model": ..., "vectors": ..., "index": ..., "warm": true}``
``GET /info``
    What ``searcher info --json`` prints.
``GET /query?path=<indexed path>&k=10&threshold=0.8``
    Neighbours of an image that is in the library, answered as ``searcher query PATH`` is
    (embedded again with its turned views and regions; ``&invariant=none`` reuses its stored
    vector: no model run). The image itself is left out of its results. Paths that are not
    indexed get 404: the server never reads arbitrary files on request.
``POST /query?k=10&threshold=0.8``
    Neighbours of an uploaded image: either ``multipart/form-data`` (the first file
    field, or a field named ``image``) or the raw image bytes as the body (any
    ``Content-Type`` other than multipart, e.g. ``image/jpeg``).

Answer: ``{"query": ..., "model": ..., "k": 10, "threshold": 0.8, "took_ms": 3.1,
"results": [{"rank": 1, "path": ..., "score": 0.97, "width": ..., "height": ...}]}``.

Built on the standard library's ``ThreadingHTTPServer`` (one thread per connection; no new
dependency). The model (a compiled ``tf.function``) and FAISS searches are thread-safe; the
index is reloaded when another process (``searcher index``) changes the library. It binds to
127.0.0.1 by default; any other address needs a token. The web app (pages, thumbnails, the
duplicates review) and its security checks live in :mod:`searcher.web`; this module is the HTTP core.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from email import policy
from email.parser import BytesParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from sqlalchemy import select

from searcher.files import absolute
from searcher.library import Hit, Library
from searcher.store import STATUS_OK, ImageRow, ModelRow
from searcher.web import catalog
from searcher.web.routes import Response, WebApp
from searcher.web.security import AccessPolicy, is_loopback

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD = 64 * 1024 * 1024
MAX_K = 1000


class RequestError(Exception):
    """A request the client must fix; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class SearchService:
    """Answers queries against one library; safe to call from many threads at once.

    ``warm`` builds the network at start so the first upload is answered as fast as the rest.
    """

    def __init__(
        self,
        library: str | os.PathLike[str] | None = None,
        *,
        backbone: str | None = None,
        pooling: str | None = None,
        warm: bool = True,
        refresh_every: float = 1.0,
    ) -> None:
        self.lib = Library.open(library, create=False)
        self.model = self.lib.find_model(backbone, pooling)
        self._backbone, self._pooling = backbone, pooling
        self._lock = threading.Lock()
        self._refresh_every = refresh_every
        self._checked = time.monotonic()
        self._revision = self._db_revision()
        self.lib.vector_index(self.model)
        self._embedder = None
        self.started = time.time()
        if warm:
            self.embedder()

    def close(self) -> None:
        self.lib.close()

    # --- state ---
    def _db_revision(self) -> int:
        with self.lib.sessions() as session:
            row = session.get(ModelRow, self.model.id)
            return int(row.revision) if row is not None else -1

    def _refresh(self) -> None:
        """Reload the index (at most every ``refresh_every`` s) when the library changed on disk."""
        now = time.monotonic()
        if now - self._checked < self._refresh_every:
            return
        with self._lock:
            if now - self._checked < self._refresh_every:
                return
            self._checked = now
            revision = self._db_revision()
            if revision == self._revision:
                return
            model = self.lib.find_model(self._backbone, self._pooling)
            self.lib._indexes.pop(self.model.key, None)
            self.lib.vector_index(model)
            self.model, self._revision = model, revision

    def embedder(self):  # -> Embedder (TensorFlow is imported here, once)
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = self.lib.embedder_for(self.model)
        return self._embedder

    # --- answers ---
    def health(self) -> dict[str, Any]:
        self._refresh()
        index = self.lib.vector_index(self.model)
        return {
            "status": "ok",
            "library": str(self.lib.root),
            "model": self.model.key,
            "backbone": self.model.backbone,
            "vectors": len(index),
            "index": index.kind + (" (approximate, exact re-ranking)" if index.approximate else ""),
            "warm": self._embedder is not None,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def info(self) -> dict[str, Any]:
        return self.lib.info()

    def query_path(
        self,
        path: str,
        k: int,
        threshold: float | None,
        preset: str | None = None,
        verify: int | None = None,
        invariant: str | None = None,
    ) -> dict[str, Any]:
        """Neighbours of an indexed image; ``invariant="none"``: its stored vector, no model run."""
        started = time.perf_counter()
        self._refresh()
        full = absolute(path)
        with self.lib.sessions() as session:
            row = session.execute(select(ImageRow).where(ImageRow.path == full)).scalar_one_or_none()
        if row is None or row.status != STATUS_OK:
            raise RequestError(HTTPStatus.NOT_FOUND, f"not an indexed image: {full} (POST the image to /query instead)")
        [result] = self.lib.query(
            [full], k=k, backbone=self.model.backbone, pooling=self.model.pooling, preset=preset, verify=verify,
            invariant=invariant,
        )  # fmt: skip
        if result.error:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{full}: {result.error}")
        return self._answer(full, result.results, k, threshold, started)

    def query_image(
        self,
        data: bytes,
        name: str,
        k: int,
        threshold: float | None,
        preset: str | None = None,
        invariant: str | None = None,
        verify: int | None = None,
    ) -> dict[str, Any]:
        """Neighbours of an uploaded photo. ``invariant``: as ``searcher query --invariant`` (default:
        the preset's; ``"none"`` embeds the upright view only, about 4x less model time than the
        four rotations, but a turned copy is then missed). ``verify``: as ``searcher query --verify``
        (default: the preset's, the first 10; ``0`` answers ~0.1 s sooner, in CNN order)."""
        started = time.perf_counter()
        if not data:
            raise RequestError(HTTPStatus.BAD_REQUEST, "empty image")
        self.embedder()
        self._refresh()
        # Through a temporary file and Library.query, so an upload is answered exactly like
        # `searcher query FILE` (same decoding, same retrieval settings).
        suffix = Path(name).suffix if Path(name).suffix.isascii() and len(Path(name).suffix) <= 8 else ""
        with tempfile.NamedTemporaryFile(prefix="searcher-upload-", suffix=suffix) as handle:
            handle.write(data)
            handle.flush()
            [result] = self.lib.query(
                [handle.name], k=k, backbone=self.model.backbone, pooling=self.model.pooling, preset=preset,
                invariant=invariant, verify=verify,
            )  # fmt: skip
        if result.error:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"cannot decode the image: {result.error}")
        return self._answer(name, result.results, k, threshold, started)

    def query_vector(self, vector: np.ndarray, k: int, threshold: float | None) -> dict[str, Any]:
        started = time.perf_counter()
        self._refresh()
        [hits] = self.lib.search_vectors(np.asarray(vector, np.float32)[None], k, model=self.model)
        return self._answer("vector", hits, k, threshold, started)

    def _answer(self, query: str, hits: list[Hit], k: int, threshold: float | None, started: float) -> dict[str, Any]:
        if threshold is not None:
            hits = [h for h in hits if h.score >= threshold]
        sizes = catalog.sizes_of(self.lib, [h.path for h in hits])
        return {
            "query": query,
            "model": self.model.key,
            "k": k,
            "threshold": threshold,
            "results": [
                {"rank": h.rank, "path": h.path, "score": round(h.score, 6), "width": h.width, "height": h.height,
                 "size": sizes.get(h.path),
                 **({} if h.verified is None else {"verified": round(h.verified, 4)}),
                 **({} if h.inliers is None else {"inliers": h.inliers})}
                for h in hits
            ],
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
        }


def _preset(query: dict[str, list[str]]) -> str | None:
    preset = query.get("preset", [""])[0] or None
    if preset not in (None, "instance", "category"):
        raise RequestError(HTTPStatus.BAD_REQUEST, "preset is 'instance' or 'category'")
    return preset


def _invariant(query: dict[str, list[str]]) -> str | None:
    invariant = query.get("invariant", [""])[0] or None
    if invariant not in (None, "none", "rotations", "all"):
        raise RequestError(HTTPStatus.BAD_REQUEST, "invariant is 'none', 'rotations' or 'all'")
    return invariant


def _verify(query: dict[str, list[str]]) -> int | None:
    raw = query.get("verify", [""])[0]
    if raw in ("", None):
        return None
    if not raw.isdigit() or int(raw) > MAX_K:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"verify is a number of results from 0 to {MAX_K}")
    return int(raw)


def _params(query: dict[str, list[str]]) -> tuple[int, float | None]:
    try:
        k = int(query.get("k", ["10"])[0])
        raw = query.get("threshold", [""])[0]
        threshold = float(raw) if raw not in ("", None) else None
    except ValueError:
        raise RequestError(HTTPStatus.BAD_REQUEST, "k must be an integer and threshold a number") from None
    if not 1 <= k <= MAX_K:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"k must be between 1 and {MAX_K}")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise RequestError(HTTPStatus.BAD_REQUEST, "threshold is a cosine similarity between -1 and 1")
    return k, threshold


def _multipart_image(content_type: str, body: bytes) -> tuple[bytes, str, dict[str, str]]:
    """The uploaded file of a multipart/form-data body, its file name, and the plain fields."""
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise RequestError(HTTPStatus.BAD_REQUEST, "malformed multipart body")
    fields: dict[str, str] = {}
    chosen: tuple[bytes, str] | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition") or ""
        filename = part.get_filename()
        payload = part.get_payload(decode=True) or b""
        if filename is not None or name in ("image", "file"):
            if chosen is None or name == "image":
                chosen = (payload, filename or name)
        else:
            fields[str(name)] = payload.decode("utf-8", "replace")
    if chosen is None:
        raise RequestError(HTTPStatus.BAD_REQUEST, "no file in the multipart body (send it as field 'image')")
    return chosen[0], chosen[1], fields


class _Handler(BaseHTTPRequestHandler):
    server: SearchServer
    protocol_version = "HTTP/1.1"  # keep-alive: a client can send many queries over one connection
    disable_nagle_algorithm = True  # headers and body go out as two writes: without this, +40 ms per answer
    server_version = "searcher"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: HTTPStatus, data: Any) -> None:
        body = json.dumps(data, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_response(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(response.body)

    def _allowed(self, query: dict[str, list[str]]) -> bool:
        """The Host and token checks of every request (answers the refusal itself)."""
        denial = self.server.policy.check(self.headers, query.get("token", [None])[0])
        if denial is not None:
            self._discard_body()
            self._send(denial.status, {"error": denial.message})
            return False
        if self.server.policy.token and query.get("token") and self.command == "GET":
            # opened with ?token=: remember it in a cookie (HttpOnly, this site only) and drop it from the URL
            self.send_response(HTTPStatus.SEE_OTHER)
            cookie = f"searcher_token={self.server.policy.token}; HttpOnly; SameSite=Strict; Path=/"
            self.send_header("Set-Cookie", cookie)
            self.send_header("Location", urlsplit(self.path).path or "/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        return True

    def _run(self, answer) -> None:
        try:
            self._send(HTTPStatus.OK, answer())
        except RequestError as exc:
            self._send(exc.status, {"error": str(exc)})
        except Exception as exc:  # never kill the connection thread silently
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._allowed(query):
            return
        service = self.server.service
        if url.path == "/health":
            self._run(service.health)
        elif url.path == "/info":
            self._run(service.info)
        elif url.path == "/query":

            def answer() -> dict[str, Any]:
                k, threshold = _params(query)
                path = query.get("path", [""])[0]
                if not path:
                    raise RequestError(HTTPStatus.BAD_REQUEST, "GET /query needs ?path=<indexed image path>")
                return service.query_path(path, k, threshold, _preset(query), _verify(query), _invariant(query))

            self._run(answer)
        else:
            try:
                response = self.server.web.get(url.path, query)
            except Exception as exc:  # a page that fails answers 500 with the reason, the server lives on
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})
                return
            if response is None:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {url.path}"})
            else:
                self._send_response(response)

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if not self._allowed(parse_qs(url.query)):
            return
        if url.path.startswith("/api/"):
            self._web_post(url.path)
            return
        if url.path != "/query":
            self._discard_body()
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {url.path}"})
            return

        def answer() -> dict[str, Any]:
            body = self._read_body()
            ctype = self.headers.get("Content-Type", "application/octet-stream")
            query = parse_qs(url.query)
            name = "upload"
            if ctype.lower().startswith("multipart/"):
                body, name, fields = _multipart_image(ctype, body)
                for key in ("k", "threshold", "invariant", "verify"):
                    if key in fields and key not in query:
                        query[key] = [fields[key]]
            k, threshold = _params(query)
            return self.server.service.query_image(
                body, name, k, threshold, _preset(query), _invariant(query), _verify(query)
            )

        self._run(answer)

    def _web_post(self, path: str) -> None:
        """A state-changing web action: CSRF check, a small JSON body, then :meth:`WebApp.post`."""
        denial = self.server.policy.check_state_change(self.headers)
        if denial is not None:
            self._discard_body()
            self._send(denial.status, {"error": denial.message})
            return

        def answer() -> Response:
            body = self._read_body()
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be JSON") from None
            if not isinstance(data, dict):
                raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            response = self.server.web.post(path, data)
            if response is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
            return response

        try:
            self._send_response(answer())
        except RequestError as exc:
            self._send(exc.status, {"error": str(exc)})
        except Exception as exc:  # never kill the connection thread silently
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length")
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if n > self.server.max_upload:
            self._drain(n)  # read and drop it (unbuffered) so the client gets the answer
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"upload larger than {self.server.max_upload} bytes"
            )
        return self.rfile.read(n)

    def _discard_body(self) -> None:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = 0
        self._drain(n)

    def _drain(self, n: int) -> None:
        """Skip an unwanted body of ``n`` bytes in small chunks; a huge one closes the connection instead."""
        if n > max(8 * self.server.max_upload, 256 * 1024 * 1024):
            self.close_connection = True
            return
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            n -= len(chunk)

    def do_PUT(self) -> None:  # noqa: N802
        self._discard_body()
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use GET or POST"})

    do_DELETE = do_PATCH = do_PUT  # noqa: N815


class SearchServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` bound to one :class:`SearchService`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        service: SearchService,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        max_upload: int = DEFAULT_MAX_UPLOAD,
        verbose: bool = False,
        token: str | None = None,
    ) -> None:
        self.policy = AccessPolicy(host, token)  # refuses a non-loopback address without a token
        self.service = service
        self.max_upload = max_upload
        self.verbose = verbose
        super().__init__((host, port), _Handler)
        self.policy.bind(self.server_address[1])
        self.web = WebApp(service, self.policy)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if ":" in str(host):
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def server_close(self) -> None:
        super().server_close()
        self.service.close()


def single_threaded_blas() -> None:
    """Run numpy's BLAS (OpenBLAS) on one thread in this process from now on.

    A served query multiplies small matrices (re-ranking a shortlist of 100 vectors): a BLAS
    thread pool cannot speed that up, but its threads spin while they wait for cores held by ONNX
    Runtime, FAISS or the other request threads. Measured on 2 busy cores: DBA re-ranking of a
    query 25-36 ms with the default pool, 1 ms on one thread (README "Speed").
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def make_server(
    library: str | os.PathLike[str] | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    backbone: str | None = None,
    pooling: str | None = None,
    warm: bool = True,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    verbose: bool = False,
    token: str | None = None,
) -> SearchServer:
    """A server for ``library`` (not yet serving: call ``serve_forever()``; ``port=0`` picks a free one).

    Any ``host`` that is not loopback needs a ``token`` (PermissionError otherwise, before anything loads).
    The process's BLAS runs on one thread from here on (:func:`single_threaded_blas`).
    """
    AccessPolicy(host, token)
    single_threaded_blas()
    service = SearchService(library, backbone=backbone, pooling=pooling, warm=warm)
    try:
        return SearchServer(service, host, port, max_upload=max_upload, verbose=verbose, token=token)
    except BaseException:
        service.close()
        raise


__all__ = ["SearchServer", "SearchService", "is_loopback", "make_server"]
