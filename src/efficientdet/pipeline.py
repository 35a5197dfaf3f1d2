"""Overlap input, the network and output: a small threaded pipeline that keeps the order of its items.

::

    items --[reader thread: iterate, prepare]--> queue --[calling thread: infer]--> queue --[writer thread: finish]

While the network runs on item *k*, the reader thread decodes and prepares item *k+1* (e.g. decodes a
video frame and letterboxes it) and the writer thread finishes item *k-1* (draws, encodes, writes JSON).
Both queues are bounded (``depth`` items), so memory stays flat whatever the input's length. Threads,
not processes: FFmpeg decoding and encoding, Pillow's resizing, numpy and the network (PyTorch,
onnxruntime) release the GIL, and nothing has to be pickled.

Errors propagate to the caller: an exception raised while reading or preparing is re-raised by
:func:`run_pipeline` in the calling thread, one raised by ``finish`` at the next hand-over or at the
end. On any exception (``KeyboardInterrupt`` included) the reader stops and the writer finishes the
items already handed to it before the exception propagates, so outputs are complete up to the last
item written. ``threaded=False`` makes exactly the same calls one after the other (the reference the
tests compare against).

Used for video (:func:`efficientdet.video.predict_video`) and usable for folders of still images.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, Generic, TypeVar

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher(Generic[T, P]):
    """Iterate ``items`` and apply ``prepare`` in a background thread; iterating yields ``(item, prepared)``.

    At most ``depth`` prepared items wait in the queue. An exception from the iteration or from
    ``prepare`` is re-raised by the consuming loop. ``close()`` (or leaving the ``with`` block) stops the
    thread after the item it is working on and closes the iterator in that thread.
    """

    def __init__(self, items: Iterable[T], prepare: Callable[[T], P] | None = None, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth={depth} must be >= 1")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(items, prepare), name="pipeline-reader", daemon=True)
        self._thread.start()

    def _work(self, items: Iterable[T], prepare: Callable[[T], P] | None) -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if self._stop.is_set():
                    return
                if not self._put((item, prepare(item) if prepare is not None else item)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(_Failure(exc))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator: run its clean-up here, in the thread that iterated it
                close()
        self._put(_DONE)

    def _put(self, obj: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(obj, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[T, P]]:
        while True:
            obj = self._queue.get()
            if obj is _DONE:
                return
            if isinstance(obj, _Failure):
                raise obj.exc
            yield obj

    def close(self) -> None:
        """Stop the reader thread and wait for it (it finishes the item it is preparing)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher[T, P]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BackgroundSink(Generic[T, R]):
    """Call ``finish(item, result)`` in a background thread, in the order the pairs are ``put``.

    ``put`` blocks while ``depth`` pairs wait (back-pressure) and raises the writer's exception once it
    has failed (the writer then discards what is still queued, so ``put`` never deadlocks).
    ``close()`` waits until every pair put so far is finished and re-raises the writer's exception.
    """

    def __init__(self, finish: Callable[[T, R], None], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth={depth} must be >= 1")
        self._finish = finish
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="pipeline-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            obj = self._queue.get()
            if obj is _DONE:
                return
            if self._error is not None:
                continue  # failed: drain so that put() never blocks
            try:
                self._finish(*obj)
            except BaseException as exc:
                self._error = exc

    def put(self, item: T, result: R) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((item, result))

    def close(self) -> None:
        """Finish what was put, stop the thread, re-raise the writer's exception if it had one."""
        if not self._closed:
            self._closed = True
            self._queue.put(_DONE)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundSink[T, R]:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        # already unwinding: finish what was handed over, do not mask the exception in flight
        with contextlib.suppress(BaseException):
            self.close()


def run_pipeline(
    items: Iterable[T],
    infer: Callable[[P], R],
    prepare: Callable[[T], P] | None = None,
    finish: Callable[[T, R], None] | None = None,
    *,
    depth: int = 2,
    threaded: bool = True,
) -> int:
    """Run ``finish(item, infer(prepare(item)))`` for every item, in order; returns the number of items.

    ``items`` is iterated and ``prepare`` runs in a reader thread, ``infer`` in the calling thread and
    ``finish`` in a writer thread, all three overlapping, with at most ``depth`` items waiting between
    two stages. ``threaded=False``: the same calls, one after the other, in the calling thread.
    Exceptions from any stage are re-raised here (see the module docstring for the shutdown order).
    """
    count = 0
    if not threaded:
        for item in items:
            result = infer(prepare(item) if prepare is not None else item)  # type: ignore[arg-type]
            if finish is not None:
                finish(item, result)
            count += 1
        return count
    with Prefetcher(items, prepare, depth) as inputs, BackgroundSink(finish or _ignore, depth) as sink:
        for item, prepared in inputs:
            sink.put(item, infer(prepared))
            count += 1
    return count


def _ignore(item: object, result: object) -> None:
    return None


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Consecutive lists of ``n`` items (the last one shorter)."""
    if n < 1:
        raise ValueError(f"batch size {n} must be >= 1")
    iterator = iter(items)
    try:
        while chunk := list(islice(iterator, n)):
            yield chunk
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def detection_stages(detector: Any) -> tuple[Callable[[Sequence[Any]], Any], Callable[[Any], list]]:
    """Split a detector into ``(prepare, infer)`` for :func:`run_pipeline`, batch by batch.

    A detector with ``prepare(images)`` and ``detect_prepared(prepared)`` (``efficientdet.Detector``,
    ``efficientdet.deploy.OnnxModel``) gets its preprocessing (image conversion, letterbox, normalisation)
    done in the reader thread; any other callable ``detector(images, batch_size=n) -> list[Detections]``
    runs whole in the calling thread.
    """
    prepare = getattr(detector, "prepare", None)
    detect_prepared = getattr(detector, "detect_prepared", None)
    if callable(prepare) and callable(detect_prepared):
        return prepare, detect_prepared

    def infer(images: Sequence[Any]) -> list:
        return list(detector(list(images), batch_size=max(1, len(images))))

    return list, infer


__all__ = ["BackgroundSink", "Prefetcher", "batched", "detection_stages", "run_pipeline"]
