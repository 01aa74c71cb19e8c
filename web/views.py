"""Pages (upload, result, about) and the JSON API (/api/v1/predict, /healthz)."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path, PurePath

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for

from model.cues import rare_in_training
from model.preprocessing import decode
from web import uploads
from web.errors import ApiError, human_size
from web.service import EXTENSION_KEY, NEXT_STEP, ModelService

pages = Blueprint("pages", __name__)
api = Blueprint("api", __name__)

ACCEPTED = "JPEG, PNG, BMP, TIFF or WebP"
BACKBONE_NAMES = {"efficientnet_lite0": "EfficientNet-Lite0", "efficientnet_b0": "EfficientNet-B0"}
CUE_NAMES = {"skin_marker_ink": "purple skin-marker ink", "dark_corners": "a contact dermoscope's dark ring"}
ISIC_2017 = re.compile(r"isic[-_ ]?2017", re.IGNORECASE)


# What the about page reads from a card beyond what serving needs (model.bundle.check_card): python -m train writes
# them all; a card from elsewhere may lack some, and the page then says so instead of failing (a 500 before).
ABOUT_FIELDS = {"data": ("counts", "test_images_dropped_as_duplicates"),
                "test": ("n", "n_malignant", "roc_auc", "roc_auc_ci95", "sensitivity", "specificity", "accuracy", "ece",
                         "confusion_matrix"),
                "validation": ("n_malignant",), "created": (), "target_sensitivity": (), "intended_use": ()}


def unrecorded(card: dict) -> list[str]:
    """The fields the about page needs that the card lacks, as `test.roc_auc` or `data`."""
    missing = []
    for key, inner in ABOUT_FIELDS.items():
        value = card.get(key)
        if value in (None, "", {}):
            missing.append(key)
        elif inner:
            missing += [f"{key}.{k}" for k in inner if not isinstance(value, dict) or value.get(k) is None]
    return missing


def about_facts(card: dict) -> dict:
    """What the about page says of a bundle, read from its card: the page must not describe the shipped model's
    data when a developer serves a bundle trained on their own."""
    data = card.get("data") or {}
    source = str(data.get("source") or "")
    extra = str((data.get("extra_train") or {}).get("source") or "")  # python -m train --extra-train
    rare = rare_in_training(card)
    isic2017 = bool(ISIC_2017.search(source))
    return {
        "backbone": BACKBONE_NAMES.get(card.get("backbone"), card.get("backbone")),
        "how": "trained from scratch" if card.get("initial_weights") == "none" else "fine-tuned",
        "isic2017": isic2017,  # its test split is ISIC 2017's
        "isic2017_only": isic2017 and not extra,  # and so is everything it learnt from
        "sources": [PurePath(source).name or "its training data"] + ([PurePath(extra).name] if extra else []),
        "rare_cues": [name for code, name in CUE_NAMES.items() if code in rare],
        "unrecorded": unrecorded(card),
    }


def service() -> ModelService:
    return current_app.extensions[EXTENSION_KEY]


def uploaded_files(max_files: int) -> list[tuple[str, bytes]]:
    """The files of the `image` field, read into memory; ApiError if there are none or too many."""
    files = [f for f in request.files.getlist("image") if f and (f.filename or f.content_length)]
    if not files:
        how = (f"Send a {ACCEPTED} file as multipart/form-data in the 'image' field (for example curl -F "
               f"image=@lesion.jpg)." if request.blueprint == "api" else
               f"Choose a {ACCEPTED} file in the 'image' field.")
        elsewhere = sorted(name for name, f in request.files.items(multi=True) if name != "image" and f.filename)
        if elsewhere:  # a client's own field name (file, upload): say which it sent, not only which is wanted
            how += f" This request sent a file in the '{elsewhere[0][:40]}' field."
        elif request.mimetype.startswith("image/") or request.mimetype == "application/octet-stream":
            how += f" This request sent its body as {request.mimetype[:40]}, not as a form."  # curl --data-binary
        elif "image" in request.form:  # curl -F image=<file, or a data URL appended to a FormData
            how += " This request sent the 'image' field as text, not as a file."
        elif request.mimetype == "multipart/form-data" and not request.mimetype_params.get("boundary"):
            how += (" This request's Content-Type names multipart/form-data without its boundary (a header set by "
                    "hand: leave it to the client library, which adds the boundary).")
        elif request.mimetype == "multipart/form-data" and not request.form and request.content_length:
            how += (" Its multipart/form-data body could not be read: its parts do not follow the boundary its "
                    "Content-Type names, or it is malformed.")
        raise ApiError("no_file", "No image was uploaded. " + how, 400)  # `how` holds what the client sent: no format()
    if len(files) > max_files:
        message = (f"At most {max_files} images can be sent at once; received {len(files)}."
                   if request.blueprint == "api" else
                   f"This page analyses one image at a time; received {len(files)}. The API, POST /api/v1/predict, "
                   f"takes up to {current_app.config['MAX_FILES']} at once.")
        raise ApiError("too_many_files", message, 400)
    return [(f.filename or "upload", f.read()) for f in files]


def bad_input(r) -> ApiError:
    return ApiError(r.code, r.reason, 415 if r.code == "unsupported_format" else 400)


def judge_request(want_preview: bool, explain: bool, max_files: int):
    results = service().judge(uploaded_files(max_files), want_preview, explain)
    if current_app.config["KEEP_UPLOADS"]:
        folder = Path(current_app.config["UPLOAD_FOLDER"])
        for r in results:
            if r.upload is not None:  # decoded again, one at a time: the judging kept no full image
                try:
                    uploads.keep(decode(r.upload), folder,  # whole: the network's decode is a JPEG's draft
                                 current_app.config["UPLOAD_RETENTION_HOURS"])
                except OSError as exc:  # a full disk: the clinician still gets the verdict; the log says what was lost
                    # not its file name, which may name the patient: kept uploads get random names for that reason
                    current_app.logger.error("an upload was not kept in %s: %s", folder, exc)
    return results


@pages.get("/")
def index():
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    kept_hours = current_app.config["UPLOAD_RETENTION_HOURS"] if current_app.config["KEEP_UPLOADS"] else None
    return render_template("index.html", accepted=ACCEPTED, max_size=human_size(limit), max_bytes=limit,
                           kept_hours=kept_hours)


@pages.get("/predict")
def predict_page_reopened():
    """A result's address opened again (history, a bookmark, a reload): results are not kept, so back to the upload."""
    return redirect(url_for("pages.index"), 303)


