"""Things in a picture that are not the lesion but can sway the network: detectors shared by `train.audit`
(shortcut cues in a data set) and the app (a caution beside a verdict).

- `dark_corners`: at least half of the four corner patches (each 6/64 of the side) is near black (luminance below
  40 of 255): the ring of a contact dermoscope, or a strong vignette. The same test decides when the
  preprocessing's frame fill (`--frame-fill`) acts.
- `skin_marker_ink`: at least 0.5% of a 128 x 128 thumbnail is purple (gentian-violet surgical marker: hue 245-330
  degrees, saturation at least 0.25) outside the lesion, its Otsu mask (`lesion_mask`) widened by 4 pixels, so
  that blue-violet pigment inside the lesion (a blue-white veil among it, a melanoma sign) does not count. A
  heuristic that errs towards missing ink: a purple lesion larger than its mask can pass for ink, and where the ink
  is the darkest thing in view the mask takes it for the lesion and the image passes as clean.

A caution is not a refusal: the image is judged as usual, and the clinician is told what in the picture the model
was trained on little of (the counts come from the bundle's card, written by `python -m train`).
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color, filters, measure

from model import preprocessing

THUMBNAIL = 64


def lesion_mask(rgb: np.ndarray) -> np.ndarray:
    """Otsu threshold on the smoothed grey image (lesions are darker than skin), largest component, holes filled."""
    grey = filters.gaussian(color.rgb2gray(rgb), sigma=2)
    dark = grey < filters.threshold_otsu(grey)
    labels = measure.label(dark)
    if labels.max() == 0:
        return np.ones_like(dark)
    h, w = dark.shape
    regions = measure.regionprops(labels)
    # prefer large components near the centre over dark image corners (vignetting)
    best = max(regions, key=lambda r: r.area / (1 + np.hypot(r.centroid[0] - h / 2, r.centroid[1] - w / 2) / h))
    return ndimage.binary_fill_holes(labels == best.label)


def dark_corner_share(img: Image.Image) -> float:
    """Share of the four corner patches' pixels that are near black, on a 64 x 64 thumbnail (as the preprocessing's
    frame fill measures it)."""
    return preprocessing.dark_corner_share(np.asarray(img.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)))


def has_dark_corners(img: Image.Image) -> bool:
    return dark_corner_share(img) >= preprocessing.DARK_CORNERS


INK_THUMBNAIL = 128
INK_HUE = (0.68, 0.92)  # purple to magenta, as a share of the hue circle
INK_MIN_SATURATION, INK_VALUE = 0.25, (0.15, 0.90)
INK_LESION_MARGIN = 4  # pixels of the thumbnail by which the lesion mask is widened
INK_SHARE = 0.005


def ink_share(img: Image.Image) -> float:
    """Share of a 128 x 128 thumbnail's pixels that look like gentian-violet skin-marker ink and lie outside the
    lesion (its Otsu mask widened by `INK_LESION_MARGIN` pixels)."""
    thumb, purple = _purple(img)
    if not purple.any():  # the lesion mask only when a pixel is purple: the same answer, faster
        return 0.0
    return _outside_share(thumb, purple)


def has_ink(img: Image.Image) -> bool:
    """`ink_share(img) >= INK_SHARE`, without the lesion mask when too few pixels are purple to reach it."""
    thumb, purple = _purple(img)
    return bool(purple.mean() >= INK_SHARE and _outside_share(thumb, purple) >= INK_SHARE)


def _purple(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The 128 x 128 uint8 thumbnail and its purple pixels (`purple_pixels`)."""
    thumb = np.asarray((img if img.mode == "RGB" else img.convert("RGB")).resize((INK_THUMBNAIL, INK_THUMBNAIL),
                                                                               Image.Resampling.BILINEAR))
    return thumb, purple_pixels(thumb)


def _outside_share(thumb: np.ndarray, purple: np.ndarray) -> float:
    outside = ~ndimage.binary_dilation(lesion_mask(thumb / 255.0), iterations=INK_LESION_MARGIN)
    return float((purple & outside).mean())


