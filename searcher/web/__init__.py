"""The web app of ``searcher serve``: pages, static assets, thumbnails and the web JSON API.

Layers (each its own module, all over the public library API):

* :mod:`searcher.web.security`: who may talk to the server (loopback Host check, token, CSRF) and
  which files may be read (only images that are in the library, no symlink escape).
* :mod:`searcher.web.catalog`: paged SQL reads of the library (browse, failures, counts, one row by path).
* :mod:`searcher.web.thumbnails`: thumbnails made on first view, cached in the library folder (bounded, LRU).
* :mod:`searcher.web.review`: the duplicates review: keep, not-a-duplicate, quarantine and undo through
  :mod:`searcher.actions` and :mod:`searcher.decisions` (the same mechanism as the CLI).
* :mod:`searcher.web.pages`: the server-rendered HTML; ``static/`` holds the CSS and the little JS.
* :mod:`searcher.web.routes`: the URL table that ties them together for :mod:`searcher.serve`.
"""

from searcher.web.routes import WebApp
from searcher.web.security import AccessPolicy, generate_token

__all__ = ["AccessPolicy", "WebApp", "generate_token"]
