"""Peak memory of the production server on the largest uploads it accepts.

    python -m bench.largest [--model BUNDLE] [--out runs/bench_largest]     # about a minute on 2 cores

Starts gunicorn as the README does (one worker) and sends it, one request after another, images of 8000x7999 pixels
(just under the 64-megapixel limit) that cost a few kB on the wire: a single-colour lossless WebP, then a request of
16 of them (the API's file limit), then a 16-bit greyscale PNG of a gradient. Before each request the worker's peak
resident memory is reset (/proc/PID/clear_refs) and after it read (VmHWM), so each row is that request's own peak.
These are the cheapest ways for a client to make the server decode the most pixels; the gate refuses them, after
decoding. Writes largest.json.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import subprocess
import time
import uuid
from pathlib import Path

from bench.__main__ import bundle_or_exit, free_port, start_server, stop, wait_ready
from model.bundle import DEFAULT_BUNDLE
from model.preprocessing import MAX_PIXELS
from train.cli import writable_or_exit

SIDE = (8000, 7999)


def largest_uploads() -> dict[str, bytes]:
    """The uploads measured, by what they are."""
    import numpy as np
    from PIL import Image

    assert SIDE[0] * SIDE[1] <= MAX_PIXELS
    colour, grey = io.BytesIO(), io.BytesIO()
    Image.new("RGB", SIDE, (180, 120, 100)).save(colour, format="WEBP", lossless=True)
    ramp = np.broadcast_to(np.linspace(0, 65535, SIDE[0]).astype(np.uint16), (SIDE[1], SIDE[0]))
    Image.fromarray(np.ascontiguousarray(ramp)).save(grey, format="PNG")
    return {"colour WebP, lossless": colour.getvalue(), "16-bit greyscale PNG": grey.getvalue()}


def post(port: int, files: list[bytes]) -> tuple[int, float]:
    """POST /api/v1/predict with `files` in the `image` field: its status and seconds."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.webp\"\r\n"
                    f"Content-Type: image/webp\r\n\r\n".encode() + data + b"\r\n" for i, data in enumerate(files))
    body += f"--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.monotonic()
    conn.request("POST", "/api/v1/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = conn.getresponse()
    response.read()
    return response.status, time.monotonic() - started


def workers(master: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()


def reset_peaks(master: int) -> None:
    """Start each worker's peak resident memory afresh (Linux: 5 to /proc/PID/clear_refs)."""
    for pid in workers(master):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def worker_peak_mb(master: int) -> float:
    """The largest peak resident memory (VmHWM) among the server's worker processes, in MiB."""
    peaks = [0]
    for pid in workers(master):
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except FileNotFoundError:
            continue
        peaks += [int(line.split()[1]) for line in lines if line.startswith("VmHWM:")]
    return max(peaks) / 1024


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.largest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_BUNDLE), help="bundle (default: the shipped model)")
    parser.add_argument("--out", default="runs/bench_largest", help="output folder (default: runs/bench_largest)")
    args = parser.parse_args(argv)
    bundle_or_exit(parser, args.model)  # before a server that cannot start is waited for
    writable_or_exit(parser, args.out)
    uploads = largest_uploads()
    cases = [("colour WebP, lossless", 1), ("colour WebP, lossless", 16), ("16-bit greyscale PNG", 1)]
    port = free_port()
    proc = start_server("app", args.model, port)
    report = {"pixels": f"{SIDE[0]}x{SIDE[1]}", "requests": []}
    try:
        wait_ready(port)
        report["after_start_mb"] = worker_peak_mb(proc.pid)
        for kind, n in cases:
            reset_peaks(proc.pid)
            status, seconds = post(port, [uploads[kind]] * n)
            report["requests"].append({"upload": kind, "files": n, "bytes_sent": len(uploads[kind]) * n,
                                       "status": status, "seconds": round(seconds, 1),
                                       "peak_mb": worker_peak_mb(proc.pid)})
    finally:
        stop(proc)
    print(f"worker's peak resident memory: {report['after_start_mb']:.0f} MiB after start; in a request of")
    for r in report["requests"]:
        print(f"  {r['files']:>2} x {r['upload']} of {report['pixels']} ({r['bytes_sent'] / 1024:.0f} kB sent): "
              f"{r['peak_mb']:.0f} MiB (status {r['status']}, {r['seconds']} s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "largest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out / 'largest.json'}")
    return report


if __name__ == "__main__":
    main()
