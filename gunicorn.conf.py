"""Production server settings: `gunicorn -c gunicorn.conf.py "app:create_app()"`.

Each worker process loads the model once (no --preload: TensorFlow must not be initialised
before the fork). Threads share a worker's model. Defaults measured with `python -m bench` on
2 cores (README, Speed): one worker x 8 threads, with OpenVINO running one forward pass per core
side by side (INFERENCE_STREAMS, default one per core), beat two workers with one inference thread
each and micro-batching. The app keeps no state between requests, so more machines means more
copies of this server behind a proxy (README, "Serving beyond one process").
"""
import logging
import os
import socket
import struct


def whole(name: str, default: str) -> int:
    """The environment variable `name` as a whole number of 1 or more; else the server stops with one sentence."""
    text = os.environ.get(name, default)
    if not text.strip().isdigit() or int(text) < 1:
        raise SystemExit(f"error: {name} is a whole number, 1 or more; received {text!r}.")
    return int(text)


bind = os.environ.get("MELANOMA_BIND", "127.0.0.1:8000")
workers = whole("MELANOMA_WORKERS", "1")
threads = whole("MELANOMA_THREADS", "8")
read_timeout = whole("MELANOMA_READ_TIMEOUT", "30")  # seconds a request may stop arriving (a lost network)
if workers > 1:
    # share the cores between the workers, so that they do not fight over them
    per_worker = max(1, (os.cpu_count() or 1) // workers)
    os.environ.setdefault("MELANOMA_INFERENCE_THREADS", str(per_worker))
    os.environ.setdefault("MELANOMA_INFERENCE_STREAMS", "1")
timeout = 60
accesslog = "-"


def pre_request(worker, req):
    """A client that stops sending in the middle of its upload (a phone that lost its network, a closed laptop) holds
    one of the worker's threads while the body is read; without a limit it held it for ever, and `threads` such
    clients stopped the server. The socket now gives up after `read_timeout` seconds without a byte, and the app
    answers 408 upload_incomplete (web/errors.py)."""
    sock = getattr(getattr(req, "unreader", None), "sock", None)  # HTTP/1 over a socket; else left as it is
    if sock is not None:
        sock.settimeout(read_timeout)


def when_ready(server):
    """A client that stops inside its request's headers held a thread for ever too: gunicorn reads the headers before
    `pre_request`, on a socket without a timeout. The listening socket now has a receive timeout (SO_RCVTIMEO), which
    each accepted connection inherits (on Linux; `tests/test_server.py`) and keeps across gunicorn's switches between
    blocking and not: a read that waits `read_timeout` seconds for a byte fails, and gunicorn closes the connection."""
    for listener in server.LISTENERS:
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", read_timeout, 0))


def one_line_for_stalled_headers(record: logging.LogRecord) -> bool:
    """gunicorn logs such a closed connection as an error with a traceback (a BlockingIOError from `recv`: only the
    receive timeout above gives one on its blocking sockets); a person reading the log gets one line instead."""
    if record.exc_info and isinstance(record.exc_info[1], BlockingIOError):
        record.msg = "A client sent nothing for %d s in the middle of its request's headers; its connection was closed."
        record.args = (read_timeout,)
        record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
    return True


def post_worker_init(worker):
    worker.log.error_log.addFilter(one_line_for_stalled_headers)
