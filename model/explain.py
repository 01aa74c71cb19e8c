"""Grad-CAM (Selvaraju et al. 2017) for the malignant class, on the full classifier.

The map is computed from the last convolutional feature map (`top_activation`) of the same
network that gives the verdict, for the malignant logit (log p_malignant - log p_benign),
upsampled to the input and overlaid on the image with a colour scale. A bundle that averages turned views
(`view_turns` in its card) gets the mean of every view's map, each turned back onto the upright image.
"""
from __future__ import annotations

import io

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from PIL import Image

from model.architecture import LAST_CONV_LAYER
from model.bundle import CLASS_NAMES
from model.preprocessing import normalise
from model.turn import turn


class GradCAM:
    def __init__(self, model: keras.Model, layer_name: str = LAST_CONV_LAYER):
        self.model = model
        self._grad_model = keras.Model(model.inputs, [model.get_layer(layer_name).output, model.output])
        size = model.input_shape[1]
        self._heatmaps = tf.function(self._compute, autograph=False,
                                     input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])

    def _compute(self, x):
        malignant = CLASS_NAMES.index("malignant")
        with tf.GradientTape() as tape:
            features, probs = self._grad_model(x, training=False)
            logp = tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0))
            score = logp[:, malignant] - logp[:, 1 - malignant]
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
        return cam

    def heatmaps(self, batch: np.ndarray, turns: tuple[float, ...] = (0.0,)) -> np.ndarray:
        """(B, h, w) maps in [0, 1] (each map scaled by its own maximum): at the feature map's resolution for the
        upright view alone; for several `turns`, at the image's, the mean of the views' maps turned back upright
        (where a turned view did not see a pixel, the mean is over the views that did)."""
        batch = np.asarray(batch, np.float32)
        if tuple(turns) == (0.0,):
            return self._scaled(self._heatmaps(tf.constant(batch)).numpy())
        size = batch.shape[1]
        total = np.zeros(batch.shape[:3], np.float32)
        seen = np.zeros_like(total)
        for degrees in turns:
            cam = self._heatmaps(tf.constant(turn(batch, degrees))).numpy()
            up = tf.image.resize(cam[..., None], (size, size), method="bilinear").numpy()
            total += turn(up, -degrees, fill="constant")[..., 0]
            seen += turn(np.ones_like(up), -degrees, fill="constant")[..., 0]
        return self._scaled(np.where(seen > 1e-3, total / np.maximum(seen, 1e-3), 0.0))

    @staticmethod
    def _scaled(cam: np.ndarray) -> np.ndarray:
        peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        return np.where(peak > 0, cam / np.maximum(peak, 1e-12), 0.0)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, colormap: str = "inferno") -> Image.Image:
    """The heatmap upsampled to the image (bilinear), coloured, and blended over it."""
    h, w = image.shape[:2]
    up = Image.fromarray((heatmap * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
    colour = colormaps[colormap](np.asarray(up, np.float32) / 255.0)[..., :3] * 255.0
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colour
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


HEATMAP_SIDE = 512  # pixels: the longer side of the picture a heatmap is drawn over


def shown_heatmap(cam: GradCAM, predictor, image: Image.Image, max_side: int = HEATMAP_SIDE,
                  square: np.ndarray | None = None) -> Image.Image:
    """What the app shows beside a verdict: Grad-CAM for melanoma over the upright image (the mean over the
    `predictor`'s turned views, turned back), overlaid on the image shrunk to at most `max_side` pixels.

    `square`: the image already squashed to the model's input (`Predictor.prepare`), where `image` is only its
    thumbnail (the server lets each full upload go once it is prepared)."""
    batch = predictor.preprocess(image) if square is None else normalise(square, predictor.spec)
    heat = cam.heatmaps(batch[None], predictor.turns)[0]
    return overlay(np.asarray(thumbnail(image, max_side)), heat)


def thumbnail(image: Image.Image, max_side: int) -> Image.Image:
    """The image shrunk to at most `max_side` pixels a side (a copy; a smaller image as it is)."""
    shown = image.copy()
    shown.thumbnail((max_side, max_side))
    return shown


def png_base64(img: Image.Image) -> str:
    import base64

    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")
