"""The cached ONNX export of a model: find it, or export, verify and store it.

Files, per model key: ``<key>.onnx`` and ``<key>.json`` (the sidecar: identity, versions, the
verification result), in ``<library>/runtime/`` when the library can be written and in the
per-user cache (``$SEARCHER_RUNTIME_CACHE``, else the platform's user cache folder). Both are
written atomically (temporary file, fsync, rename); the sidecar last, so a sidecar always
describes a complete graph, whose SHA-256 it records.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from searcher.files import atomic_write_bytes
from searcher.runtime import say

SIDECAR_VERSION = 1


def user_cache_dir() -> Path:
    env = os.environ.get("SEARCHER_RUNTIME_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir as platform_cache

    return Path(platform_cache("searcher", appauthor=False)) / "runtime"


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (made if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def cache_dirs(library_root: Path | None) -> list[Path]:
    """Where to look, in order: the library's ``runtime/`` folder, then the per-user cache."""
    dirs = [library_root / "runtime"] if library_root is not None else []
    return [*dirs, user_cache_dir()]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("onnxruntime", "tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(folder: Path, key: str) -> dict[str, Any] | None:
    """The sidecar of ``key`` in ``folder`` when it is for this model and this onnxruntime, else None."""
    try:
        data = json.loads((folder / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("sidecar_version") != SIDECAR_VERSION or data.get("key") != key:
        return None
    import onnxruntime

    if data.get("versions", {}).get("onnxruntime") != onnxruntime.__version__:
        return None  # another onnxruntime: check again
    if data.get("verified"):
        onnx = folder / f"{key}.onnx"
        try:
            stat = onnx.stat()
            if stat.st_size != data.get("onnx_bytes"):
                return None  # damaged or replaced
            if stat.st_mtime_ns != data.get("onnx_mtime_ns") and _sha256(onnx) != data.get("onnx_sha256"):
                return None  # hashed only when touched since it was written (13 MB: ~30 ms)
        except OSError:
            return None
    return data


def _write_pair(folder: Path, key: str, graph: bytes | None, sidecar: dict[str, Any]) -> None:
    """The graph, then the sidecar that vouches for it (with the graph's mtime in this folder)."""
    if graph is not None:
        atomic_write_bytes(folder / f"{key}.onnx", graph)
        sidecar = {**sidecar, "onnx_mtime_ns": (folder / f"{key}.onnx").stat().st_mtime_ns}
    atomic_write_bytes(folder / f"{key}.json", (json.dumps(sidecar, indent=2) + "\n").encode())


def _store(folders: list[Path], key: str, graph: bytes | None, sidecar: dict[str, Any]) -> Path | None:
    """Write the graph (if any) and its sidecar into every writable folder; the first folder written."""
    first = None
    for folder in folders:
        if not _writable(folder):
            continue
        try:
            _write_pair(folder, key, graph, sidecar)
        except OSError:
            continue
        first = first or folder
    return first


def onnx_embedder_for(
    backbone: str,
    weights: str | None,
    pooling: str,
    library_root: Path | None,
    check_images: Callable[[int], list[Any]] | None,
    *,
    explicit: bool,
):  # -> OnnxEmbedder | None (None: use TensorFlow)
    """The verified ONNX Runtime embedder of this model, exporting it first if no cache has it.

    Returns None when the export failed or did not match TensorFlow (said once on stderr, and
    recorded so that later runs go straight to TensorFlow; with ``--runtime onnxruntime`` they say so).
    """
    from searcher.backbones.registry import get_backbone
    from searcher.embed import model_identity
    from searcher.runtime.onnx_embedder import OnnxEmbedder

    spec = get_backbone(backbone)
    identity = model_identity(spec, weights, pooling)
    key = identity.key
    folders = cache_dirs(library_root)
    for folder in folders:
        data = read_sidecar(folder, key)
        if data is None:
            continue
        if not data.get("verified"):
            if explicit:
                say(f"ONNX Runtime is not used for {key}: {data.get('reason')} (see {folder}); using TensorFlow")
            return None
        if library_root is not None and folder != folders[0] and _writable(folders[0]):
            _copy_into(folder, folders[0], key)
        return OnnxEmbedder(folder / f"{key}.onnx", spec, identity, weights)
    return _export_and_verify(spec, identity, weights, pooling, folders, check_images)


def keep_copy_in(library_root: Path, embedder) -> None:
    """Copy an already loaded, verified graph into ``library_root/runtime`` unless it is there."""
    target = cache_dirs(library_root)[0]
    key = embedder.identity.key
    if embedder.path.parent != target and not (target / f"{key}.json").exists() and _writable(target):
        _copy_into(embedder.path.parent, target, key)


def _copy_into(source: Path, target: Path, key: str) -> None:
    """Keep a copy of a verified graph in the library folder (so it travels with the library)."""
    try:
        sidecar = json.loads((source / f"{key}.json").read_text())
        _write_pair(target, key, (source / f"{key}.onnx").read_bytes(), sidecar)
    except (OSError, ValueError):
        pass


def _export_and_verify(spec, identity, weights, pooling, folders, check_images):
    import tempfile

    from searcher.runtime import export
    from searcher.runtime.onnx_embedder import OnnxEmbedder

    key = identity.key
    say(f"exporting {spec.name} to ONNX and checking it against TensorFlow (once per model) ...")
    started = time.monotonic()
    sidecar: dict[str, Any] = {
        "sidecar_version": SIDECAR_VERSION,
        "key": key,
        "identity": {k: getattr(identity, k) for k in identity.__dataclass_fields__},
        "versions": _versions(),
        "opset": export.OPSET,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    graph = None
    try:
        graph, tf_embedder = export.export_onnx(spec.name, weights, pooling)
        with tempfile.TemporaryDirectory(prefix="searcher-onnx-") as tmp:
            candidate = Path(tmp) / f"{key}.onnx"
            candidate.write_bytes(graph)
            real = list(check_images(spec.input_size)) if check_images else []
            images = export.check_images(real, spec.input_size)
            result = export.verify(tf_embedder, OnnxEmbedder(candidate, spec, identity, weights), images)
        sidecar.update(
            verified=result.passed, reason=result.reason, check_images=result.images,
            real_check_images=min(len(real), result.images), min_cosine=result.min_cosine,
            max_rel_feature_diff=result.max_abs_diff, min_cosine_required=export.MIN_COSINE,
        )  # fmt: skip
    except Exception as exc:  # tf2onnx cannot convert an operator, onnxruntime cannot load it, ...
        sidecar.update(verified=False, reason=f"export failed: {type(exc).__name__}: {exc}".splitlines()[0][:300])
    sidecar["export_seconds"] = round(time.monotonic() - started, 1)
    if sidecar["verified"]:
        assert graph is not None
        sidecar.update(onnx_bytes=len(graph), onnx_sha256=hashlib.sha256(graph).hexdigest())
        where = _store(folders, key, graph, sidecar)
        if where is None:
            say("no cache folder can be written; the ONNX export is used for this run only")
            tmp = Path(tempfile.mkdtemp(prefix="searcher-onnx-"))
            atomic_write_bytes(tmp / f"{key}.onnx", graph)
            where = tmp
        return OnnxEmbedder(where / f"{key}.onnx", spec, identity, weights)
    _store(folders, key, None, sidecar)
    say(f"ONNX Runtime is not used for {key}: {sidecar['reason']}; using TensorFlow")
    return None
