"""Benchmark: the model alone, then end to end over HTTP, this app against the usual way.

    python -m bench [--model BUNDLE] [--requests 400] [--out runs/bench]

1. Model only: images/s and ms/image of the compiled forward pass at batch sizes 1, 8, 32, in
   TensorFlow and in the serving runtime (OpenVINO when installed).
2. End to end: starts the production server (gunicorn, gunicorn.conf.py) and the usual-way server
   (bench/usual_server.py) on loopback ports, and sends each the same real dermoscopic JPEGs
   (600x450 and 1024x768, made from ISIC images) at concurrency 1, 4 and 16: median, p95 and
   p99 latency, throughput, errors.
3. Memory: resident size of the serving processes at start, after 500 and after 2,000 requests.
Prints a table and writes bench.json.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "isic2017" / "test"
FIXTURES = ROOT / "tests" / "fixtures" / "isic"


def source_images(n: int = 8) -> list[Path]:
    base = SHARED if SHARED.is_dir() else FIXTURES
    return sorted(base.rglob("*.jpg"))[:n]


def make_jpegs(size: tuple[int, int], n: int = 8) -> list[bytes]:
    """Real lesions upscaled to a typical camera export size (4:3), JPEG quality 90."""
    out = []
    for path in source_images(n):
        buf = io.BytesIO()
        Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(data: bytes, name: str = "lesion.jpg") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def wait_ready(port: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server on port {port} did not become ready")


def load(port: int, bodies: list[tuple[bytes, str]], concurrency: int, total: int) -> dict:
    """`total` uploads from `concurrency` client threads, each with a keep-alive connection."""
    latencies, errors, lock = [], [0], threading.Lock()
    counter = iter(range(total))

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body, ctype = bodies[i % len(bodies)]
            start = time.perf_counter()
            try:
                conn.request("POST", "/api/v1/predict", body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                payload = resp.read()
                ok = resp.status == 200 and b"probability_malignant" in payload
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                errors[0] += 0 if ok else 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": total, "errors": errors[0],
            "median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "throughput_per_s": total / wall}


def memory_checkpoints(total: int, first: int = 500) -> list[int]:
    """Upload counts after which memory is read: after `first` (when fewer than `total`) and at `total`."""
    return sorted({min(first, total), total})


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (gunicorn master + workers), in MiB."""
    total = 0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                   text=True).stdout.split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def bundle_or_exit(parser: argparse.ArgumentParser, model: str) -> None:
    """A bundle that is not there, or whose card cannot be read, is the parser's error: one sentence, status 2."""
    from model.bundle import BundleError, BundleNotFound, load_card

    try:
        if not Path(model).is_file():
            raise BundleNotFound(f"Model bundle not found: {model}")
        load_card(model)
    except BundleError as exc:
        parser.error(f"--model: {exc}")


def start_server(kind: str, model: str, port: int, log=subprocess.DEVNULL) -> subprocess.Popen:
    """The server of `kind` on `port`, in its own process group; its output goes to `log` (a file, or nowhere)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MELANOMA_MODEL_PATH=str(model),
               MELANOMA_BIND=f"127.0.0.1:{port}")
    if kind == "app":
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--access-logfile", "/dev/null",
               "app:create_app()"]
    else:
        cmd = [sys.executable, "-m", "bench.usual_server", "--model", str(model), "--port", str(port)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Ends the server and its process group: a term, then a kill after 20 s; nothing if it is gone already."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def model_only(model_path: str, repeats: int) -> list[dict]:
    from model.bundle import load_bundle
    from model.inference import Predictor

    from model.runtime import resolve

    bundle = load_bundle(model_path)
    rows = []
    for runtime in dict.fromkeys(["tensorflow", resolve("auto")]):
        predictor = Predictor(bundle, tta_views=1, runtime=runtime)
        size = predictor.spec.image_size
        for batch in (1, 8, 32):
            x = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
            predictor.raw_outputs(x)
            n = max(3, repeats // batch)
            times = []
            for _ in range(n):
                start = time.perf_counter()
                predictor.raw_outputs(x)
                times.append(time.perf_counter() - start)
            per_image = statistics.median(times) / batch
            rows.append({"runtime": runtime, "batch": batch, "ms_per_image": per_image * 1000,
                         "images_per_s": 1 / per_image})
    return rows


def gradcam_cost(model_path: str, repeats: int = 30) -> dict:
    """Milliseconds for one image's Grad-CAM (gradient pass) and for the overlay PNG the API returns."""
    from model.bundle import load_bundle
    from model.explain import GradCAM, overlay, png_base64
    from model.turn import parse_turns

    bundle = load_bundle(model_path)
    cam = GradCAM(bundle.model)
    turns = parse_turns(bundle.card.get("view_turns", [0.0]))  # the views the app's map averages
    size = bundle.model.input_shape[1]
    x = np.random.default_rng(0).integers(0, 255, (1, size, size, 3), dtype=np.uint8)
    heat = cam.heatmaps(x, turns)[0]
    start = time.perf_counter()
    for _ in range(repeats):
        heat = cam.heatmaps(x, turns)[0]
    gradcam = (time.perf_counter() - start) / repeats
    image = np.random.default_rng(1).integers(0, 255, (450, 600, 3), dtype=np.uint8)
    start = time.perf_counter()
    for _ in range(repeats):
        png_base64(overlay(image, heat))
    png = (time.perf_counter() - start) / repeats
    return {"gradcam_ms": gradcam * 1000, "overlay_png_ms": png * 1000}


