"""The production server (gunicorn with gunicorn.conf.py) itself, started as the README starts it."""
import http.client
import os
import select
import socket
import threading
import time

import pytest

from bench.__main__ import free_port, start_server, stop, wait_ready
from model.bundle import DEFAULT_BUNDLE

pytestmark = pytest.mark.slow


def stalled_start(path: str = "/api/v1/predict") -> bytes:
    """The headers and the start of a 100 kB upload to `path`."""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n".encode() +
            b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; "
            b"filename=\"l.jpg\"\r\n\r\n\xff\xd8")


def stalled_upload(port: int) -> socket.socket:
    """A client that sends its headers and the start of a 100 kB upload, then nothing more (its network lost)."""
    [sock] = clients(port, stalled_start(), n=1)
    return sock


def clients(port: int, start: bytes, n: int = 3) -> list[socket.socket]:
    """`n` connections to the server, each having sent `start`."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    for sock in socks:
        sock.sendall(start)
    return socks


def answer(sock: socket.socket) -> bytes:
    """The whole HTTP response on `sock`: its head, then as many bytes as its Content-Length (it may come in parts)."""
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096) or b"\r\n\r\n"
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
        b"content-length:")), b"0"))
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def start_with_two_threads(monkeypatch, log_path) -> tuple:
    """gunicorn as the README starts it, with a read timeout of 2 s and 2 threads; its log in `log_path`."""
    port = free_port()
    for name, value in (("MELANOMA_READ_TIMEOUT", "2"), ("MELANOMA_THREADS", "2")):
        monkeypatch.setitem(os.environ, name, value)
    with open(log_path, "wb") as log:
        server = start_server("app", DEFAULT_BUNDLE, port, log=log)
    wait_ready(port)
    return server, port


def test_clients_that_stop_sending_mid_upload_do_not_stop_the_server(monkeypatch, tmp_path):
    """Before, each held one of the worker's threads for ever: as many of them as threads (8 by default), and the
    server answered no one. With a read timeout of 2 s and 2 threads, 3 stalled uploads get a 408 and the server
    answers the next request."""
    server, port = start_with_two_threads(monkeypatch, tmp_path / "server.log")
    try:
        stalled = [stalled_upload(port) for _ in range(3)]
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        waited = time.monotonic() - started
        assert waited < 15, waited
        for sock in stalled:
            response = answer(sock)
            assert response.startswith(b"HTTP/1.1 408 ") and b'"code":"upload_incomplete"' in response
            sock.close()
        for path in ("/api/v1/predict", "/predict"):  # the body ends before its length: its client closed its side
            [ended] = clients(port, stalled_start(path), n=1)
            ended.shutdown(socket.SHUT_WR)
            response = answer(ended)  # was a 400: no image, or on the page a form that had expired
            assert response.startswith(b"HTTP/1.1 408 "), response
            assert (b'"code":"upload_incomplete"' if path.startswith("/api") else b"The upload stopped before the "
                    b"whole image arrived") in response, response
            ended.close()
        # on the same server: a request line or headers over gunicorn's limits get the app's JSON error and security
        # headers, where gunicorn answered an HTML page ("Error parsing headers: 'limit request headers fields size'")
        for start, status, code in ((f"GET /healthz?{'a' * 5000} HTTP/1.1\r\nHost: x\r\n\r\n", 414,
                                     b'"code": "address_too_long"'),
                                    (f"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: {'b' * 9000}\r\n\r\n", 431,
                                     b'"code": "headers_too_large"')):
            [sock] = clients(port, start.encode(), n=1)
            response = answer(sock)
            assert response.startswith(f"HTTP/1.1 {status} ".encode()) and code in response, response
            assert b"Content-Type: application/json" in response and b"X-Content-Type-Options: nosniff" in response
            sock.close()
    finally:
        stop(server)
    text = (tmp_path / "server.log").read_text()
    assert "Traceback" not in text  # the app's answer, not an error in the log
    assert text.count("A client at 127.0.0.1 ended its upload before its length; it was answered 408.") == 2, text
    assert "A client at 127.0.0.1 sent headers over the server's limit" in text, text


def test_uploads_trickled_a_byte_at_a_time_do_not_stop_the_server(monkeypatch, tmp_path):
    """The read timeout ends a pause, and an upload sent a byte every half second had none: it held a thread until its
    last byte (3 of them with 2 threads, and the server answered no one for as long). Now a body must arrive at an
    average of MELANOMA_MIN_UPLOAD_RATE kB/s after the read timeout's grace: 3 kB at 1 kB/s within about 5 s."""
    monkeypatch.setitem(os.environ, "MELANOMA_MIN_UPLOAD_RATE", "1")
    server, port = start_with_two_threads(monkeypatch, tmp_path / "server.log")
    try:
        slow = clients(port, b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                             b"boundary=b\r\nContent-Length: 3000\r\n\r\n--b\r\nContent-Disposition: form-data; "
                             b"name=\"image\"; filename=\"l.jpg\"\r\n\r\n\xff\xd8")
        health = health_in_background(port)
        answered, started = {}, time.monotonic()
        while len(answered) < len(slow) and time.monotonic() - started < 30:
            time.sleep(0.5)
            for i, sock in enumerate(slow):
                if i in answered:
                    continue
                if select.select([sock], [], [], 0)[0]:  # an answer has come
                    answered[i] = (time.monotonic() - started, answer(sock))
                else:
                    sock.send(b"a")
        health["thread"].join(40)
        assert health.get("status") == 200 and health["seconds"] < 15, health
        assert len(answered) == 3 and max(seconds for seconds, _ in answered.values()) < 15, answered
        for _, response in answered.values():
            assert response.startswith(b"HTTP/1.1 408 ") and b'"code":"upload_incomplete"' in response, response
        for sock in slow:
            sock.close()
    finally:
        stop(server)
    text = (tmp_path / "server.log").read_text()
    assert text.count("A client at 127.0.0.1 sent its upload slower than 1 kB/s; it was cut short and answered 408."
                      ) == 3, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


