"""The melanoma screening assistant's web app.

    python app.py                       # development server on http://127.0.0.1:5000
    gunicorn -c gunicorn.conf.py "app:create_app()"   # production server on http://127.0.0.1:8000

Configuration: defaults below, then `instance/config.py` if present, then environment variables
prefixed `MELANOMA_` (e.g. `MELANOMA_MODEL_PATH`, `MELANOMA_KEEP_UPLOADS=true`).
"""
from __future__ import annotations

import logging
import os
import secrets
import sys
import tempfile
from pathlib import Path

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from model.bundle import DEFAULT_BUNDLE
from web import errors, settings, uploads
from web.service import ModelService
from web.views import api, pages

ROOT = Path(__file__).resolve().parent
csrf = CSRFProtect()

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_path=str(ROOT / "instance"), template_folder="templates",
                static_folder="static")
    app.config.from_mapping(
        MODEL_PATH=str(DEFAULT_BUNDLE),
        MAX_CONTENT_LENGTH=20 * 1024 * 1024,
        MAX_FILES=16,
        TTA_VIEWS=0,  # 0: the bundle's own setting
        RUNTIME="auto",  # forward pass: openvino when installed, else tensorflow (model/runtime.py)
        INFERENCE_THREADS=0,  # threads per process for the forward pass; 0 = one per core
        INFERENCE_STREAMS=0,  # OpenVINO: forward passes of concurrent requests run side by side; 0 = one per core
        MICRO_BATCHING=None,  # concurrent requests share one forward pass (web/batching.py); None = only
                              # with TensorFlow, where it pays (README, Speed)
        KEEP_UPLOADS=False,
        UPLOAD_FOLDER=str(ROOT / "uploads"),
        UPLOAD_RETENTION_HOURS=24.0,
        WTF_CSRF_TIME_LIMIT=None,
        SECRET_KEY=None,
        LOG_LEVEL="INFO",
    )
    # instance/config.py: a bare "config.py" was looked for beside app.py, so settings put where the README says were
    # dropped without a word
    app.config.from_pyfile(str(Path(app.instance_path) / "config.py"), silent=True)
    app.config.from_prefixed_env("MELANOMA")
    if test_config:
        app.config.update(test_config)
    try:
        settings.check(app.config)
        settings.check_upload_folder(app.config)
    except settings.SettingError as exc:  # the server cannot start: say why in one line, not a traceback
        raise SystemExit(f"error: {exc}.") from None
    configure_logging(app)
    if not app.config["SECRET_KEY"]:
        try:
            app.config["SECRET_KEY"] = instance_secret(Path(app.instance_path))
        except OSError as exc:  # a checkout this user cannot write (code owned by root, served as another user)
            key = Path(app.instance_path) / "secret_key"
            raise SystemExit(
                f"error: the server keeps its secret key in {key}, which this user cannot "
                f"{'read' if key.exists() else 'write'} "
                f"({exc.strerror or exc}). Set MELANOMA_SECRET_KEY instead (the same on every server: "
                f"python3 -c 'import secrets; print(secrets.token_hex(32))'), or let this user read and write that "
                f"folder."
            ) from None

    csrf.init_app(app)
    csrf.exempt(api)
    app.register_blueprint(pages)
    app.register_blueprint(api)
    errors.register(app)
    app.after_request(security_headers)
    ModelService(app)
    if app.config["KEEP_UPLOADS"]:
        removed = uploads.purge_expired(Path(app.config["UPLOAD_FOLDER"]), app.config["UPLOAD_RETENTION_HOURS"])
        app.logger.info("keeping uploads in %s for %s h (%d expired removed)", app.config["UPLOAD_FOLDER"],
                        app.config["UPLOAD_RETENTION_HOURS"], removed)
        uploads.purge_in_background(Path(app.config["UPLOAD_FOLDER"]), app.config["UPLOAD_RETENTION_HOURS"])
    return app


def configure_logging(app: Flask) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    app.logger.handlers[:] = [handler]
    app.logger.setLevel(app.config["LOG_LEVEL"])


def instance_secret(folder: Path) -> str:
    """A secret key shared by every worker on this machine: created once, atomically, in instance/.

    Several machines behind one proxy must share MELANOMA_SECRET_KEY instead.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "secret_key"
    if not path.exists():  # written whole under a name of its own, then linked in: no worker reads it half-written
        fd, draft = tempfile.mkstemp(prefix=".secret_key.", dir=folder)  # readable by this user only
        draft = Path(draft)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            os.link(draft, path)  # fails if another worker linked its key first; then that one is everyone's
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def security_headers(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    # same-origin: the address goes with the page's own form posts, and nowhere else. With no-referrer, a browser
    # posted the form without a Referer, and over HTTPS (behind a proxy that terminates TLS) the CSRF check, which
    # requires one there, refused every upload as a form that had expired
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


if __name__ == "__main__":
    create_app().run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")),
                     threaded=True)
