"""Greedy micro-batching: concurrent requests share one forward pass.

Request threads put their decoded images on a bounded queue and wait. One worker thread takes
everything queued (up to `max_batch` images) as soon as it is free, runs `Predictor.assess` once,
and hands each request its own results. A lone request waits for nobody (no fixed delay);
under load, requests that arrive while a batch runs form the next batch. An error in a batch
is retried image by image, so one bad request cannot fail the others.
"""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The queue is full: the server is past its capacity."""


class MicroBatcher:
    def __init__(self, assess, max_batch: int = 32, max_queue: int = 256):
        self._assess = assess
        self.max_batch = max_batch
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, images: list, timeout: float = 30.0) -> list[dict]:
        future: Future = Future()
        try:
            self._queue.put_nowait((images, future))
        except queue.Full:
            raise Overloaded("The server is busy. Please try again in a moment.") from None
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:  # was a 500 with a traceback; and the images were still judged for no one
            future.cancel()
            raise Overloaded("The server is busy. Please try again in a moment.") from None

    def _take(self) -> list:
        jobs = [self._queue.get()]
        count = len(jobs[0][0])
        while count < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            count += len(job[0])
        return jobs

    def _run(self) -> None:
        while True:
            # a request that stopped waiting (submit's timeout) cancelled its job: not judged for no one
            jobs = [(job, future) for job, future in self._take() if future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            images = [im for job, _ in jobs for im in job]
            try:
                results = self._assess(images)
            except Exception:  # isolate: retry each request on its own
                log.exception("batched inference failed; retrying request by request")
                for job, future in jobs:
                    try:
                        future.set_result(self._assess(job))
                    except Exception as exc:  # noqa: BLE001 - handed to the waiting request
                        future.set_exception(exc)
                continue
            start = 0
            for job, future in jobs:
                future.set_result(results[start : start + len(job)])
                start += len(job)