@pages.post("/predict")
def predict_page():
    [result] = judge_request(want_preview=True, explain=True, max_files=1)  # the page shows one result
    if result.bad_input:
        raise bad_input(result)
    # when it was judged, for a printed or saved page filed in a patient's record
    analysed = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if result.rejected:
        return render_template("refused.html", r=result, model=service().describe(), analysed=analysed)
    advice = NEXT_STEP["indeterminate" if result.indeterminate else result.label]
    probability, threshold = percentages(result.probability_malignant, result.threshold)
    return render_template("result.html", r=result, next_step=advice, model=service().describe(),
                           target=service().card.get("target_sensitivity", 0.9), analysed=analysed,
                           probability=probability, threshold=threshold)


def percentages(probability: float, threshold: float) -> tuple[str, str]:
    """Both as percentages with one decimal, or as many more (up to 4) as it takes to tell them apart: at one each, a
    probability just below the threshold read "9.0% ... below the decision threshold of 9.0%"."""
    for digits in range(1, 5):
        shown = f"{probability * 100:.{digits}f}", f"{threshold * 100:.{digits}f}"
        if shown[0] != shown[1]:
            break
    return shown


@pages.get("/about")
def about():
    card = service().card
    predictor = service().predictor  # the calibration as served, its defaults for older cards included
    return render_template("about.html", card=card, model=service().describe(), facts=about_facts(card),
                           calibration=predictor)


FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def flag(name: str) -> bool:
    """A yes/no query parameter; ApiError for a value that is neither, so a typo is not read as 'no'."""
    value = request.args.get(name, "0")
    answer = FLAGS.get(value.strip().lower())
    if answer is None:
        raise ApiError("bad_parameter", f"The query parameter '{name}' must be 1 or 0 (or true / false, yes / no); "
                                        f"received '{value[:40]}'.", 400)
    return answer


@api.post("/api/v1/predict")
def predict_api():
    explain = flag("explain")
    results = judge_request(want_preview=False, explain=explain, max_files=current_app.config["MAX_FILES"])
    if all(r.bad_input for r in results):
        raise bad_input(results[0])
    return jsonify({"model": service().describe(), "predictions": [r.to_json() for r in results]})


OPENAPI = Path(__file__).with_name("openapi.json")
OPENAPI_DOCUMENT = OPENAPI.read_bytes()  # read once, served as it is


@api.get("/api/v1/openapi.json")
def openapi():
    """The API's OpenAPI 3.1 document, for client generators and integrators."""
    return current_app.response_class(OPENAPI_DOCUMENT, mimetype="application/json")


@api.get("/healthz")
def healthz():
    model = service().describe()
    return jsonify({"status": "ok", "model": model["name"], "version": model["version"]})
