"""Production server settings: `gunicorn -c gunicorn.conf.py "app:create_app()"`.

Each worker process loads the model once (no --preload: TensorFlow must not be initialised
before the fork). Threads share a worker's model; the compiled forward pass is thread-safe.
"""
import os

bind = os.environ.get("MELANOMA_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("MELANOMA_WORKERS", "1"))
threads = int(os.environ.get("MELANOMA_THREADS", "16"))  # waiting requests batch together
timeout = 60
accesslog = "-"
