// searcher web app: search (drop, pick, paste, click), duplicates actions, live status. No framework.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const kb = (n) => n == null ? "" : n < 1024 ? n + " B" : n < 1048576 ? (n / 1024).toFixed(1) + " KB" : (n / 1048576).toFixed(1) + " MB";
function toast(text) { const t = document.getElementById("toast"); t.textContent = text; t.style.display = "block"; setTimeout(() => t.style.display = "none", 4000); }

async function post(url, payload) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(payload)});
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.status);
  return data;
}

// --- search ---
function params() {
  const f = document.getElementById("search-form"); const p = new URLSearchParams();
  p.set("k", f.k.value || "10"); p.set("preset", f.preset.value);
  if (f.threshold.value !== "") p.set("threshold", f.threshold.value);
  return p;
}
function show(data, label) {
  document.getElementById("summary").textContent = `${data.results.length} results for ${label} (${data.took_ms} ms)`;
  document.getElementById("results").innerHTML = data.results.map((h) => `
    <figure class="card" data-path="${esc(h.path)}"><a href="/?path=${encodeURIComponent(h.path)}" title="search from it">
    <img loading="lazy" src="/thumb?path=${encodeURIComponent(h.path)}" alt=""></a><figcaption>
    <span class="score">#${h.rank} · ${h.score.toFixed(3)}</span><span class="path">${esc(h.path)}</span>
    <span>${h.width}x${h.height} · ${kb(h.size)}</span></figcaption></figure>`).join("");
}
async function searchPath(path) {
  const p = params(); p.set("path", path);
  history.replaceState(null, "", "/?" + p.toString());
  const r = await fetch("/query?" + p.toString()); const data = await r.json();
  if (!r.ok) { document.getElementById("summary").textContent = data.error; return; }
  show(data, path);
}
async function searchFile(file) {
  const form = new FormData(); form.append("image", file, file.name || "pasted.png");
  history.replaceState(null, "", "/");
  document.getElementById("summary").textContent = "searching ...";
  const r = await fetch("/query?" + params().toString(), {method: "POST", body: form}); const data = await r.json();
  if (!r.ok) { document.getElementById("summary").textContent = data.error; return; }
  show(data, "uploaded " + (file.name || "image"));
}
function initSearch() {
  const drop = document.getElementById("drop"); if (!drop) return;
  const f = document.getElementById("search-form"); const url = new URLSearchParams(location.search);
  for (const k of ["k", "preset", "threshold"]) if (url.has(k)) f[k].value = url.get(k);
  if (url.get("path")) searchPath(url.get("path"));
  f.addEventListener("change", () => { const p = new URLSearchParams(location.search).get("path"); if (p) searchPath(p); });
  document.getElementById("file").addEventListener("change", (e) => e.target.files[0] && searchFile(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) searchFile(e.dataTransfer.files[0]); });
  document.addEventListener("paste", (e) => { for (const item of e.clipboardData.items) if (item.type.startsWith("image/")) { searchFile(item.getAsFile()); break; } });
}

// --- duplicates ---
const UNDO = {"keep": "/api/keep", "forget-not-duplicate": "/api/forget-not-duplicate", "undo": "/api/undo"};
function initActions() {
  document.body.addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-action]"); if (!b) return;
    const payload = JSON.parse(b.dataset.payload); b.disabled = true;
    try {
      const data = await post("/api/" + b.dataset.action, payload);
      sessionStorage.setItem("last-action", JSON.stringify({done: data.done, undo: data.undo || null}));
      location.reload();
    } catch (err) { toast("refused: " + err.message); b.disabled = false; }
  });
  const last = JSON.parse(sessionStorage.getItem("last-action") || "null");
  if (last) {
    sessionStorage.removeItem("last-action");
    const t = document.getElementById("toast"); t.style.display = "block"; t.innerHTML = esc(last.done) + " ";
    if (last.undo) {
      const u = document.createElement("button"); u.textContent = "undo"; u.id = "undo-last";
      u.onclick = async () => { const {action, ...rest} = last.undo; if (action === "keep") rest.generation = Number(document.querySelector("[data-generation]")?.dataset.generation || 0);
        try { const d = await post(UNDO[action], rest); sessionStorage.setItem("last-action", JSON.stringify({done: d.done})); location.reload(); } catch (err) { toast("refused: " + err.message); } };
      t.appendChild(u);
    }
  }
}

// --- status ---
async function pollStatus() {
  const box = document.getElementById("status"); if (!box) return;
  try {
    const s = await (await fetch("/api/status")).json();
    const rows = s.models.map((m) => `<tr><td>${esc(m.backbone)}</td><td>${esc(m.pooling)}</td><td>${m.dim}</td><td class="vectors">${m.vectors}</td></tr>`).join("");
    let idx = "<p>no indexing has been reported</p>";
    if (s.indexing) { const i = s.indexing; const live = i.running && i.age_s < 30;
      idx = `<p id="indexing">${live ? "indexing now" : "last indexing run"}: ${esc(i.stage)} ${i.done} / ${i.total} (updated ${i.age_s} s ago)</p>`; }
    box.innerHTML = `<p>${esc(s.library)}: <b id="images">${s.images}</b> images, ${s.failures} failures, thumbnails ${kb(s.thumbnail_bytes)}</p>
      <table><tr><th>backbone</th><th>pooling</th><th>dim</th><th>vectors</th></tr>${rows}</table>${idx}`;
  } catch (err) { box.textContent = "cannot reach the server: " + err.message; }
  setTimeout(pollStatus, 2000);
}
initSearch(); initActions(); pollStatus();
