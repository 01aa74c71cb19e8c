"""Production server settings: `gunicorn -c gunicorn.conf.py "app:create_app()"`.

Each worker process loads the model once (no --preload: TensorFlow must not be initialised
before the fork). Threads share a worker's model; concurrent requests in a worker are batched
into one forward pass (web/batching.py). Defaults measured with `python -m bench` on 2 cores:
2 workers x 8 threads with one TensorFlow thread each beat 1 worker x 16 threads (README, Speed).
"""
import os

bind = os.environ.get("MELANOMA_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("MELANOMA_WORKERS", "2"))
threads = int(os.environ.get("MELANOMA_THREADS", "8"))
if workers > 1:
    # one TensorFlow thread per worker process, so that the workers do not fight over the cores
    os.environ.setdefault("MELANOMA_TF_THREADS", "1")
timeout = 60
accesslog = "-"
