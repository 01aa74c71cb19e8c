import threading
import time

import pytest

from web.batching import MicroBatcher, Overloaded


def test_concurrent_requests_share_batches_and_get_their_own_results():
    calls = []

    def assess(items):
        calls.append(len(items))
        time.sleep(0.02)
        return [{"value": x * 10} for x in items]

    batcher = MicroBatcher(assess, max_batch=8)
    results = {}

    def client(i):
        results[i] = batcher.submit([i, i + 100])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == [{"value": i * 10}, {"value": (i + 100) * 10}] for i in range(12))
    assert sum(calls) == 24 and max(calls) > 2  # some requests were batched together
    assert max(calls) <= 8 + 1  # a batch never grows far past max_batch


def test_a_failing_request_does_not_fail_the_others():
    """Three requests in one batch, one of them bad: the batch fails, and each request is retried on its own. The
    worker is held on a first request until all three are queued, so they always share a batch."""
    release, batches = threading.Event(), []

    def assess(items):
        batches.append(list(items))
        if items == ["hold"]:
            release.wait(5)
        if "bad" in items:
            raise ValueError("boom")
        return [x.upper() for x in items]

    batcher = MicroBatcher(assess)
    out = {}

    def client(name, items):
        try:
            out[name] = batcher.submit(items)
        except ValueError as exc:
            out[name] = exc

    threads = [threading.Thread(target=client, args=("hold", ["hold"]))]
    threads[0].start()
    while not batches:  # the worker now holds the first request
        time.sleep(0.001)
    for name, items in (("a", ["x"]), ("b", ["bad"]), ("c", ["y"])):
        threads.append(threading.Thread(target=client, args=(name, items)))
        threads[-1].start()
    while batcher._queue.qsize() < 3:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join()
    assert sorted(batches[1]) == ["bad", "x", "y"]  # one batch, which failed ...
    assert out["a"] == ["X"] and out["c"] == ["Y"] and isinstance(out["b"], ValueError)  # ... and was retried


def test_full_queue_is_refused():
    release = threading.Event()
    batcher = MicroBatcher(lambda items: (release.wait(), items)[1], max_batch=1, max_queue=1)
    threading.Thread(target=batcher.submit, args=(["first"],), daemon=True).start()
    time.sleep(0.05)  # the worker is now blocked on the first job
    threading.Thread(target=batcher.submit, args=(["queued"],), daemon=True).start()
    time.sleep(0.05)
    with pytest.raises(Overloaded):
        batcher.submit(["one too many"])
    release.set()


def test_a_request_that_waits_too_long_is_told_the_server_is_busy_and_is_not_judged_for_no_one():
    """A request past its wait got Python's TimeoutError, a 500 with a traceback, and its images were judged anyway
    once the batcher came to them. Now it is Overloaded (the app's 503 busy) and its job is dropped."""
    release, judged = threading.Event(), []

    def assess(items):
        if items == ["hold"]:
            release.wait(10)
        judged.extend(items)
        return [{"value": x} for x in items]

    batcher = MicroBatcher(assess)
    holder = threading.Thread(target=batcher.submit, args=(["hold"],))
    holder.start()
    time.sleep(0.1)  # the batcher is busy with the held request
    with pytest.raises(Overloaded, match="The server is busy"):
        batcher.submit(["late"], timeout=0.2)
    release.set()
    holder.join(10)
    assert batcher.submit(["next"]) == [{"value": "next"}]  # the batcher goes on
    assert judged == ["hold", "next"]  # the late request's image was not judged after it had left
