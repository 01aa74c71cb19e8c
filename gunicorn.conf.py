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
# kB per second an upload must keep up on average, after the read timeout's grace (Worker below)
upload_rate = whole("MELANOMA_MIN_UPLOAD_RATE", "10", most=10**6)
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
    answers 408 upload_incomplete (web/errors.py); the body's least average rate is the worker's (`Worker`)."""
    sock = getattr(getattr(req, "unreader", None), "sock", None)  # HTTP/1 over a socket; else left as it is
    if sock is not None:
        sock.settimeout(read_timeout)
    getattr(worker, "body_begins", lambda req: None)(req)  # the worker below; another given with -k has no such limit


def post_request(worker, req, environ, resp):
    getattr(worker, "done_reading", lambda: None)()


def client_address(conn) -> str:
    """The client's IP address, for a firewall, or the socket's path."""
    return conn.client[0] if isinstance(conn.client, (tuple, list)) else conn.client or "a socket"


class Worker(ThreadWorker):
    """gunicorn's threaded worker, with deadlines for reading each request, and a setting the app refuses stopping the
    server (`load_wsgi`).

    gunicorn reads a request's headers before `pre_request`, on a socket without a timeout: a client that stopped in
    the middle of them, or sent a byte every few seconds, held a thread for ever. The socket's timeout, set for the
    body, ends only a pause: an upload sent a byte every few seconds held a thread until its last byte. Each thread now
    notes a deadline while it reads a request: for its headers, `read_timeout` seconds; for its body, `read_timeout`
    more plus its length (at most the app's MAX_CONTENT_LENGTH) at `upload_rate` kB/s.
    - Headers: at each turn of the worker's event loop (at least once a second), a read past its deadline has its
      socket shut for reading, so the read ends, gunicorn closes the connection, and the log says so.
    - Body: each read from the socket checks the deadline first and after (`paced`), and past it raises the
      TimeoutError that the socket's own timeout gives: the app answers 408, and the log says so. The socket's timeout
      bounds each wait, so a body trickled a byte at a time is cut within `read_timeout` seconds of its deadline. A
      read that finds the client's side closed before the body's length is answered the same way."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading = {}  # thread -> (connection, deadline, what it reads) while that thread reads a request
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
            self.reading[threading.get_ident()] = (conn, time.monotonic() + read_timeout, "headers")
        try:
            return super().handle(conn)
        finally:
            self.done_reading()

    def body_begins(self, req):
        """The headers are read: from now, the body's deadline, which each read of it checks (`paced`)."""
        unreader = getattr(req, "unreader", None)
        limit = getattr(self.wsgi, "config", {}).get("MAX_CONTENT_LENGTH") or 20 * 1024 * 1024
        length = getattr(getattr(getattr(req, "body", None), "reader", None), "length", None)  # Content-Length
        length = limit if length is None else min(length, limit)  # none (chunked) or more: the app reads to its limit
        with self.reading_lock:
            conn = self.reading.get(threading.get_ident(), (None,))[0]
            if unreader is None or conn is None:  # not HTTP/1 over a socket
                return
            self.reading[threading.get_ident()] = (conn, time.monotonic() + read_timeout +
                                                   length / (upload_rate * 1024), "body")
        if not getattr(unreader, "paced", False):  # once per connection: it serves each request on it
            unreader.chunk, unreader.paced = self.paced(unreader.chunk, conn), True

    def paced(self, read, conn):
        """`read` (a connection's reads from its socket), the body's deadline checked before and after each."""
        def chunk(*args, **kwargs):
            self.keep_pace(conn)
            data = read(*args, **kwargs)
            self.keep_pace(conn, ended=not data)
            return data
        return chunk

    def keep_pace(self, conn, ended: bool = False):
        entry = self.reading.get(threading.get_ident())
        if entry is None or entry[2] != "body":
            return
        if ended:  # the client closed its side before the body's length (gunicorn reads no further than it)
            self.done_reading()
            self.log.warning("A client at %s ended its upload before its length; it was answered 408.",
                             client_address(conn))
            # an OSError, as the socket's own would be: the app answers 408. An empty read returned instead left
            # the app a body cut short, which it took for no image, or the page's form for an expired one
            raise ConnectionAbortedError("the upload ended before its length")
        if time.monotonic() > entry[1]:
            self.done_reading()
            self.log.warning("A client at %s sent its upload slower than %d kB/s; it was cut short and answered 408.",
                             client_address(conn), upload_rate)
            raise TimeoutError(f"the upload arrived slower than {upload_rate} kB/s")

    def handle_error(self, req, client, addr, exc):
        """A request line or headers over gunicorn's limits get the app's JSON error, with its code and security
        headers (web.errors.SERVER_LIMITS); gunicorn's own answer was an HTML page, "Error parsing headers: 'limit
        request headers fields size'". Any other error is gunicorn's to answer."""
        from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine

        status = 414 if isinstance(exc, LimitRequestLine) else 431 if isinstance(exc, LimitRequestHeaders) else None
        if status is None:
            return super().handle_error(req, client, addr, exc)
        import json

        from gunicorn.util import write_nonblock
        from werkzeug import Response

        from app import security_headers
        from web.errors import SERVER_LIMITS

        code, message = SERVER_LIMITS[status]
        message = message.format(limit=self.cfg.limit_request_line if status == 414 else
                                 self.cfg.limit_request_field_size, count=self.cfg.limit_request_fields)
        self.log.warning("A client at %s sent %s over the server's limit (%s); answered %d.",
                         (addr or ("a socket",))[0], "a request line" if status == 414 else "headers", exc, status)
        response = security_headers(Response(json.dumps({"error": message, "code": code}), status,
                                             mimetype="application/json"))
        head = f"HTTP/1.1 {response.status}\r\nConnection: close\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in response.headers.items()) + "\r\n"
        try:
            write_nonblock(client, head.encode("latin-1") + response.get_data())
        except OSError:  # the client has gone
            pass

    def done_reading(self):
        with self.reading_lock:
            self.reading.pop(threading.get_ident(), None)

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        with self.reading_lock:  # held while shutting, so that no request past its reading is cut
            for thread, (conn, deadline, what) in list(self.reading.items()):
                # a body's deadline is checked as it is read (`paced`); an HTTP/2 connection carries many requests
                if what == "headers" and deadline < now and not conn.is_http2:
                    del self.reading[thread]
                    try:
                        conn.sock.shutdown(socket.SHUT_RD)
                    except OSError:  # closed meanwhile
                        continue
                    self.log.warning("A client at %s did not send its request's headers within %d s; its connection "
                                     "was closed.", client_address(conn), read_timeout)


worker_class = Worker
