"""Production server settings: `gunicorn -c gunicorn.conf.py "app:create_app()"`.

Each worker process loads the model once (no --preload: TensorFlow must not be initialised
before the fork). Threads share a worker's model. Defaults measured with `python -m bench` on
2 cores (README, Speed): one worker x 8 threads, with OpenVINO running one forward pass per core
side by side (INFERENCE_STREAMS, default one per core), beat two workers with one inference thread
each and micro-batching. The app keeps no state between requests, so more machines means more
copies of this server behind a proxy (README, "Serving beyond one process").
"""
import os
import socket
import stat
import sys
import threading
import time

from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker


def whole(name: str, default: str, most: int | None = None) -> int:
    """The environment variable `name` as a whole number of 1 or more (and at most `most`); else the server stops with
    one sentence."""
    text = os.environ.get(name, default)
    if not text.strip().isdigit() or int(text) < 1:
        raise SystemExit(f"error: {name} is a whole number, 1 or more; received {text!r}.")
    if most is not None and int(text) > most:
        raise SystemExit(f"error: {name} is a whole number from 1 to {most}; received {text!r}.")
    return int(text)


def taken(path: str) -> bool:
    """Whether something other than a socket is at `path`: gunicorn deletes an old socket there to listen in its place,
    and would delete a file too (the control socket) or stop with a traceback (a Unix `bind`)."""
    return os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode)


def addresses(name: str, default: str) -> str:
    """The environment variable `name` as gunicorn's `bind`; a TCP port outside 0–65535, or a Unix socket path where a
    file or folder is, stops the server with one sentence (gunicorn's own check takes a port that is not a number, and
    gave a traceback for 99999 or -1, and for such a path)."""
    text = os.environ.get(name, default)
    for address in text.split(","):
        address = address.strip()
        if address.startswith("unix:"):
            path = address[len("unix:"):]
            if taken(path):
                raise SystemExit(f"error: {name} gives the socket path {path}, where there is already something that "
                                 f"is not a socket; give a path where nothing is yet (e.g. unix:/run/melanoma.sock).")
            continue
        if address.startswith("fd://"):
            continue
        try:
            port = int(address.rpartition(":")[2])
        except ValueError:  # no port (gunicorn's default) or not a number (gunicorn's own check says so)
            continue
        if not 0 <= port <= 65535:
            raise SystemExit(f"error: {name} gives the port {port}; a port is a number from 0 to 65535 (for example "
                             f"127.0.0.1:8000).")
    return text


bind = addresses("MELANOMA_BIND", "127.0.0.1:8000")
workers = whole("MELANOMA_WORKERS", "1")
threads = whole("MELANOMA_THREADS", "8")
# seconds for a request's headers, and its body's longest pause; a day at most (10**12 overflowed the socket timeout)
read_timeout = whole("MELANOMA_READ_TIMEOUT", "30", most=86400)
if workers > 1:
    # share the cores between the workers, so that they do not fight over them
    per_worker = max(1, (os.cpu_count() or 1) // workers)
    os.environ.setdefault("MELANOMA_INFERENCE_THREADS", str(per_worker))
    os.environ.setdefault("MELANOMA_INFERENCE_STREAMS", "1")
timeout = 60
accesslog = "-"
# gunicorn's control socket (for `gunicornc`) only at a path given: by default gunicorn made one at the same path for
# every server of a user ($HOME/.gunicorn/gunicorn.ctl), each new server took it from the one before, and
# `gunicornc -c shutdown` stopped whichever server started last
control_socket = os.environ.get("MELANOMA_CONTROL_SOCKET", "")
control_socket_disable = not control_socket.strip()
if not control_socket_disable and taken(control_socket):  # a file named by mistake would be lost
    raise SystemExit(f"error: MELANOMA_CONTROL_SOCKET names {control_socket}, which is not a socket; gunicorn would "
                     f"delete it to make its own. Give a path where nothing is yet (e.g. /run/melanoma/gunicorn.ctl).")


def pre_request(worker, req):
    """A client that stops sending in the middle of its upload (a phone that lost its network, a closed laptop) holds
    one of the worker's threads while the body is read; without a limit it held it for ever, and `threads` such
    clients stopped the server. The socket now gives up after `read_timeout` seconds without a byte, and the app
    answers 408 upload_incomplete (web/errors.py)."""
    getattr(worker, "headers_read", lambda: None)()  # the worker below; another given with -k has no such limit
    sock = getattr(getattr(req, "unreader", None), "sock", None)  # HTTP/1 over a socket; else left as it is
    if sock is not None:
        sock.settimeout(read_timeout)


class Worker(ThreadWorker):
    """gunicorn's threaded worker, with `read_timeout` seconds for each request's headers, and a setting the app
    refuses stopping the server (`load_wsgi`).

    gunicorn reads a request's headers before `pre_request`, on a socket without a timeout: a client that stopped in
    the middle of them, or sent a byte every few seconds, held a thread for ever. Each thread now notes when it began
    to read a request; at each turn of the worker's event loop (at least once a second) a read still in its headers
    after `read_timeout` seconds has its socket shut for reading, so the read ends, gunicorn closes the connection, and
    the log says so."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading = {}  # thread -> (connection, deadline) while that thread reads a request's headers
        self.reading_lock = threading.Lock()

    def load_wsgi(self):
        """A setting the app refuses (a bundle not found, a MELANOMA_ value of the wrong kind) stops it with one
        sentence (`SystemExit`); gunicorn took that for an ordinary exit and started the worker again, every few
        seconds for ever. The worker now exits as one that failed to boot, and gunicorn stops with the sentence."""
        try:
            super().load_wsgi()
        except SystemExit as stop:
            if not isinstance(stop.code, str):
                raise
            print(stop.code, file=sys.stderr, flush=True)
            raise SystemExit(Arbiter.WORKER_BOOT_ERROR) from None

    def handle(self, conn):
        with self.reading_lock:
            self.reading[threading.get_ident()] = (conn, time.monotonic() + read_timeout)
        try:
            return super().handle(conn)
        finally:
            self.headers_read()

    def headers_read(self):
        with self.reading_lock:
            self.reading.pop(threading.get_ident(), None)

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        with self.reading_lock:  # held while shutting, so that no request past its headers is cut
            for thread, (conn, deadline) in list(self.reading.items()):
                if deadline < now and not conn.is_http2:  # an HTTP/2 connection carries many requests
                    del self.reading[thread]
                    try:
                        conn.sock.shutdown(socket.SHUT_RD)
                    except OSError:  # closed meanwhile
                        continue
                    address = conn.client[0] if isinstance(conn.client, (tuple, list)) else conn.client or "a socket"
                    self.log.warning("A client at %s did not send its request's headers within %d s; its connection "
                                     "was closed.", address, read_timeout)  # the address, for a firewall


worker_class = Worker
