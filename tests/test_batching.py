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
    def assess(items):
        if "bad" in items:
            raise ValueError("boom")
        return [x.upper() for x in items]

    batcher = MicroBatcher(assess)
    gate = threading.Event()
    out = {}

    def client(name, items):
        gate.wait()
        try:
            out[name] = batcher.submit(items)
        except ValueError as exc:
            out[name] = exc

    threads = [threading.Thread(target=client, args=(n, i)) for n, i in (("a", ["x"]), ("b", ["bad"]), ("c", ["y"]))]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert out["a"] == ["X"] and out["c"] == ["Y"] and isinstance(out["b"], ValueError)


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
