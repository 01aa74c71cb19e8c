"""The production server (gunicorn with gunicorn.conf.py) itself, started as the README starts it."""
import http.client
import os
import socket
import time

import pytest

from bench.__main__ import free_port, start_server, stop, wait_ready
from model.bundle import DEFAULT_BUNDLE

pytestmark = pytest.mark.slow


def stalled_upload(port: int) -> socket.socket:
    """A client that sends its headers and the start of a 100 kB upload, then nothing more (its network lost)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; "
                 b"filename=\"l.jpg\"\r\n\r\n\xff\xd8")
    return sock


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


def test_clients_that_stop_sending_mid_upload_do_not_stop_the_server(monkeypatch):
    """Before, each held one of the worker's threads for ever: as many of them as threads (8 by default), and the
    server answered no one. With a read timeout of 2 s and 2 threads, 3 stalled uploads get a 408 and the server
    answers the next request."""
    port = free_port()
    for name, value in (("MELANOMA_READ_TIMEOUT", "2"), ("MELANOMA_THREADS", "2")):
        monkeypatch.setitem(os.environ, name, value)
    server = start_server("app", DEFAULT_BUNDLE, port)
    try:
        wait_ready(port)
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
    finally:
        stop(server)


def test_clients_that_stop_inside_their_headers_do_not_stop_the_server(monkeypatch, tmp_path):
    """gunicorn reads a request's headers before any hook, and such a client held a thread for ever (the server
    answered no one with 2 threads and 3 of them). Now the connection is closed after the read timeout, and the log
    says so in one line, without a traceback."""
    port = free_port()
    for name, value in (("MELANOMA_READ_TIMEOUT", "2"), ("MELANOMA_THREADS", "2")):
        monkeypatch.setitem(os.environ, name, value)
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        server = start_server("app", DEFAULT_BUNDLE, port, log=log)
    try:
        wait_ready(port)
        stalled = []
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Le")
            stalled.append(sock)
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        waited = time.monotonic() - started
        assert waited < 15, waited
        for sock in stalled:
            sock.settimeout(15)
            assert sock.recv(100) == b""  # closed by the server
            sock.close()
    finally:
        stop(server)
    text = log_path.read_text()
    assert text.count("in the middle of its request's headers; its connection was closed") == 3, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
