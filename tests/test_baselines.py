"""The traditional baselines: handcrafted features and the baseline command on a tiny data folder."""
import json

import numpy as np
import pytest

from model.preprocessing import PreprocessSpec, preprocess
from tests.conftest import lesion_fixtures, synthetic_lesion
from train.features import FAMILY_SIZES, colour_features, handcrafted, lesion_mask, shape_features, texture_features


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_family_is_finite_and_fixed_length(seed):
    rgb = np.asarray(synthetic_lesion(96, seed=seed, dark=0.3 * seed), np.float64) / 255
    mask = lesion_mask(rgb)
    assert colour_features(rgb, mask).shape == (FAMILY_SIZES["colour"],)
    assert texture_features(rgb).shape == (FAMILY_SIZES["texture"],)
    assert shape_features(mask).shape == (FAMILY_SIZES["shape"],)
    f = handcrafted((rgb * 255).astype(np.uint8))
    assert f.shape == (sum(FAMILY_SIZES.values()),) and np.isfinite(f).all()


def test_blank_image_still_gives_finite_features():
    f = handcrafted(np.full((64, 64, 3), 180, np.uint8))
    assert np.isfinite(f).all()


def test_segmentation_finds_the_lesion_in_a_real_image():
    x = preprocess(lesion_fixtures("malignant")[0].read_bytes(), PreprocessSpec(256))
    mask = lesion_mask(x / 255.0)
    assert 0.02 < mask.mean() < 0.8
    cy, cx = np.argwhere(mask).mean(axis=0)
    assert 40 < cy < 216 and 40 < cx < 216  # the lesion sits near the centre, not in a dark corner


@pytest.mark.slow
def test_baseline_command_end_to_end(tiny_data, tmp_path):
    from train.baselines import main

    report = main(["--data", str(tiny_data), "--image-size", "64", "--out", str(tmp_path)])
    assert set(report["models"]) == {"svm_rbf", "knn", "random_forest"}
    saved = json.loads((tmp_path / "baselines.json").read_text())
    for m in saved["models"].values():
        assert 0.0 <= m["test"]["roc_auc"] <= 1.0 and len(m["test"]["roc_auc_ci95"]) == 2
        assert "accuracy_ci95" in m["test"]
    # the synthetic melanomas are darker blobs on the same skin: colour features must rank them, the right way up
    assert min(m["test"]["roc_auc"] for m in saved["models"].values()) > 0.8, saved["models"]
    assert (tmp_path / "comparison.png").stat().st_size > 10_000


def test_the_stack_gains_on_validation_only_where_the_second_score_knows_something_new():
    """`stack_cv_gain` scores every validation image by a fit on the other folds: a second score that carries signal
    the network's lacks must gain, one that is noise, or the network's own score again, must not."""
    from train.baselines import stack_cv_gain

    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.2
    a, b = rng.normal(size=400), rng.normal(size=400)  # two independent halves of the evidence
    network = a + 1.0 * y
    informative = stack_cv_gain(network, b + 1.0 * y, y.astype(int), repeats=3)
    noise = stack_cv_gain(network, rng.normal(size=400), y.astype(int), repeats=3)
    again = stack_cv_gain(network, network, y.astype(int), repeats=3)
    assert informative["mean"] > 0.05, informative
    assert noise["mean"] < 0.01 and abs(again["mean"]) < 0.01, (noise, again)
    assert informative["repeats"] == 3 and informative["folds"] == 5
