"""Parallel decoding with bounded memory, feeding the embedder.

Indexing is a three-stage pipeline, each stage on its own threads so the model is never starved:

1. ``decode_stream``: a pool of decode workers (threads by default: Pillow releases the
   GIL while it decodes and resizes; ``processes=True`` uses worker processes instead)
   turns files into model-sized uint8 arrays, in order, at most ``window`` ahead. The
   workers run at a lower CPU priority (:func:`decode_nice`) so they use the cycles the model
   leaves instead of preempting its threads.
2. ``prefetch_batches``: a background thread groups decoded images into batches and
   stacks each into one contiguous ``(n, H, W, 3)`` array, keeping up to ``depth``
   ready batches queued.
3. The caller (``searcher.indexing._embed_and_store``) runs the model on one batch and commits it
   while stages 1-2 prepare the next ones.

Memory is bounded however many files there are: ``window`` decoded images plus
``depth + 2`` batches (about 5 MB per batch of 32 at 224 px), never the whole folder.
Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (``decode.open_image``).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from searcher.decode import DecodedImage, DecodeError, load_for_model
from searcher.thumbnails import thumbnail_of
from searcher.thumbnails import to_blob as thumbnail_blob

T = TypeVar("T")


@dataclass(slots=True)
class Decoded(Generic[T]):
    """One work item after decoding: ``pixels`` is None and ``error`` set when it failed."""

    item: T
    pixels: np.ndarray | None
    info: DecodedImage | None
    error: str | None


@dataclass(slots=True)
class Batch(Generic[T]):
    """Decoded items in input order; ``pixels`` stacks those that decoded (``good`` indexes them)."""

    items: list[Decoded[T]]
    pixels: np.ndarray
    good: list[Decoded[T]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def default_workers(gpu: bool = False) -> int:
    """Decode workers: every core when a GPU runs the model (decoding is then the bottleneck), else up to 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cores if gpu else min(8, cores))


def _decode(path: str, size: tuple[int, int], max_pixels: int | None) -> tuple[np.ndarray | None, object, str | None]:
    """Decode one file (runs in a worker thread or process; must stay picklable)."""
    try:
        pixels, info = load_for_model(path, size, max_pixels=max_pixels)
        vector = thumbnail_of(info.image)  # the stored thumbnail, from the picture decoded anyway
        info.thumb = None if vector is None else thumbnail_blob(vector)
        info.image = None  # type: ignore[assignment]  # drop the full picture, keep the facts
        return pixels, info, None
    except DecodeError as exc:
        return None, None, str(exc)


def decode_nice() -> int:
    """How much lower than the caller's the decode workers' CPU priority is (``SEARCHER_DECODE_NICE``).

    Default 10. When decoding and the model compete for the same cores, a decode thread that
    preempts one of TensorFlow's threads stalls a whole parallel op (the other shards wait for it);
    at a lower priority decoding takes the cycles the model leaves and the model keeps its
    cores. Measured on 2 busy cores, pipeline alone: 1024x768 JPEGs 30-48 img/s at +10 vs
    20-28 at 0; 3000x2000 27-28 vs 18-26. Set 0 to decode at normal priority.
    """
    try:
        return max(0, min(19, int(os.environ.get("SEARCHER_DECODE_NICE", "10"))))
    except ValueError:
        return 10


def _lower_priority(nice: int, thread: bool) -> None:
    """Worker initialiser: lower this thread's (Linux: a thread is its own scheduling entity) or
    this process's priority. Best effort: platforms without per-thread priorities are left alone."""
    if nice <= 0:
        return
    try:
        if thread:
            if not sys.platform.startswith("linux"):
                return
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        else:
            os.nice(nice)
    except (OSError, AttributeError):
        pass


def _process_pool(workers: int, nice: int) -> Executor:
    import multiprocessing

    # never fork a process that may already run TensorFlow's threads
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_lower_priority, initargs=(nice, False),
    )  # fmt: skip


