"""Server-rendered HTML of the web app (plain templates: every value goes through :func:`html.escape`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

NAV = (("/", "Search"), ("/browse", "Browse"), ("/duplicates", "Duplicates"), ("/status", "Status"))


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def thumb_url(path: str) -> str:
    return "/thumb?" + urlencode({"path": path})


def search_url(path: str) -> str:
    return "/?" + urlencode({"path": path})


def layout(title: str, active: str, body: str, csrf: str) -> str:
    links = "".join(
        f'<a href="{href}"{" class=active" if href == active else ""}>{name}</a>' for href, name in NAV
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{escape(csrf)}"><title>{escape(title)} - searcher</title>
<link rel="stylesheet" href="/static/app.css"></head>
<body><header><strong>searcher</strong><nav>{links}</nav></header>
<main>{body}</main><div id="toast" role="status"></div>
<script src="/static/app.js"></script></body></html>"""


def _card(row: dict[str, Any], extra: str = "") -> str:
    res = f"{row['width']}x{row['height']}" if row.get("width") else ""
    path = row["path"]
    return (
        f'<figure class="card" data-path="{escape(path)}"><a href="{escape(search_url(path))}" title="search from it">'
        f'<img loading="lazy" src="{escape(thumb_url(path))}" alt=""></a><figcaption>'
        f'<span class="path">{escape(path)}</span><span>{res} · {human_bytes(row.get("size"))}</span>{extra}'
        "</figcaption></figure>"
    )


def _pager(base: str, params: dict[str, Any], page: int, pages: int) -> str:
    def link(p: int, text: str) -> str:
        return f'<a href="{base}?{escape(urlencode({**params, "page": p}))}">{text}</a>'

    prev = link(page - 1, "&larr; previous") if page > 1 else ""
    nxt = link(page + 1, "next &rarr;") if page < pages else ""
    return f'<p class="pager">{prev} <span>page {page} of {pages}</span> {nxt}</p>'


def search_page(csrf: str) -> str:
    body = """<h1>Search</h1>
<form id="search-form" class="controls">
 <label>k <input name="k" type="number" min="1" max="1000" value="10"></label>
 <label>preset <select name="preset"><option value="instance">instance (same scene)</option>
   <option value="category">category (same kind)</option></select></label>
 <label>threshold <input name="threshold" type="number" min="-1" max="1" step="0.01" placeholder="none"></label>
</form>
<div id="drop" tabindex="0">Drop an image here, paste one (Ctrl-V) or
 <label class="button">choose a file<input id="file" type="file" accept="image/*" hidden></label>
 &mdash; or click any thumbnail to search from it.</div>
<p id="summary"></p><div id="results" class="grid"></div>"""
    return layout("Search", "/", body, csrf)


def browse_page(csrf: str, page, folder: str, failures) -> str:
    cards = "".join(_card(r) for r in page.rows) or "<p>no images here</p>"
    params = {"folder": folder} if folder else {}
    fail_rows = "".join(
        f"<tr><td>{escape(r['path'])}</td><td>{escape(r['error'] or '')}</td></tr>" for r in failures.rows
    )
    fail_html = (
        f'<h2 id="failures">Failures ({failures.total})</h2><table class="failures"><tr><th>file</th>'
        f"<th>reason</th></tr>{fail_rows}</table>"
        if failures.total
        else '<h2 id="failures">Failures</h2><p>none</p>'
    )
    body = f"""<h1>Browse</h1>
<form class="controls" method="get" action="/browse"><label>folder
<input name="folder" size="60" value="{escape(folder)}" placeholder="/all/of/the/library"></label>
<button>filter</button></form>
<p>{page.total} images{" under " + escape(folder) if folder else ""}</p>
{_pager("/browse", params, page.page, page.pages)}<div class="grid">{cards}</div>
{_pager("/browse", params, page.page, page.pages)}{fail_html}"""
    return layout("Browse", "/browse", body, csrf)


