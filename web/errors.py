"""Errors for people: JSON `{"error", "code"}` for API clients, a page for browsers; never a stack trace."""
from __future__ import annotations

import logging
import math

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import ClientDisconnected, HTTPException

from web.batching import Overloaded

log = logging.getLogger(__name__)

MESSAGES = {
    400: ("bad_request", "The request could not be understood."),
    404: ("not_found", "There is no page at this address."),
    405: ("method_not_allowed", "This address does not accept that kind of request."),
    413: ("file_too_large", "The upload is larger than the {limit} limit. Upload a smaller image."),
    500: ("internal_error", "Something went wrong on our side. The image was not kept; please try again."),
}
# a form within the size limit that breaks the form parser's own: a text field over MAX_FORM_MEMORY_SIZE (an image
# sent as text, or as a data URL) or more than MAX_FORM_PARTS parts; it was told it was larger than the 20 MB limit
FORM_TOO_LARGE = ("form_too_large", "A text field of the form is larger than {memory}, or the form has more than "
                  "{parts:,} parts. Send the image as a file in the 'image' field (for example curl -F "
                  "image=@lesion.jpg); an image sent as text, or as a data URL, is not read.")


# answered before the app by the server (gunicorn.conf.py's Worker), in the same form: a request line or headers over
# gunicorn's limits were its own HTML page, without a code or the security headers
SERVER_LIMITS = {
    414: ("address_too_long", "The address, with its query, is longer than the server takes ({limit:,} bytes). Send "
                              "the image in the request's body, not in its address."),
    431: ("headers_too_large", "The request's headers are larger than the server takes ({limit:,} bytes a header, "
                               "{count} headers). Clear this site's cookies, or send fewer or shorter headers."),
}


def human_size(n: int) -> str:
    """A size limit in MB to one decimal, or in whole KB below 1 MB, rounded down so as never to overstate it (a limit
    of 500,000 bytes read "0 MB" on the page and "488.281 KB" in the 413)."""
    if n >= 2**20:
        return f"{math.floor(n / 2**20 * 10) / 10:g} MB"
    return f"{n // 2**10:,} KB"


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz" or (
        request.accept_mimetypes.best == "application/json")


def respond(code: str, message: str, status: int, headers: dict | None = None):
    if wants_json():
        return jsonify({"error": message, "code": code}), status, headers or {}
    return render_template("error.html", message=message, code=code, status=status), status, headers or {}


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return respond(exc.code, exc.message, exc.status)

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        return respond("csrf_failed", "The form expired or did not come from this site. Reload the page and "
                                      "upload the image again.", 400)

    @app.errorhandler(Overloaded)
    def overloaded(exc: Overloaded):
        return respond("busy", str(exc), 503)

    @app.errorhandler(ClientDisconnected)
    def upload_cut_short(exc: ClientDisconnected):
        """The body ended, stopped arriving for the server's read timeout, or came slower than its least upload rate
        (gunicorn.conf.py), before its length: a network lost mid-upload. Whoever is still there is told to send it
        again (was a 400, "could not be understood")."""
        return respond("upload_incomplete", "The upload stopped before the whole image arrived. Check the network "
                                            "connection and upload the image again.", 408)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code, message = MESSAGES.get(exc.code, ("http_error", exc.description or exc.name))
        if exc.code == 413:
            limit, length = app.config["MAX_CONTENT_LENGTH"], request.content_length
            if length is not None and limit is not None and length <= limit:
                code, message = FORM_TOO_LARGE
                message = message.format(memory=f"{app.config.get('MAX_FORM_MEMORY_SIZE') or 500_000:,} bytes",
                                         parts=app.config.get("MAX_FORM_PARTS") or 1000)
            else:
                message = message.format(limit=human_size(limit))
        # the methods a 405's address takes (Allow, which HTTP requires on a 405; the new response had dropped it)
        allowed = {name: value for name, value in exc.get_headers() if name == "Allow"}
        return respond(code, message, exc.code, allowed)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        code, message = MESSAGES[500]
        return respond(code, message, 500)
