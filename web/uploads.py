"""Optional keeping of uploads (off by default): random names, EXIF removed, purged after a retention period."""
from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)


# the names `keep` gives (32 hex digits): the purge deletes no other file, so a folder shared with a person's own
# pictures (MELANOMA_UPLOAD_FOLDER set to one by mistake) loses none of them; before, every older PNG there went
KEPT_NAME = re.compile(r"[0-9a-f]{32}\.png")


def purge_expired(folder: Path, retention_hours: float) -> int:
    """Delete kept uploads older than the retention period; return how many were deleted."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - retention_hours * 3600
    removed = 0
    for path in folder.glob("*.png"):
        if not KEPT_NAME.fullmatch(path.name):
            continue
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another worker removed it first
            pass
    return removed


def purge_in_background(folder: Path, retention_hours: float) -> threading.Thread:
    """Purge expired uploads every tenth of the retention period (at most every minute), in a daemon thread of this
    process: they were purged only at start and when another upload was kept, so a server that kept no new image
    kept the old ones past the period the upload page states, for as long as it ran."""
    interval = min(60.0, retention_hours * 360.0)

    def purge_for_ever():
        while True:
            time.sleep(interval)
            try:
                purge_expired(folder, retention_hours)
            except OSError as exc:  # the folder unreadable for a moment: the next turn tries again
                log.error("expired uploads in %s were not purged: %s", folder, exc)

    thread = threading.Thread(target=purge_for_ever, name="purge-uploads", daemon=True)
    thread.start()
    return thread


def keep(image: Image.Image, folder: Path, retention_hours: float) -> Path:
    """Store a decoded upload as PNG under a random name. Re-encoding from pixels drops EXIF and all metadata."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # patients' images: for the server's user alone
    purge_expired(folder, retention_hours)
    path = folder / f"{secrets.token_hex(16)}.png"
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:  # was 644: any local user
        Image.frombytes(image.mode, image.size, image.tobytes()).save(f, format="PNG")
    return path
