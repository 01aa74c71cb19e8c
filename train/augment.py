"""Augmentation, on the training path only: Keras preprocessing layers, inactive at inference.

The paper's four (rotation, flips, zoom, brightness) plus contrast, saturation and hue jitter,
which make the model less dependent on one clinic's camera and lighting. Lesions have no
canonical orientation, so rotations cover the full circle.
"""
from __future__ import annotations

import keras
from keras import layers


def build_augmenter(seed: int = 42) -> keras.Sequential:
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),  # with full rotations: every flip and turn
            layers.RandomRotation(0.5, fill_mode="reflect", seed=seed + 1),
            layers.RandomZoom((-0.25, 0.1), fill_mode="reflect", seed=seed + 2),
            layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 3),
            layers.RandomContrast(0.2, seed=seed + 4),
            layers.RandomSaturation((0.35, 0.65), value_range=(0, 255), seed=seed + 5),
            layers.RandomHue(0.04, value_range=(0, 255), seed=seed + 6),
        ],
        name="augmentation",
    )