def health_in_background(port: int) -> dict:
    """Asks /healthz in a thread; the dict gets its status and how long it took (or the error)."""
    result = {}

    def ask():
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=40)
            conn.request("GET", "/healthz")
            result["status"] = conn.getresponse().status
        except OSError as exc:
            result["error"] = repr(exc)
        result["seconds"] = time.monotonic() - started

    result["thread"] = threading.Thread(target=ask, daemon=True)
    result["thread"].start()
    return result


@pytest.mark.parametrize("how", ["stop", "trickle"])
def test_clients_slow_with_their_headers_do_not_stop_the_server(monkeypatch, tmp_path, how):
    """gunicorn reads a request's headers before any hook, and a client that stopped inside them ("stop"), or sent a
    byte every half second ("trickle", a slowloris), held a thread for ever: with 2 threads, 3 of them and the server
    answered no one. Now each connection has the read timeout for its headers; it is closed after it, and the log says
    so in one line, without a traceback."""
    server, port = start_with_two_threads(monkeypatch, tmp_path / "server.log")
    try:
        slow = clients(port, b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        health = health_in_background(port)
        closed_after, started = {}, time.monotonic()
        while len(closed_after) < len(slow) and time.monotonic() - started < 30:
            time.sleep(0.5)
            for i, sock in enumerate(slow):
                if i in closed_after:
                    continue
                try:  # "stop" sends nothing more and looks for the end; "trickle" sends one more header byte
                    sock.settimeout(0.01)
                    if how == "trickle":
                        sock.send(b"a")
                    if sock.recv(100) == b"":
                        closed_after[i] = time.monotonic() - started
                except TimeoutError:
                    pass
                except OSError:  # a reset, for a byte sent after the server closed
                    closed_after[i] = time.monotonic() - started
        health["thread"].join(40)
        assert health.get("status") == 200 and health["seconds"] < 15, health
        assert len(closed_after) == 3 and max(closed_after.values()) < 15, closed_after
        for sock in slow:
            sock.close()
    finally:
        stop(server)
    text = (tmp_path / "server.log").read_text()
    assert text.count("A client at 127.0.0.1 did not send its request's headers within 2 s; its connection was closed"
                      ) == 3, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("setting", [("MELANOMA_MODEL_PATH", "missing.keras"), ("MELANOMA_MAX_FILES", "abc")])
def test_a_setting_the_app_refuses_stops_the_server_with_its_sentence(monkeypatch, tmp_path, setting):
    """The app stops on such a setting with one sentence; gunicorn took that for an ordinary exit and started the
    worker again every few seconds, for ever. Now the server stops once, with the sentence and status 3."""
    name, value = setting
    model = tmp_path / "missing.keras" if name == "MELANOMA_MODEL_PATH" else DEFAULT_BUNDLE
    if name != "MELANOMA_MODEL_PATH":
        monkeypatch.setitem(os.environ, name, value)
    with open(tmp_path / "server.log", "wb") as log:
        server = start_server("app", model, free_port(), log=log)
    try:
        assert server.wait(timeout=90) == 3
    finally:
        stop(server)
    text = (tmp_path / "server.log").read_text()
    assert text.count(f"error: {'Model bundle not found' if name == 'MELANOMA_MODEL_PATH' else name}") == 1, text
    assert "Worker failed to boot" in text and "Traceback" not in text, text


def test_the_control_socket_is_made_only_where_asked_for(monkeypatch, tmp_path):
    """gunicorn made its control socket (for `gunicornc`) at $HOME/.gunicorn/gunicorn.ctl for every server of a user:
    a second server took it from the first, and `gunicornc -c shutdown` stopped the one started last. Now a server
    makes one only at MELANOMA_CONTROL_SOCKET, and `gunicornc` there reaches that server."""
    from gunicorn.ctl.client import ControlClient

    monkeypatch.setitem(os.environ, "HOME", str(tmp_path / "home"))
    ports = free_port(), free_port()
    with open(tmp_path / "plain.log", "wb") as log:
        plain = start_server("app", DEFAULT_BUNDLE, ports[0], log=log)
    monkeypatch.setitem(os.environ, "MELANOMA_CONTROL_SOCKET", str(tmp_path / "asked.ctl"))
    with open(tmp_path / "asked.log", "wb") as log:
        asked = start_server("app", DEFAULT_BUNDLE, ports[1], log=log)
    try:
        for port in ports:
            wait_ready(port)
        with ControlClient(str(tmp_path / "asked.ctl"), timeout=10) as control:
            listeners = control.send_command("show listeners")
        assert f"127.0.0.1:{ports[1]}" in str(listeners), listeners
    finally:
        stop(plain)
        stop(asked)
    assert not (tmp_path / "home" / ".gunicorn").exists()
    assert "Control socket" not in (tmp_path / "plain.log").read_text()
    assert not (tmp_path / "asked.ctl").exists()  # removed when its server stopped
