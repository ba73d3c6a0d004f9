"""The web app's security boundary: who may send requests, and which files may be read.

* **Host check** (DNS rebinding): on a loopback address without a token, the ``Host`` header must name
  the loopback address the server listens on; a page on another site that resolves its own name to
  127.0.0.1 is refused.
* **Token**: listening on any other address needs one (``--token``/``SEARCHER_TOKEN`` or generated);
  every request must then carry it (``Authorization: Bearer``, ``X-Searcher-Token``, the cookie set by
  opening ``/?token=...`` once, or ``?token=``).
* **CSRF**: requests that change something (``POST /api/...``) need the per-process CSRF token that the
  pages carry (a custom header, which a cross-site form cannot send and a cross-site ``fetch`` cannot send
  without a CORS pre-flight that is never granted), and a same-origin ``Origin``/``Sec-Fetch-Site`` when
  the browser sends them. A request authenticated with the bearer token in a header is not CSRF-able.
* **Files**: :func:`indexed_file` only lets through paths that are indexed images of the library and whose
  real location (after symlinks) is an indexed image too.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import SimpleCookie

TOKEN_COOKIE = "searcher_token"
CSRF_HEADER = "X-CSRF-Token"
TOKEN_HEADER = "X-Searcher-Token"


def generate_token() -> str:
    return secrets.token_urlsafe(24)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass
class Denial:
    status: HTTPStatus
    message: str


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


class AccessPolicy:
    """Decides, per request, whether it may go on (see the module docstring)."""

    def __init__(self, host: str, token: str | None) -> None:
        if not is_loopback(host) and not token:
            raise PermissionError(
                f"refusing to listen on {host} without a token: anyone who can reach it could read and move "
                "your files. Pass --token, set SEARCHER_TOKEN, or use --generate-token"
            )
        self.host = host
        self.token = token or None
        self.csrf = secrets.token_urlsafe(24)
        self.port = 0

    def bind(self, port: int) -> None:
        self.port = port

    def _host_ok(self, host_header: str | None) -> bool:
        if self.token is not None or host_header is None:
            return True  # with a token, the token is the check; HTTP/1.0 clients (not browsers) send no Host
        host, _, port = host_header.rpartition(":") if not host_header.endswith("]") else (host_header, "", "")
        if not host:
            host, port = host_header, "80"
        host = host.strip("[]").lower()
        return is_loopback(host) and port == str(self.port)

    def cookie_token(self, headers: Mapping[str, str]) -> str | None:
        raw = headers.get("Cookie")
        if not raw:
            return None
        try:
            jar = SimpleCookie(raw)
        except Exception:  # a malformed cookie header is no token
            return None
        morsel = jar.get(TOKEN_COOKIE)
        return morsel.value if morsel else None

    def header_token(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return headers.get(TOKEN_HEADER)

    def check(self, headers: Mapping[str, str], query_token: str | None) -> Denial | None:
        """Every request: the Host check and, with a token, the token."""
        if not self._host_ok(headers.get("Host")):
            return Denial(HTTPStatus.FORBIDDEN, "unexpected Host header (open the server by its loopback address)")
        if self.token is None:
            return None
        for candidate in (self.header_token(headers), self.cookie_token(headers), query_token):
            if _same(candidate, self.token):
                return None
        return Denial(HTTPStatus.UNAUTHORIZED, "this server needs its token: open /?token=<token> once")

    def check_state_change(self, headers: Mapping[str, str]) -> Denial | None:
        """Requests that change something: the CSRF token and a same-origin browser context."""
        if self.token is not None and _same(self.header_token(headers), self.token):
            return None
        site = headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return Denial(HTTPStatus.FORBIDDEN, f"cross-site request refused (Sec-Fetch-Site: {site})")
        origin = headers.get("Origin")
        if origin is not None and origin != f"http://{headers.get('Host', '')}":
            return Denial(HTTPStatus.FORBIDDEN, f"cross-origin request refused (Origin: {origin})")
        if not _same(headers.get(CSRF_HEADER), self.csrf):
            return Denial(HTTPStatus.FORBIDDEN, f"missing or wrong {CSRF_HEADER} header (reload the page)")
        return None


def normal_path(raw: str) -> str | None:
    """The absolute, normalised form of a requested path, or None for anything that is not one."""
    if not raw or "\x00" in raw or not os.path.isabs(raw):
        return None
    return os.path.normpath(raw)


def indexed_file(raw: str, is_indexed) -> str | None:
    """``raw`` when it names an indexed image whose real location is an indexed image too, else None.

    ``is_indexed(path) -> bool`` asks the library. ``..`` segments are folded before the lookup, so they
    can only lead to another indexed path; a symlink put in place of an indexed file (or in a folder on
    its way) that leads anywhere not indexed is refused.
    """
    path = normal_path(raw)
    if path is None or not is_indexed(path):
        return None
    real = os.path.realpath(path)
    if real != path and not is_indexed(real):
        return None
    if not os.path.isfile(real):
        return None
    return path
