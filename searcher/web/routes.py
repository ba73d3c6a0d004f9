"""The URL table of the web app: pages, static files, thumbnails, originals and the web JSON API."""

from __future__ import annotations

import json
import mimetypes
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from searcher.web import catalog, pages
from searcher.web.review import DuplicateReview, ReviewError
from searcher.web.security import AccessPolicy, indexed_file
from searcher.web.thumbnails import ThumbnailCache

STATIC = Path(__file__).parent / "static"
INDEX_STATUS_FILE = "index-status.json"  # written by `searcher index` (searcher.cli.progress)


@dataclass
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: HTTPStatus = HTTPStatus.OK) -> Response:
    return Response(status, json.dumps(data, ensure_ascii=False).encode())


def html_response(text: str) -> Response:
    return Response(HTTPStatus.OK, text.encode(), "text/html; charset=utf-8", {"Cache-Control": "no-store"})


def _int(query: dict[str, list[str]], name: str, default: int) -> int:
    try:
        return int(query.get(name, [str(default)])[0])
    except ValueError:
        return default


class WebApp:
    """Answers the web routes for one :class:`~searcher.serve.SearchService`."""

    def __init__(self, service, policy: AccessPolicy, *, thumb_bytes: int | None = None) -> None:
        self.service = service
        self.lib = service.lib
        self.policy = policy
        self.thumbs = ThumbnailCache(self.lib.root, **({"max_bytes": thumb_bytes} if thumb_bytes else {}))
        self.review = DuplicateReview(self.lib, backbone=service.model.backbone)

    def _file(self, query: dict[str, list[str]]) -> str | None:
        return indexed_file(query.get("path", [""])[0], lambda p: catalog.is_indexed(self.lib, p))

    def get(self, path: str, query: dict[str, list[str]]) -> Response | None:
        csrf = self.policy.csrf
        if path == "/":
            return html_response(pages.search_page(csrf))
        if path == "/browse":
            folder = query.get("folder", [""])[0].strip()
            page = catalog.images_page(self.lib, _int(query, "page", 1), folder or None)
            failures = catalog.images_page(self.lib, _int(query, "fpage", 1), folder or None, failed=True)
            return html_response(pages.browse_page(csrf, page, folder, failures))
        if path == "/duplicates":
            tier = query.get("tier", [""])[0]
            data = self.review.page(tier or None, _int(query, "page", 1))
            return html_response(pages.duplicates_page(csrf, data, tier, self.review.open_batches()))
        if path == "/status":
            return html_response(pages.status_page(csrf))
        if path == "/api/status":
            return json_response(self.status())
        if path == "/api/duplicates":
            tier = query.get("tier", [""])[0]
            return json_response(self.review.page(tier or None, _int(query, "page", 1)))
        if path in ("/thumb", "/image"):
            full = self._file(query)
            if full is None:
                return json_response({"error": "not an image of this library"}, HTTPStatus.NOT_FOUND)
            if path == "/image":
                kind = mimetypes.guess_type(full)[0] or "application/octet-stream"
                return Response(HTTPStatus.OK, Path(full).read_bytes(), kind, {"Cache-Control": "private, max-age=60"})
            row = catalog.row_by_path(self.lib, full)
            try:
                data = self.thumbs.get(full, row["content_hash"] if row else None)
            except Exception as exc:  # unreadable now: a clear 422, never a 500
                return json_response({"error": f"cannot make a thumbnail: {exc}"}, HTTPStatus.UNPROCESSABLE_ENTITY)
            return Response(HTTPStatus.OK, data, "image/jpeg", {"Cache-Control": "private, max-age=300"})
        if path.startswith("/static/"):
            name = path[len("/static/") :]
            target = STATIC / name
            if "/" in name or name.startswith(".") or not target.is_file():
                return json_response({"error": "no such file"}, HTTPStatus.NOT_FOUND)
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
            return Response(HTTPStatus.OK, target.read_bytes(), kind, {"Cache-Control": "no-cache"})
        return None

    def post(self, path: str, body: dict[str, Any]) -> Response | None:
        """State-changing routes (the caller has done the CSRF check)."""
        try:
            if path == "/api/keep":
                return json_response(self.review.keep(int(body["generation"]), int(body["group"]), str(body["path"])))
            if path == "/api/not-duplicate":
                note = str(body.get("note", ""))
                return json_response(self.review.not_duplicate(str(body["a"]), str(body["b"]), note))
            if path == "/api/forget-not-duplicate":
                return json_response(self.review.forget_not_duplicate(str(body["a"]), str(body["b"])))
            if path == "/api/quarantine":
                return json_response(self.review.quarantine(int(body["generation"]), int(body["group"])))
            if path == "/api/undo":
                return json_response(self.review.undo(str(body["batch"])))
        except (KeyError, TypeError, ValueError) as exc:
            status = HTTPStatus.CONFLICT if isinstance(exc, ReviewError) else HTTPStatus.BAD_REQUEST
            return json_response({"error": str(exc) or f"missing field {exc}"}, status)
        return None

    def status(self) -> dict[str, Any]:
        out = catalog.counts(self.lib)
        try:
            progress = json.loads((self.lib.root / INDEX_STATUS_FILE).read_text())
            progress["age_s"] = round(time.time() - float(progress.get("updated", 0)), 1)
        except (OSError, ValueError):
            progress = None
        out["indexing"] = progress
        out["thumbnail_bytes"] = self.thumbs.total_bytes()
        return out
