"""Dynamic batching: concurrent requests share one forward pass.

Requests put ``(image, options)`` on an asyncio queue and await a future. One collector task takes the
first waiting item, then keeps taking items until it has ``max_batch`` of them or ``max_wait_ms`` have
passed since that first item arrived (items that queued while the previous batch ran are taken at once),
and hands the batch to a single worker thread. The event loop never runs the model, so ``/healthz``,
``/metrics`` and uploads are served while a batch is in the network. One worker thread is deliberate: the
network already uses every core, and two passes at once would only compete for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .engine import Engine, Options
from .metrics import Metrics


@dataclass
class _Item:
    image: Image.Image
    options: Options | None  # None: a segmentation-only model (no detection options)
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Gathers concurrent requests (detection or segmentation) into batches of at most ``max_batch`` images."""

    def __init__(self, engine: Engine, max_batch: int, max_wait_ms: float, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1e3
        self.metrics = metrics
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="efficientdet-infer")

    def start(self) -> None:
        """Start the collector task on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="efficientdet-batcher")

    async def stop(self) -> None:
        """Stop collecting (after the server has finished its requests) and release the worker thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The inference thread (also used for loading and warming up the model)."""
        return self._executor

    async def submit(self, image: Image.Image, options: Options | None) -> Any:
        """Queue one image; returns what :meth:`Engine.run` gives for it (:class:`Detections`, or a mask for a
        segmentation-only model) or raises the exception the image caused."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(image, options, future))
        self._gauge()
        return await future

    def _gauge(self) -> None:
        if self.metrics is not None and self._queue is not None:
            self.metrics.queue_depth.set(self._queue.qsize())

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = batch[0].arrived + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            self._gauge()
            batch = [item for item in batch if not item.future.done()]  # a client that went away
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self.engine.run, [i.image for i in batch], [i.options for i in batch])
            except Exception as exc:  # pragma: no cover - Engine.run returns per-image exceptions
                results = [exc] * len(batch)
            if self.metrics is not None:
                self.metrics.inference.observe(time.perf_counter() - t0)
            for item, result in zip(batch, results):
                if item.future.done():
                    continue
                if isinstance(result, Exception):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