def main(argv=None) -> dict:
    from model.bundle import DEFAULT_BUNDLE
    from model.machine import cpu_model
    from train.cli import writable_or_exit

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_BUNDLE), help="bundle (default: the shipped model)")
    parser.add_argument("--requests", type=int, default=400, help="uploads per server and level (default: 400)")
    parser.add_argument("--memory-requests", type=int, default=2000, help="uploads for the memory check (default: 2000)")
    parser.add_argument("--skip-usual", action="store_true", help="do not measure the usual-way server")
    parser.add_argument("--out", default="runs/bench", help="output folder (default: runs/bench)")
    args = parser.parse_args(argv)
    for name in ("requests", "memory_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1. Received: {getattr(args, name)}")
    bundle_or_exit(parser, args.model)  # before minutes of benchmarking, and before a server that cannot start
    writable_or_exit(parser, args.out)

    report = {"machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "model": args.model}
    report["model_only"] = model_only(args.model, 200)
    report["gradcam"] = gradcam_cost(args.model)
    images = {"600x450": make_jpegs((600, 450)), "1024x768": make_jpegs((1024, 768))}
    bodies = {k: [multipart(b) for b in v] for k, v in images.items()}
    report["e2e"] = {}
    for kind in ("app", "usual") if not args.skip_usual else ("app",):
        port = free_port()
        proc = start_server(kind, args.model, port)
        try:
            wait_ready(port)
            load(port, bodies["600x450"], 2, 20)  # warm-up
            rows = []
            for size in ("600x450", "1024x768"):
                for c in (1, 4, 16):
                    total = args.requests if kind == "app" else max(100, args.requests // 2)
                    rows.append({"image": size, **load(port, bodies[size], c, total)})
            report["e2e"][kind] = rows
            if kind == "app":
                memory = {"start_mb": rss_mb(proc.pid)}
                done = 0
                for checkpoint in memory_checkpoints(args.memory_requests):
                    load(port, bodies["600x450"], 4, checkpoint - done)
                    done = checkpoint
                    memory[f"after_{checkpoint}_mb"] = rss_mb(proc.pid)
                report["memory"] = memory
        finally:
            stop(proc)
    print_table(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {out / 'bench.json'}")
    return report


def print_table(report: dict) -> None:
    print(f"on {report['machine']['cpu']}, {report['machine']['cpus']} cores\n")
    print("model only (compiled forward pass, all cores)")
    print(f"{'runtime':<11} {'batch':>6} {'ms/image':>10} {'images/s':>10}")
    for r in report["model_only"]:
        print(f"{r.get('runtime', 'tensorflow'):<11} {r['batch']:>6} {r['ms_per_image']:>10.2f} {r['images_per_s']:>10.1f}")
    g = report["gradcam"]
    print(f"\nGrad-CAM: {g['gradcam_ms']:.1f} ms per image, overlay PNG (600x450) {g['overlay_png_ms']:.1f} ms")
    print("\nend to end over HTTP (POST /api/v1/predict, one image per request)")
    print(f"{'server':<7} {'image':<9} {'conc':>4} {'median ms':>10} {'p95 ms':>8} {'p99 ms':>8} {'img/s':>8} {'errors':>6}")
    for kind, rows in report["e2e"].items():
        for r in rows:
            print(f"{kind:<7} {r['image']:<9} {r['concurrency']:>4} {r['median_ms']:>10.1f} {r['p95_ms']:>8.1f} "
                  f"{r['p99_ms']:>8.1f} {r['throughput_per_s']:>8.1f} {r['errors']:>6}")
    if "usual" in report["e2e"]:
        app = {(r["image"], r["concurrency"]): r for r in report["e2e"]["app"]}
        print("\nthis app / the usual way")
        for r in report["e2e"]["usual"]:
            a = app[(r["image"], r["concurrency"])]
            print(f"{r['image']:<9} conc {r['concurrency']:>2}: throughput x{a['throughput_per_s'] / r['throughput_per_s']:.1f}, "
                  f"median latency x{r['median_ms'] / a['median_ms']:.1f} lower")
    if "memory" in report:
        print("\nresident memory of the app server (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in report["memory"].items()))


if __name__ == "__main__":
    main()
