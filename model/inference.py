"""Inference: preprocessed arrays in, per-image label, calibrated probability of malignancy, confidence.

A `Predictor` wraps the bundle's network in one compiled `tf.function` (traced once per batch
shape family), not `model.predict`, whose per-call overhead dominates single-image latency.
"""
from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf

from model.bundle import CLASS_NAMES, Bundle
from model.preprocessing import PreprocessSpec, preprocess


def dihedral_views(batch: np.ndarray, n_views: int) -> np.ndarray:
    """The first `n_views` (1, 2, 4 or 8) flips/rotations of each image: (n_views * B, H, W, 3)."""
    if n_views not in (1, 2, 4, 8):
        raise ValueError(f"n_views must be 1, 2, 4 or 8. Received: n_views={n_views}")
    views = [batch, batch[:, :, ::-1], batch[:, ::-1, :], np.rot90(batch, 1, axes=(1, 2)),
             batch[:, ::-1, ::-1], np.rot90(batch, 3, axes=(1, 2)),
             np.rot90(batch[:, :, ::-1], 1, axes=(1, 2)), np.rot90(batch[:, :, ::-1], 3, axes=(1, 2))]
    return np.concatenate(views[:n_views], axis=0)


def calibrated_malignant_probability(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling on the network's softmax: softmax(log(p) / T)[:, malignant]."""
    logits = np.log(np.clip(probs, 1e-7, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True))[:, CLASS_NAMES.index("malignant")]


def average_views(probs: np.ndarray, n_views: int) -> np.ndarray:
    """Mean of the log-probabilities over the views of each image, renormalised: (B, 2)."""
    b = probs.shape[0] // n_views
    logp = np.log(np.clip(probs, 1e-7, 1.0)).reshape(n_views, b, -1).mean(axis=0)
    e = np.exp(logp - logp.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """Thread-safe inference on a loaded bundle: everything it needs comes from the model card."""

    def __init__(self, bundle: Bundle, tta_views: int | None = None):
        card = bundle.card
        self.bundle = bundle
        self.spec = PreprocessSpec.from_dict(card["preprocessing"])
        self.threshold = float(card["threshold"])
        self.temperature = float(card.get("temperature", 1.0))
        self.tta_views = int(tta_views or card.get("tta_views", 1))
        size = self.spec.image_size
        model = bundle.model
        self._forward = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
        )
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        self.raw_probabilities(np.zeros((1, self.spec.image_size, self.spec.image_size, 3), np.uint8))

    def preprocess(self, data) -> np.ndarray:
        return preprocess(data, self.spec)

    def raw_probabilities(self, batch: np.ndarray, tta_views: int | None = None) -> np.ndarray:
        """The network's softmax for a uint8 batch (B, H, W, 3), averaged over TTA views: (B, 2)."""
        views = int(tta_views or self.tta_views)
        x = dihedral_views(np.asarray(batch), views).astype(np.float32)
        probs = self._forward(tf.constant(x)).numpy()
        return average_views(probs, views)

    def probability(self, batch: np.ndarray, tta_views: int | None = None) -> np.ndarray:
        """Calibrated probability of malignancy for each image of a uint8 batch."""
        return calibrated_malignant_probability(self.raw_probabilities(batch, tta_views), self.temperature)

    def predict(self, batch: np.ndarray) -> list[dict]:
        """Per image: label, calibrated probability of malignancy, confidence in that label, threshold."""
        p = self.probability(batch)
        results = []
        for pm in p.tolist():
            malignant = pm >= self.threshold
            results.append({
                "label": "malignant" if malignant else "benign",
                "probability_malignant": pm,
                "confidence": pm if malignant else 1.0 - pm,
                "threshold": self.threshold,
            })
        return results
