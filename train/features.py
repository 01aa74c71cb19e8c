"""Handcrafted features for the traditional baselines, from the same preprocessed input as the network.

- colour: HSV histograms, Lab moments, and colour variegation inside the lesion;
- texture: local binary patterns and grey-level co-occurrence statistics;
- shape: from an Otsu segmentation of the smoothed image's darkest component: area ratio, border
  irregularity, solidity, eccentricity, and asymmetry about the two principal axes (A, B, C of ABCD).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import color, feature, measure, transform

from model.cues import lesion_mask  # noqa: F401 (shared with the app's ink caution)

HSV_BINS = (16, 8, 8)
LBP_POINTS, LBP_RADIUS = 8, 1
GLCM_DISTANCES = (1, 3)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


def colour_features(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    hsv = color.rgb2hsv(rgb)
    hists = [np.histogram(hsv[..., c], bins=b, range=(0, 1))[0] / hsv[..., c].size for c, b in enumerate(HSV_BINS)]
    lab = color.rgb2lab(rgb)
    moments = []
    for region in (mask, ~mask):
        px = lab[region] if region.any() else lab.reshape(-1, 3)
        mean, std = px.mean(0), px.std(0)
        skew = ((px - mean) ** 3).mean(0) / np.maximum(std, 1e-6) ** 3
        moments += [mean, std, skew]
    inside = lab[mask] if mask.any() else lab.reshape(-1, 3)
    # variegation: spread of colours inside the lesion, and how many coarse colour cells they occupy
    cells = np.unique((inside // np.array([20.0, 15.0, 15.0])).astype(int), axis=0).shape[0]
    variegation = [np.linalg.norm(inside.std(0)), cells / 50.0]
    return np.concatenate(hists + moments + [np.asarray(variegation)])


def texture_features(rgb: np.ndarray) -> np.ndarray:
    grey = (color.rgb2gray(rgb) * 255).astype(np.uint8)
    lbp = feature.local_binary_pattern(grey, LBP_POINTS, LBP_RADIUS, method="uniform")
    lbp_hist = np.histogram(lbp, bins=LBP_POINTS + 2, range=(0, LBP_POINTS + 2))[0] / lbp.size
    glcm = feature.graycomatrix(grey // 8, distances=GLCM_DISTANCES, angles=(0, np.pi / 4, np.pi / 2, 3 * np.pi / 4),
                                levels=32, symmetric=True, normed=True)
    stats = [feature.graycoprops(glcm, prop).mean(axis=1) for prop in GLCM_PROPS]  # averaged over angles
    return np.concatenate([lbp_hist, np.concatenate(stats)])


def shape_features(mask: np.ndarray) -> np.ndarray:
    props = measure.regionprops(mask.astype(np.uint8))[0]
    area = props.area
    irregularity = props.perimeter ** 2 / (4 * np.pi * max(area, 1))
    # asymmetry: rotate so the major axis is horizontal, centre, flip about each axis, count non-overlap
    rotated = transform.rotate(mask.astype(float), -np.degrees(props.orientation) + 90, resize=True, order=0) > 0.5
    cy, cx = ndimage.center_of_mass(rotated)
    shifted = ndimage.shift(rotated.astype(float), (rotated.shape[0] / 2 - cy, rotated.shape[1] / 2 - cx), order=0) > 0.5
    total = max(shifted.sum(), 1)
    asym_major = np.logical_xor(shifted, shifted[::-1, :]).sum() / total
    asym_minor = np.logical_xor(shifted, shifted[:, ::-1]).sum() / total
    return np.array([area / mask.size, irregularity, props.solidity, props.eccentricity, asym_major, asym_minor])


def handcrafted(rgb: np.ndarray) -> np.ndarray:
    """All families for one uint8 RGB image: a fixed-length float vector."""
    rgb = rgb.astype(np.float64) / 255.0
    mask = lesion_mask(rgb)
    return np.concatenate([colour_features(rgb, mask), texture_features(rgb), shape_features(mask)]).astype(np.float64)


FAMILY_SIZES = {
    "colour": sum(HSV_BINS) + 18 + 2,
    "texture": LBP_POINTS + 2 + len(GLCM_PROPS) * len(GLCM_DISTANCES),
    "shape": 6,
}
