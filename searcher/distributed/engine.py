"""The Ray engine: decode and embed on a Ray cluster, commit in the driver.

The driver (``searcher index --engine ray``) lists, fingerprints and plans exactly as a local
run does (:mod:`searcher.indexing`). Only the expensive part moves to the cluster: each chunk of
``batch_size`` files is decoded by a Ray task (one CPU each) and embedded by a model actor (one
per GPU when the cluster has GPUs, else CPU actors). Results stream back to the driver in
submission order, which commits them through the same commit function as the local engine
(SQLite, then FAISS, one transaction per batch), so runs are incremental and a killed driver or
worker loses no committed work: the same command finishes the job.

Fault tolerance is Ray's own: a decode task whose worker dies is retried, a model actor whose
process dies is restarted and its pending call retried (``max_restarts``/``max_task_retries``).

Shared storage: workers open the files by the paths the driver found, so every node must see the
library's images at the same paths (an NFS/SMB mount, a shared volume), or ``path_map`` rewrites
a driver prefix to the worker's (``/mnt/photos=/data/photos``). A file a worker cannot read is
recorded as a failure with the worker's reason, never a crash.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from searcher.pipeline import Batch, Decoded, _decode, stack_batch
from searcher.reports import LibraryError

T = TypeVar("T")


def parse_path_map(items: Sequence[str]) -> list[tuple[str, str]]:
    """``["SRC=DST", ...]`` as (driver prefix, worker prefix) pairs; raises ``LibraryError`` on bad input."""
    out = []
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise LibraryError(f"--path-map wants SRC=DST (a driver path prefix and the workers' one), not {item!r}")
        out.append((src.rstrip("/") or "/", dst.rstrip("/") or "/"))
    return out


def map_path(path: str, path_map: Sequence[tuple[str, str]]) -> str:
    """``path`` as a worker sees it: the first matching driver prefix replaced by the worker's."""
    for src, dst in path_map:
        if path == src or path.startswith(src.rstrip("/") + "/"):
            return dst + path[len(src) :]
    return path


def decode_chunk(
    paths: list[str], size: tuple[int, int], max_pixels: int | None, path_map: list[tuple[str, str]]
) -> tuple[np.ndarray, list[Any], list[str | None]]:
    """Decode some files on a worker: (stacked pixels of those that decoded, infos, errors)."""
    items: list[Decoded[int]] = []
    host = socket.gethostname()
    for i, path in enumerate(paths):
        local = map_path(path, path_map)
        if not os.access(local, os.R_OK):
            reason = "no such file" if not os.path.lexists(local) else "permission denied"
            error = f"worker {host} cannot read {local} ({reason}); the workers must see the files (see --path-map)"
            items.append(Decoded(i, None, None, error))
            continue
        try:
            pixels, info, error = _decode(local, size, max_pixels)
        except OSError as exc:
            pixels, info, error = None, None, f"worker {host} cannot read {local}: {exc.strerror or exc}"
        items.append(Decoded(i, pixels, info, error))  # type: ignore[arg-type]
    batch = stack_batch(items, size)
    return batch.pixels, [d.info for d in items], [d.error for d in items]


class EmbedWorker:
    """A model on one Ray worker (made a Ray actor by :class:`RayEngine`)."""

    def __init__(self, backbone: str, weights: str | None, pooling: str, key: str) -> None:
        from searcher.embed import cached_embedder

        self.embedder = cached_embedder(backbone, weights=weights, pooling=pooling)
        if self.embedder.identity.key != key:
            raise LibraryError(
                f"the weights of {backbone} on worker {socket.gethostname()} differ from the library's "
                f"({self.embedder.identity.key} != {key}); install the same weights on every node"
            )

    def input_size(self) -> tuple[int, int]:
        return self.embedder.input_size

    def pid(self) -> int:
        return os.getpid()

    def embed(self, decoded: tuple[np.ndarray, list[Any], list[str | None]]) -> tuple[np.ndarray, list[Any], list]:
        pixels, infos, errors = decoded
        vectors = self.embedder.embed(pixels) if len(pixels) else np.zeros((0, 0), np.float32)
        return vectors, infos, errors


@dataclass
class RayEngine:
    """Streams ``(batch, vectors)`` for work items from a Ray cluster (see the module docstring).

    ``address``: ``None`` starts (or reuses) a local Ray; ``"auto"`` joins the cluster this machine
    belongs to; ``"ray://host:10001"`` connects a client to a remote cluster.
    """

    address: str | None = None
    path_map: Sequence[tuple[str, str]] = ()
    actors: int | None = None  # model actors; default one per GPU, else one per 2 CPUs
    max_restarts: int = 4

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError as exc:
            raise LibraryError("--engine ray needs Ray: pip install 'searcher[ray]'") from exc
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise LibraryError(f"cannot reach the Ray cluster at {self.address or 'local'}: {exc}") from exc
        return ray

    def batches(
        self,
        items: Sequence[T],
        path_of: Any,
        model: Any,
        batch_size: int,
        max_pixels: int | None = None,
    ) -> Iterator[tuple[Batch[T], np.ndarray | None]]:
        """Decode and embed ``items`` on the cluster; yields them in order, a batch at a time."""
        ray = self._ray()
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        n_actors = self.actors or (gpus if gpus else max(1, cpus // 2))
        weights = None if model.weights_source == "random" else model.weights_source
        actor_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(EmbedWorker).options(
            max_restarts=self.max_restarts, max_task_retries=self.max_restarts
        )
        pool = [actor_cls.remote(model.backbone, weights, model.pooling, model.key) for _ in range(n_actors)]
        try:
            size = tuple(ray.get(pool[0].input_size.remote()))
            decode = ray.remote(num_cpus=1, max_retries=self.max_restarts)(decode_chunk)
            chunks = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
            window = 2 * n_actors + 1
            in_flight: deque[tuple[list[T], Any]] = deque()
            path_map = list(self.path_map)
            for number, chunk in enumerate(chunks):
                decoded = decode.remote([str(path_of(w)) for w in chunk], size, max_pixels, path_map)
                in_flight.append((chunk, pool[number % n_actors].embed.remote(decoded)))
                if len(in_flight) >= window:
                    yield self._collect(ray, *in_flight.popleft())
            while in_flight:
                yield self._collect(ray, *in_flight.popleft())
        finally:
            for actor in pool:
                ray.kill(actor)

    def _collect(self, ray: Any, chunk: list[T], ref: Any) -> tuple[Batch[T], np.ndarray | None]:
        try:
            vectors, infos, errors = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
            raise LibraryError(
                f"a Ray worker died more than {self.max_restarts} times ({type(exc).__name__}); what was "
                "committed is kept: run the same command again to finish"
            ) from exc
        items = [Decoded(w, None, info, error) for w, info, error in zip(chunk, infos, errors, strict=True)]
        good = [d for d in items if d.error is None]
        batch = Batch(items, np.zeros((0,), np.uint8), good)
        return batch, (np.asarray(vectors, np.float32) if good else None)
