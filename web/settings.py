"""The server's settings, checked once at startup: a value of the wrong kind stops the server with one sentence naming
the setting and what it takes, instead of a traceback at startup, a 500 at the first request, or (for KEEP_UPLOADS)
a word like "perhaps" read as yes and patients' images kept."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

RUNTIMES = ("auto", "openvino", "tensorflow")
TTA_CHOICES = (0, 1, 2, 4, 8)  # 0: the bundle's own setting
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
MOST_THREADS = 1024  # INFERENCE_THREADS and INFERENCE_STREAMS: no machine has more than a few hundred cores


class SettingError(ValueError):
    """A setting the server cannot start with; the message names it (as its environment variable) and what it takes."""


def _name(key: str) -> str:
    return f"MELANOMA_{key}"


def _whole(config: dict, key: str, least: int, most: int | None = None) -> int:
    value = config[key]
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SettingError(f"{_name(key)} is a whole number, {least} or more; received {value!r}")
    if most is not None and value > most:
        raise SettingError(f"{_name(key)} is a whole number from {least} to {most}; received {value!r}")
    return value


def _flag(config: dict, key: str, allow_none: bool = False) -> bool | None:
    value = config[key]
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    unset = ", or unset for the default" if allow_none else ""
    raise SettingError(f"{_name(key)} is true or false (1/0, yes/no, on/off{unset}); received {value!r}")


def check_upload_folder(config: dict) -> None:
    """With KEEP_UPLOADS, a SettingError unless a file can be written in UPLOAD_FOLDER (made if missing): found at
    startup, not as a 500 at the first upload."""
    if not config["KEEP_UPLOADS"]:
        return
    folder = Path(config["UPLOAD_FOLDER"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise SettingError(f"{_name('UPLOAD_FOLDER')} {folder} cannot be written ({e.strerror or e}), and "
                           f"{_name('KEEP_UPLOADS')} keeps the uploads there") from None


def check(config: dict) -> None:
    """Check and normalise `config` in place (numbers from text, flags from words); SettingError for the first bad
    value."""
    config["MAX_CONTENT_LENGTH"] = _whole(config, "MAX_CONTENT_LENGTH", 1)
    config["MAX_FILES"] = _whole(config, "MAX_FILES", 1)
    config["TTA_VIEWS"] = _whole(config, "TTA_VIEWS", 0)
    if config["TTA_VIEWS"] not in TTA_CHOICES:
        raise SettingError(f"{_name('TTA_VIEWS')} is 1, 2, 4 or 8 views, or 0 for the bundle's own; received "
                           f"{config['TTA_VIEWS']!r}")
    if config["RUNTIME"] not in RUNTIMES:
        raise SettingError(f"{_name('RUNTIME')} is one of {', '.join(RUNTIMES)}; received {config['RUNTIME']!r}")
    # 10**12 threads was "not a Keras model file this version can load"; as many streams fell back to TensorFlow
    config["INFERENCE_THREADS"] = _whole(config, "INFERENCE_THREADS", 0, most=MOST_THREADS)
    config["INFERENCE_STREAMS"] = _whole(config, "INFERENCE_STREAMS", 0, most=MOST_THREADS)
    config["MICRO_BATCHING"] = _flag(config, "MICRO_BATCHING", allow_none=True)
    config["KEEP_UPLOADS"] = _flag(config, "KEEP_UPLOADS")
    hours = config["UPLOAD_RETENTION_HOURS"]
    try:
        hours = float(hours) if not isinstance(hours, bool) else None
    except (TypeError, ValueError):
        hours = None
    if hours is None or not hours > 0 or hours == float("inf"):
        raise SettingError(f"{_name('UPLOAD_RETENTION_HOURS')} is a number of hours above 0; received "
                           f"{config['UPLOAD_RETENTION_HOURS']!r}")
    config["UPLOAD_RETENTION_HOURS"] = hours
    level = config["LOG_LEVEL"]
    if isinstance(level, str) and level.strip().upper() in LOG_LEVELS:
        config["LOG_LEVEL"] = level.strip().upper()
    elif not (isinstance(level, int) and not isinstance(level, bool) and logging.getLevelName(level) in LOG_LEVELS):
        raise SettingError(f"{_name('LOG_LEVEL')} is one of {', '.join(LOG_LEVELS)}; received {level!r}")
    for key in ("MODEL_PATH", "UPLOAD_FOLDER"):
        if not isinstance(config[key], (str, os.PathLike)) or not str(config[key]).strip():
            raise SettingError(f"{_name(key)} is a path; received {config[key]!r}")
    secret = config["SECRET_KEY"]
    if isinstance(secret, int) and not isinstance(secret, bool):  # Flask reads an all-digit variable as a number
        secret = config["SECRET_KEY"] = os.environ.get(_name("SECRET_KEY"), str(secret))
    if secret is not None and (not isinstance(secret, (str, bytes)) or len(secret) < 16):
        raise SettingError(f"{_name('SECRET_KEY')} is a long random text (16 characters or more; python -c 'import "
                           f"secrets; print(secrets.token_hex(32))' makes one), or unset for one kept in instance/")
