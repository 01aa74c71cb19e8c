"""The gate: refuse images the model cannot judge, before any verdict.

Two stages:
1. Image quality, from the decoded image: too small, extreme aspect ratio, nearly uniform,
   too dark or too bright, strongly blurred. Thresholds are fitted on the training images
   (well outside what real dermoscopic images show) and stored in the model card.
2. Is it a dermoscopic lesion image at all? The classifier's own features (the globally pooled output
   of a middle block, `block5c_add` by default: more general than the last layer, whose features are
   tuned to benign-vs-malignant and place many non-lesions among lesions) are compared with those of
   the training images: the cosine distance to the k-th nearest training image (deep nearest
   neighbours, Sun et al. 2022). Past a threshold fitted on the training split, the image is refused.
   The training features travel with the bundle (`<name>.gate.npz`); `train.gate` also stores each
   training image slightly blurred and seen through a dermoscope ring, so that a lesion photographed
   a little out of focus or through a contact dermoscope is not taken for something else.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ADVICE = "Upload a sharp, well-lit dermoscopic image of a single skin lesion."


@dataclass
class Refusal:
    code: str
    message: str


def quality_measures(image: Image.Image, square: np.ndarray | None = None) -> dict:
    """Cheap measures on a 256-pixel greyscale version of the image; from `square`, the image already squashed to
    the model's input (`model.preprocessing.squash`), when given: the same numbers for a 256-pixel image, and no
    second resize of a large upload."""
    w, h = image.size
    source = image if square is None else Image.fromarray(square)
    grey = np.asarray(source.convert("L").resize((256, 256), Image.Resampling.BILINEAR), np.float32)
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    return {
        "min_side": float(min(w, h)),
        "aspect": float(max(w, h) / max(min(w, h), 1)),
        "contrast": float(grey.std()),
        "brightness": float(grey.mean()),
        "sharpness": float(lap.var()),
    }


def check_quality(image: Image.Image, limits: dict, square: np.ndarray | None = None) -> Refusal | None:
    m = quality_measures(image, square)
    if m["min_side"] < limits["min_side"]:
        return Refusal("too_small", f"The image is too small ({image.size[0]}x{image.size[1]} pixels) to judge; "
                                    f"at least {int(limits['min_side'])} pixels on each side are needed. {ADVICE}")
    if m["aspect"] > limits["max_aspect"]:
        return Refusal("extreme_aspect_ratio", f"The image is {m['aspect']:.1f} times wider than high (or the "
                                               f"reverse), which is not a lesion photograph. {ADVICE}")
    if m["brightness"] < limits["min_brightness"]:
        return Refusal("too_dark", f"The image is too dark to judge. {ADVICE}")
    if m["brightness"] > limits["max_brightness"]:
        return Refusal("too_bright", f"The image is too bright (overexposed) to judge. {ADVICE}")
    if m["contrast"] < limits["min_contrast"]:
        return Refusal("blank_image", f"The image is nearly uniform: there is no lesion to judge. {ADVICE}")
    if m["sharpness"] < limits["min_sharpness"]:
        return Refusal("too_blurred", f"The image is too blurred to judge. {ADVICE}")
    return None


def fit_quality_limits(measures: list[dict]) -> dict:
    """Limits well outside the range of real training images: half (or twice) their 0.5th percentile."""
    arr = {k: np.array([m[k] for m in measures]) for k in measures[0]}
    return {
        "min_side": 64.0,
        "max_aspect": 3.0,
        "min_contrast": float(min(8.0, 0.5 * np.percentile(arr["contrast"], 0.5))),
        "min_brightness": float(min(30.0, 0.5 * np.percentile(arr["brightness"], 0.5))),
        "max_brightness": float(max(235.0, min(250.0, 255 - 0.5 * (255 - np.percentile(arr["brightness"], 99.5))))),
        "min_sharpness": float(0.25 * np.percentile(arr["sharpness"], 0.5)),
    }


class FeatureNeighbours:
    """Cosine distance to the k-th nearest training image in the classifier's pooled-feature space."""

    def __init__(self, train_features: np.ndarray, k: int, threshold: float):
        self.bank = _normalise(np.asarray(train_features, np.float32))
        self.k = int(k)
        self.threshold = float(threshold)

    def scores(self, features: np.ndarray) -> np.ndarray:
        sims = _normalise(np.asarray(features, np.float32)) @ self.bank.T
        kth = np.partition(-sims, self.k - 1, axis=1)[:, self.k - 1]
        return 1.0 + kth  # 1 - similarity of the k-th neighbour

    def refuse(self, features: np.ndarray) -> np.ndarray:
        return self.scores(features) > self.threshold

    @staticmethod
    def leave_one_out_scores(train_features: np.ndarray, k: int, n_images: int | None = None,
                             chunk: int = 1024) -> np.ndarray:
        """Each training image's distance to its k-th nearest neighbour among the other images.

        `train_features` may hold every image more than once, seen in several views (`train.gate`'s bank:
        plain, then slightly blurred, then through a dermoscope ring), stacked view after view, `n_images` rows
        each; the scores are then the plain views' (the first `n_images` rows), every view of the image itself
        left out. Computed `chunk` images at a time, so a large training set needs little memory.
        """
        bank = _normalise(np.asarray(train_features, np.float32))
        n = len(bank) if n_images is None else int(n_images)
        if n <= 0 or len(bank) % n:
            raise ValueError(f"{len(bank)} bank rows are not whole views of {n} images")
        views = len(bank) // n
        out = np.empty(n, np.float32)
        for start in range(0, n, chunk):
            rows = np.arange(start, min(start + chunk, n))
            sims = bank[rows] @ bank.T
            sims[np.arange(len(rows))[:, None], rows[:, None] + n * np.arange(views)[None, :]] = -np.inf
            out[rows] = 1.0 + np.partition(-sims, k - 1, axis=1)[:, k - 1]
        return out

    def save(self, path: Path) -> None:
        """Written to `path` exactly: numpy adds .npz to a file name without it."""
        with open(path, "wb") as f:
            np.savez_compressed(f, features=self.bank.astype(np.float16), k=self.k, threshold=self.threshold)

    @classmethod
    def load(cls, path: Path) -> "FeatureNeighbours":
        z = np.load(path)
        return cls(z["features"].astype(np.float32), int(z["k"]), float(z["threshold"]))


NOT_A_LESION = Refusal(
    "not_a_lesion",
    "This does not look like a dermoscopic image of a skin lesion, so the model cannot judge it. " + ADVICE,
)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
