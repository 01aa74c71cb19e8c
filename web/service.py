"""The model as a Flask extension: loaded once per process, warmed up, shared by every request.

`ModelService.judge` turns uploaded files into one result per file: a verdict, or a rejection
with a stable code and a sentence for a person. Decoding and inference errors of one file never
affect another.
"""
from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass, field

import numpy as np
from flask import Flask
from PIL import Image

from model.bundle import DEFAULT_BUNDLE, BundleError, BundleUnreadable, load_bundle
from model.explain import HEATMAP_SIDE, GradCAM, png_base64, shown_heatmap, thumbnail
from model.inference import Predictor
from model.preprocessing import ImageError
from web.batching import MicroBatcher

log = logging.getLogger(__name__)
EXTENSION_KEY = "melanoma_model"

NEXT_STEP = {
    "malignant": "Refer the patient for dermatologist review; a biopsy may be needed.",
    "indeterminate": "The model is unsure: the probability is close to the decision threshold. A dermatologist "
                     "review is advised.",
    "benign": "No sign of melanoma was found by the model. Keep routine follow-up, and refer anyway if the "
              "lesion changes, bleeds or worries you or the patient.",
}


@dataclass
class Judgement:
    filename: str
    label: str | None = None
    probability_malignant: float | None = None
    confidence: float | None = None
    threshold: float | None = None
    indeterminate: bool = False
    cautions: list = field(default_factory=list)  # [{"code", "message"}]: what in the picture the model knows little of
    rejected: bool = False
    bad_input: bool = False
    reason: str | None = None
    code: str | None = None
    preview: str | None = None  # data: URL of the upright image, for the result page
    upload: bytes | None = field(default=None, repr=False)  # the file, where it decoded: for optional keeping
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        if self.rejected:
            return {"filename": self.filename, "rejected": True, "reason": self.reason, "code": self.code}
        return {"filename": self.filename, "label": self.label, "probability_malignant": self.probability_malignant,
                "confidence": self.confidence, "threshold": self.threshold, "indeterminate": self.indeterminate,
                "cautions": self.cautions, **self.extra}


class ModelService:
    def __init__(self, app: Flask | None = None):
        self.bundle = None
        self.predictor: Predictor | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        threads = int(app.config.get("INFERENCE_THREADS") or 0)
        set_tf_threads(threads)
        path = app.config["MODEL_PATH"]
        try:
            self.bundle = load_bundle(path)
        except BundleUnreadable as exc:  # the right bundle, the wrong permissions: another path is not the fix
            raise SystemExit(f"error: {exc}") from None
        except BundleError as exc:  # the server cannot start: say why in one line, not a traceback
            raise SystemExit(f"error: {str(exc).rstrip('.')}. Set MELANOMA_MODEL_PATH to a bundle's .keras file, with "
                             f"its model card beside it (default: the shipped model, {DEFAULT_BUNDLE}).") from None
        self.predictor = Predictor(self.bundle, tta_views=app.config.get("TTA_VIEWS") or None,
                                   runtime=app.config.get("RUNTIME", "auto"), threads=threads,
                                   streams=int(app.config.get("INFERENCE_STREAMS") or 0))
        self.predictor.warm_up()
        batching = app.config.get("MICRO_BATCHING")
        if batching is None:  # OpenVINO's streams already run concurrent requests side by side, and batches
            batching = self.predictor.runtime == "tensorflow"  # cost it more per image; TensorFlow gains
        self.batcher = MicroBatcher(self.predictor.assess) if batching else None
        self.cam = GradCAM(self.bundle.model)
        self.cam.heatmaps(np.zeros((1, *self.bundle.model.input_shape[1:]), np.uint8),
                          self.predictor.turns)  # trace once now
        card = self.bundle.card
        app.logger.info("model loaded: %s (version %s, backbone %s, threshold %.4f, temperature %.3f, logit bias %.3f, "
                        "TTA %d, runtime %s, micro-batching %s)", path, self.bundle.version, card["backbone"],
                        self.predictor.threshold, self.predictor.temperature, self.predictor.logit_bias,
                        self.predictor.tta_views, self.predictor.runtime,
                        "on" if self.batcher else "off")
        app.extensions[EXTENSION_KEY] = self

    @property
    def card(self) -> dict:
        return self.bundle.card

    def describe(self) -> dict:
        card = self.card
        return {"name": self.bundle.name, "version": self.bundle.version, "backbone": card["backbone"],
                "threshold": self.predictor.threshold, "tta_views": self.predictor.tta_views,
                "view_turns": list(self.predictor.turns),
                "runtime": self.predictor.runtime}

    def heatmap(self, image: Image.Image, max_side: int = HEATMAP_SIDE, square=None) -> str:
        """Grad-CAM for the malignant class over the upright image (the mean over the bundle's turned views, turned
        back), as a base64 PNG; `square`: the image as prepared for the network, where `image` is its thumbnail."""
        return png_base64(shown_heatmap(self.cam, self.predictor, image, max_side, square))

    def judge(self, files: list[tuple[str, bytes]], want_preview: bool = False,
              explain: bool = False) -> list[Judgement]:
        """One Judgement per (filename, bytes), in order; all judgeable images go through one forward pass.

        A file that does not decode is `bad_input` (the request's fault); an image the gate refuses is
        a normal answer: `rejected` with the reason. A verdict carries `cautions` (`model.cues`): dark
        corners or skin-marker ink in the picture, which the model saw little of in training.
        """
        results: list[Judgement] = []
        images, slots, shown = [], [], {}
        for filename, data in files:
            result = Judgement(filename=filename)
            try:
                image = self.predictor.decode(data)
            except ImageError as exc:
                result.rejected, result.bad_input, result.reason, result.code = True, True, exc.message, exc.code
            else:  # only what judging and showing it take is kept: 16 full images held 3 GB or more at once
                images.append(self.predictor.prepare(image))
                slots.append(len(results))
                result.upload = data
                if want_preview:
                    result.preview = data_url(image)
                if explain:
                    shown[len(results)] = thumbnail(image, HEATMAP_SIDE)
                del image
            results.append(result)
        if images:
            assess = self.batcher.submit if self.batcher else self.predictor.assess
            for slot, prepared, verdict in zip(slots, images, assess(images)):
                r = results[slot]
                if verdict.get("rejected"):
                    r.rejected, r.reason, r.code = True, verdict["reason"], verdict["code"]
                else:
                    r.label, r.probability_malignant = verdict["label"], verdict["probability_malignant"]
                    r.confidence, r.threshold = verdict["confidence"], verdict["threshold"]
                    r.indeterminate = verdict["indeterminate"]
                    r.cautions = verdict["cautions"]
                    if explain:
                        r.extra["heatmap"] = self.heatmap(shown[slot], HEATMAP_SIDE, prepared.square)
        return results


def set_tf_threads(threads) -> None:
    """TensorFlow's intra-op thread count per process (0 or None: TensorFlow's default, one per core).
    OpenVINO gets the same count through the Predictor.

    With several worker processes on few cores, one thread each avoids oversubscription. It can only be
    set before TensorFlow runs its first operation in the process."""
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.warning("INFERENCE_THREADS=%s ignored by TensorFlow: TensorFlow was already initialised in this process", threads)


def data_url(image: Image.Image, max_side: int = 640) -> str:
    """A JPEG data: URL of the image (downscaled), so the result page needs no stored file."""
    preview = image.copy()
    preview.info = {}  # no metadata in the page: a JPEG's comment (a patient's name, by some cameras) was kept
    preview.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    preview.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