def _member(group: dict[str, Any], m: dict[str, Any], kept: dict[str, Any], gen: int) -> str:
    buttons = ""
    if not m["keep"]:
        payload = json.dumps({"generation": gen, "group": group["id"], "path": m["path"]})
        nd = json.dumps({"a": kept["content_hash"], "b": m["content_hash"], "note": f"{kept['path']} | {m['path']}"})
        buttons = (
            f"<button data-action=\"keep\" data-payload='{escape(payload)}'>keep this one</button>"
            f"<button data-action=\"not-duplicate\" data-payload='{escape(nd)}'>not a duplicate</button>"
        )
    label = '<b class="kept">kept</b>' if m["keep"] else '<b class="move">copy</b>'
    if m.get("reference"):
        label += " (reference)"
    mtime = datetime.fromtimestamp(m["mtime_ns"] / 1e9, UTC).strftime("%Y-%m-%d %H:%M")
    return (
        f'<figure class="member{" keep" if m["keep"] else ""}" data-path="{escape(m["path"])}">'
        f'<a href="{escape(search_url(m["path"]))}">'
        f'<img loading="lazy" src="{escape(thumb_url(m["path"]))}" alt=""></a>'
        f'<figcaption>{label} score {m["score"]:.3f}<br><span class="path">{escape(m["path"])}</span><br>'
        f'{m["width"]}x{m["height"]} · {human_bytes(m["size"])} · {escape(m.get("format") or "")} · {mtime}'
        f"<br>{buttons}</figcaption></figure>"
    )


def duplicates_page(csrf: str, data: dict[str, Any], tier: str, batches: list[dict[str, Any]]) -> str:
    gen = data["generation"]
    tabs = " ".join(
        f'<a href="/duplicates?{escape(urlencode({"tier": t}))}"{" class=active" if t == tier else ""}>'
        f"{t} ({n})</a>"
        for t, n in data["counts"].items()
    )
    tabs = f'<a href="/duplicates"{" class=active" if not tier else ""}>all</a> ' + tabs
    groups = []
    for g in data["groups"]:
        kept = g["members"][0]
        members = "".join(_member(g, m, kept, gen) for m in g["members"])
        action = ""
        if g["tier"] != "similar":
            payload = escape(json.dumps({"generation": gen, "group": g["id"]}))
            action = (
                f"<button class=danger data-action=\"quarantine\" data-payload='{payload}'>quarantine the rest</button>"
            )
        else:
            action = "<em>suggestion only: nothing is moved for similar groups</em>"
        groups.append(
            f'<section class="group tier-{g["tier"]}" data-group="{g["id"]}"><h2>{g["tier"]} · '
            f'{len(g["members"])} files · spread {g["spread"]:.3f} {action}</h2><div class="members">{members}</div>'
            "</section>"
        )
    undo = "".join(
        f"<li>batch {escape(b['batch'])} <button data-action=\"undo\" "
        f"data-payload='{escape(json.dumps({'batch': b['batch']}))}'>undo</button></li>"
        for b in batches
    )
    undo_html = f'<div class="batches"><h2>Quarantine batches</h2><ul>{undo}</ul></div>' if undo else ""
    params = {"tier": tier} if tier else {}
    body = f"""<h1>Duplicates</h1><p class="tabs" data-generation="{gen}">{tabs}</p>
<p>Nothing is deleted: "quarantine the rest" moves the copies not kept into the library's quarantine folder
(journalled; files changed since are skipped) and every action can be undone.</p>{undo_html}
{_pager("/duplicates", params, data["page"], data["pages"])}
{"".join(groups) or "<p>no duplicate groups</p>"}
{_pager("/duplicates", params, data["page"], data["pages"])}"""
    return layout("Duplicates", "/duplicates", body, csrf)


def status_page(csrf: str) -> str:
    body = """<h1>Status</h1><div id="status" data-poll="/api/status"><p>loading ...</p></div>"""
    return layout("Status", "/status", body, csrf)