def decode_stream(
    items: Iterable[T],
    path_of: Callable[[T], str],
    size: tuple[int, int],
    *,
    workers: int | None = None,
    window: int = 64,
    max_pixels: int | None = None,
    processes: bool = False,
) -> Iterator[Decoded[T]]:
    """Decode ``items`` in order, ``workers`` at a time, never more than ``window`` ahead.

    A single item (a query's probe, an upload to ``searcher serve``) is decoded in the calling
    thread: no pool to start, and no lowered priority to wait behind other work (on 2 busy cores
    the niced worker thread added 10-30 ms to a served query).
    """
    if isinstance(items, list | tuple) and len(items) <= 1 and not processes:
        for item in items:
            pixels, info, error = _decode(path_of(item), size, max_pixels)
            yield Decoded(item, pixels, info, error)  # type: ignore[arg-type]
        return
    n_workers = workers or default_workers()
    pending: deque[tuple[T, Future]] = deque()
    nice = decode_nice()
    pool = (
        _process_pool(n_workers, nice)
        if processes
        else ThreadPoolExecutor(
            n_workers, thread_name_prefix="decode", initializer=_lower_priority, initargs=(nice, True)
        )
    )

    def finish(item: T, future: Future) -> Decoded[T]:
        pixels, info, error = future.result()
        return Decoded(item, pixels, info, error)  # type: ignore[arg-type]

    try:
        for item in items:
            pending.append((item, pool.submit(_decode, path_of(item), size, max_pixels)))
            if len(pending) >= window:
                yield finish(*pending.popleft())
        while pending:
            yield finish(*pending.popleft())
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def batched(stream: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in stream:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def stack_batch(items: list[Decoded[T]], size: tuple[int, int]) -> Batch[T]:
    good = [d for d in items if d.pixels is not None]
    pixels = np.empty((len(good), size[1], size[0], 3), np.uint8)
    for i, d in enumerate(good):
        pixels[i] = d.pixels
        d.pixels = None  # the stacked copy is the only one kept
    return Batch(items, pixels, good)


_DONE = object()


def prefetch_batches(
    items: Iterable[T],
    path_of: Callable[[T], str],
    size: tuple[int, int],
    batch_size: int,
    *,
    workers: int | None = None,
    window: int | None = None,
    depth: int = 2,
    max_pixels: int | None = None,
    processes: bool = False,
    stats: dict[str, float] | None = None,
) -> Iterator[Batch[T]]:
    """Stacked batches of decoded images, prepared on background threads while the caller works.

    Up to ``depth`` finished batches wait in a queue; ``window`` (default: two batches)
    images are being decoded ahead of them. Closing the iterator (or an exception in the
    caller) stops the workers; a failure in them is raised here. ``stats``, when given, gets
    ``wait_s``: how long the caller waited for batches (the model starving for input),
    ``first_wait_s``: the part spent waiting for the first one, and ``batches``.
    """
    ready: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(obj: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            stream = decode_stream(
                items, path_of, size, workers=workers, window=window or 2 * batch_size,
                max_pixels=max_pixels, processes=processes,
            )  # fmt: skip
            try:
                for group in batched(stream, batch_size):
                    if not put(stack_batch(group, size)):
                        return
            finally:
                stream.close()
            put(_DONE)
        except BaseException as exc:  # handed to the consumer
            put(exc)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    if stats is not None:
        stats.setdefault("wait_s", 0.0)
        stats.setdefault("batches", 0)
    try:
        while True:
            waited = time.perf_counter()
            obj = ready.get()
            if stats is not None:
                stats.setdefault("first_wait_s", time.perf_counter() - waited)  # filling the pipeline
                stats["wait_s"] += time.perf_counter() - waited
                stats["batches"] += obj is not _DONE and not isinstance(obj, BaseException)
            if obj is _DONE:
                return
            if isinstance(obj, BaseException):
                raise obj
            yield obj  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=30)