def purple_pixels(thumb: np.ndarray) -> np.ndarray:
    """Pixels of a uint8 RGB array whose hue, saturation and value (as skimage's rgb2hsv computes them, with the
    same floating-point operations) lie in `INK_HUE`, above `INK_MIN_SATURATION` and inside `INK_VALUE`.

    Without rgb2hsv, for speed (tested equal pixel by pixel): a hue of 245-330 degrees has green strictly the
    smallest channel (red largest: a hue above 300 needs blue above green; blue largest: above 240 needs red above
    green), and there rgb2hsv's hue is 4 + (r - g) / delta where blue is the largest (its last, winning case) and
    (g - b) / delta elsewhere; `_could_be_purple` leaves out, in integers, the pixels that cannot pass."""
    purple = _could_be_purple(thumb)  # float arithmetic only for the few pixels an integer test leaves
    rgb = thumb[purple].astype(np.float64)
    red, green, blue = (c / 255.0 for c in rgb.T)  # the channels as rgb2hsv divides them
    value = np.maximum(np.maximum(red, green), blue)
    delta = value - np.minimum(np.minimum(red, green), blue)  # > 0: green is the strict minimum
    hue = (np.where(blue == value, 4.0 + (red - green) / delta, (green - blue) / delta) / 6.0) % 1.0
    purple[purple] = ((hue > INK_HUE[0]) & (hue < INK_HUE[1]) & (delta / value > INK_MIN_SATURATION)
                      & (value > INK_VALUE[0]) & (value < INK_VALUE[1]))
    return purple


def _could_be_purple(thumb: np.ndarray) -> np.ndarray:
    """A superset of `purple_pixels` in integer arithmetic, with a margin for rounding: green the strict minimum,
    a saturation of at least about 0.25, a value of about 0.15-0.90, and a hue of at least about 245 degrees
    where blue is the largest ((r - g) / delta above 0.08) and at most about 330 where red is ((b - g) / delta
    above 0.48)."""
    r, g, b = (c.astype(np.int16) for c in np.moveaxis(thumb, -1, 0))
    value = np.maximum(r, b)
    delta = value - g
    return ((g < r) & (g < b) & (4 * delta >= value) & (value >= 38) & (value <= 230)
            & np.where(b >= r, 100 * (r - g) >= 7 * delta, 100 * (b - g) >= 47 * delta))


# name -> (detector, what it is, the caution shown beside a verdict; {rare} is how many training images showed it)
CUES = {
    "dark_corners": (
        has_dark_corners,
        "black corners: a contact dermoscope's field-of-view ring or a strong vignette",
        "The picture has dark corners, as a contact dermoscope's ring or strong vignetting gives. {rare} were taken "
        "like this, so it knows little of such pictures. Weigh this result with extra care and, if you can, also "
        "check a picture without the ring.",
    ),
    "skin_marker_ink": (
        has_ink,
        "purple surgical skin-marker ink outside the lesion",
        "Purple skin-marker ink is visible next to the lesion. {rare} carried ink, and marks can sway a network's "
        "score either way. Do not let a benign result reassure you; where possible, photograph the lesion before it "
        "is marked.",
    ),
}


RARE = 0.10  # a cue in at least this share of the training split is no reason for a caution


def rare_in_training(card: dict | None = None) -> dict[str, str]:
    """code -> how many training images showed it (the `{rare}` phrase), for each cue in `CUES` that was rare in the
    card's training split (`data.shortcut_cues` and `data.counts`, written by `python -m train`); a cue in at least
    `RARE` of the split is not rare. A card without the counts makes every cue rare, with "few" for the numbers."""
    data = (card or {}).get("data") or {}
    counts = data.get("shortcut_cues") or {}
    images = sum(((data.get("counts") or {}).get("train") or {}).values())
    out = {}
    for code in CUES:
        known = (counts.get(code) or {}).get("train_images_with_cue")
        if known is not None and images and known >= RARE * images:
            continue
        out[code] = (f"Only {known:,} of the {images:,} images of the model's training split" if known is not None
                     and images else "Few of the images the model was trained on")
    return out


def cautions(image: Image.Image, card: dict | None = None) -> list[dict]:
    """The cues `image` shows that were rare in training (`rare_in_training`), each as {"code", "message"}, in `CUES`
    order; the message gives the card's count of training-split images with the cue."""
    return [{"code": code, "message": CUES[code][2].format(rare=rare)}
            for code, rare in rare_in_training(card).items() if CUES[code][0](image)]
