"""Inference: preprocessed arrays in, per-image label, calibrated probability of malignancy, confidence.

A `Predictor` wraps the bundle's network in one compiled `tf.function` (traced once per batch
shape family), not `model.predict`, whose per-call overhead dominates single-image latency; by
default that function is compiled again by OpenVINO, several times faster on a CPU with the same
outputs (model/runtime.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from model.bundle import CLASS_NAMES, Bundle
from model.cues import cautions
from model.gate import NOT_A_LESION, FeatureNeighbours, check_quality
from model.preprocessing import PreprocessSpec, decode, normalise, preprocess, squash
from model.runtime import make_forward
from model.turn import parse_turns, turn

DEFAULT_GATE_LAYER = "block5c_add"


@dataclass(frozen=True)
class Prepared:
    """A decoded image reduced to what judging it takes: its size (for the quality gate) and its picture squashed to
    the model's input (`squash`). The server judges a request's uploads together and lets each full image go once
    this is made: 16 uploads of 64 megapixels (a few kB each as single-colour WebP or PNG) held 3 GB or more at once."""
    size: tuple[int, int]
    square: np.ndarray = field(repr=False)


def dihedral_views(batch: np.ndarray, n_views: int) -> np.ndarray:
    """The first `n_views` (1, 2, 4 or 8) flips/rotations of each image: (n_views * B, H, W, 3)."""
    if n_views not in (1, 2, 4, 8):
        raise ValueError(f"n_views must be 1, 2, 4 or 8. Received: n_views={n_views}")
    views = [batch, batch[:, :, ::-1], batch[:, ::-1, :], np.rot90(batch, 1, axes=(1, 2)),
             batch[:, ::-1, ::-1], np.rot90(batch, 3, axes=(1, 2)),
             np.rot90(batch[:, :, ::-1], 1, axes=(1, 2)), np.rot90(batch[:, :, ::-1], 3, axes=(1, 2))]
    return np.concatenate(views[:n_views], axis=0)


def calibrated_malignant_probability(probs: np.ndarray, temperature: float, bias: float = 0.0) -> np.ndarray:
    """Temperature scaling on the network's softmax, softmax(log(p) / T)[:, malignant], with `bias` added to the
    malignant logit first (0 unless the bundle was calibrated with `--calibration platt`)."""
    # in float64: the network's float32 softmax holds scores a few ulps apart, and float32 arithmetic here would
    # round some of them into ties, so a bias or a temperature could reorder images (and move the AUC)
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1.0)) / temperature
    logits[:, CLASS_NAMES.index("malignant")] += bias
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True))[:, CLASS_NAMES.index("malignant")]


def average_views(probs: np.ndarray, n_views: int) -> np.ndarray:
    """Mean of the log-probabilities over the views of each image, renormalised: (B, 2)."""
    b = probs.shape[0] // n_views
    logp = np.log(np.clip(probs, 1e-7, 1.0)).reshape(n_views, b, -1).mean(axis=0)
    e = np.exp(logp - logp.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


MAX_FORWARD_IMAGES = 64  # images (TTA views included) per forward pass: bounds memory for any batch size


class Predictor:
    """Thread-safe inference on a loaded bundle: everything it needs comes from the model card."""

    def __init__(self, bundle: Bundle, tta_views: int | None = None, runtime: str | None = "auto",
                 threads: int = 0, streams: int = 1):
        card = bundle.card
        self.bundle = bundle
        self.spec = PreprocessSpec.from_dict(card["preprocessing"])
        self.threshold = float(card["threshold"])
        self.temperature = float(card.get("temperature", 1.0))
        self.logit_bias = float(card.get("logit_bias", 0.0))
        self.tta_views = int(tta_views or card.get("tta_views", 1))
        self.turns = parse_turns(card.get("view_turns", [0.0]))  # views averaged (degrees); the gate reads the first
        band = card.get("indeterminate_band")
        self.band = (float(band[0]), float(band[1])) if band else None
        gate = card.get("gate") or {}
        self.quality_limits = gate.get("quality")
        self.neighbours = None
        if gate.get("features_file"):
            self.neighbours = FeatureNeighbours.load(bundle.path.parent / gate["features_file"])
        size = self.spec.image_size
        model = bundle.model
        self.gate_layer = gate.get("layer", DEFAULT_GATE_LAYER)
        both = keras.Model(model.inputs, [model.output, model.get_layer(self.gate_layer).output])

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)], autograph=False)
        def forward(x):
            probs, feature_map = both(x, training=False)
            return probs, tf.reduce_mean(feature_map, axis=(1, 2))  # globally pooled gate features

        self._forward = make_forward(forward, runtime, threads, streams)
        self.runtime = self._forward.name

    def warm_up(self) -> None:
        self.raw_probabilities(np.zeros((1, self.spec.image_size, self.spec.image_size, 3), np.uint8))

    def decode(self, data: bytes):
        """Decode an upload exactly as `preprocess` does for training (same JPEG draft scale)."""
        return decode(data, draft_size=self.spec.image_size)

    def preprocess(self, data) -> np.ndarray:
        return preprocess(data, self.spec)

    def views(self, batch: np.ndarray, tta_views: int, turns: tuple[float, ...]) -> np.ndarray:
        """Every view the verdict averages, view-major: for each turn, its `tta_views` flips and rotations."""
        return np.concatenate([dihedral_views(turn(batch, t), tta_views) for t in turns], axis=0)

    def raw_outputs(self, batch: np.ndarray, tta_views: int | None = None,
                    turns: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The network's softmax averaged over the views (the card's turns, each with its TTA flips) (B, 2), and
        the gate's pooled features of the first turn's plain view."""
        views = int(tta_views or self.tta_views)
        turns = self.turns if turns is None else parse_turns(turns)
        per_image = views * len(turns)
        batch = np.asarray(batch)
        step = max(1, MAX_FORWARD_IMAGES // per_image)  # a whole split in one pass would hold every activation
        probs, features = [], []
        for i in range(0, max(len(batch), 1), step):  # an empty batch still gets one (empty) pass
            chunk = batch[i : i + step]
            p, f = self._forward(self.views(chunk, views, turns))
            probs.append(average_views(np.asarray(p), per_image))
            features.append(np.asarray(f)[: len(chunk)])
        return np.concatenate(probs), np.concatenate(features)

    def raw_probabilities(self, batch: np.ndarray, tta_views: int | None = None,
                          turns: tuple[float, ...] | None = None) -> np.ndarray:
        """The network's softmax for a uint8 batch (B, H, W, 3), averaged over the views: (B, 2)."""
        return self.raw_outputs(batch, tta_views, turns)[0]

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        """The bundle's calibration (temperature, logit bias) applied to the network's softmax (B, 2)."""
        return calibrated_malignant_probability(probs, self.temperature, self.logit_bias)

    def probability(self, batch: np.ndarray, tta_views: int | None = None) -> np.ndarray:
        """Calibrated probability of malignancy for each image of a uint8 batch."""
        return self.calibrated(self.raw_probabilities(batch, tta_views))

    def verdict(self, pm: float) -> dict:
        malignant = pm >= self.threshold
        return {
            "label": "malignant" if malignant else "benign",
            "probability_malignant": pm,
            "confidence": pm if malignant else 1.0 - pm,
            "threshold": self.threshold,
            "indeterminate": bool(self.band and self.band[0] <= pm < self.band[1]),
        }

    def predict(self, batch: np.ndarray) -> list[dict]:
        """Per image: label, calibrated probability of malignancy, confidence in that label, threshold."""
        return [self.verdict(pm) for pm in self.probability(batch).tolist()]

    def prepare(self, image: Image.Image) -> Prepared:
        """What `assess` needs of a decoded image, without the image."""
        return Prepared(image.size, squash(image, self.spec))

    def quality_refusal(self, image, square: np.ndarray | None = None):
        """The quality gate's refusal for a decoded image (`square`: the same squashed, when at hand), or None when
        it may go to the network."""
        return check_quality(image, self.quality_limits, square) if self.quality_limits else None

    def not_a_lesion(self, features: np.ndarray) -> np.ndarray:
        """Whether each image's pooled gate features are too far from the training images to judge it."""
        return self.neighbours.refuse(features) if self.neighbours else np.zeros(len(features), bool)

    def assess(self, images: list) -> list[dict]:
        """Decoded PIL images (or their `Prepared` forms) in; per image either a verdict with its `cautions`
        (`model.cues`: dark corners or skin-marker ink, rare in training) or {"rejected": True, "code", "reason"}.

        The quality gate runs before the network; the not-a-lesion gate uses the same forward pass
        that gives the verdict (its pooled features), so a refused image costs no extra inference.
        """
        out: list[dict | None] = [None] * len(images)
        arrays, squares, slots = [], [], []
        for i, image in enumerate(images):
            item = image if isinstance(image, Prepared) else self.prepare(image)
            square = item.square
            refusal = self.quality_refusal(item, square)
            if refusal:
                out[i] = {"rejected": True, "code": refusal.code, "reason": refusal.message}
            else:
                squares.append(square)
                arrays.append(normalise(square, self.spec))
                slots.append(i)
        if arrays:
            batch = np.stack(arrays)
            probs, features = self.raw_outputs(batch)
            p = self.calibrated(probs)
            refused = self.not_a_lesion(features)
            for slot, square, pm, no in zip(slots, squares, p.tolist(), refused.tolist()):
                if no:
                    out[slot] = {"rejected": True, "code": NOT_A_LESION.code, "reason": NOT_A_LESION.message}
                else:  # the cues on the squashed picture, as the training images were when the audit counted them
                    out[slot] = {**self.verdict(pm), "cautions": cautions(Image.fromarray(square), self.bundle.card)}
        return out
