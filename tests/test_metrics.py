import numpy as np

import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from train.metrics import (bootstrap_intervals, classification_metrics, diagnosis_breakdown, expected_calibration_error,
                           fit_temperature, fit_temperature_and_bias, format_diagnosis_table, paired_auc_interval,
                           roc_auc, threshold_for_sensitivity)


def test_temperature_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    true_logit = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.5, len(y))
    true_p = 1 / (1 + np.exp(-true_logit))
    y = (rng.uniform(size=len(y)) < true_p).astype(int)  # labels drawn from the true probabilities
    over = 1 / (1 + np.exp(-3 * true_logit))  # three times too sharp
    t = fit_temperature(np.stack([1 - over, over], 1), y)
    assert 2.5 < t < 3.5


def test_platt_scaling_recovers_a_shifted_model_that_a_temperature_cannot():
    """A network whose log-odds are twice too sharp and 1.5 too high: the temperature alone settles on a compromise,
    the temperature and bias recover both, and the calibration error falls accordingly."""
    rng = np.random.default_rng(0)
    true_logit = rng.normal(-1.0, 2.0, 8000)
    y = (rng.uniform(size=len(true_logit)) < 1 / (1 + np.exp(-true_logit))).astype(int)
    shifted = 1 / (1 + np.exp(-(2 * true_logit + 1.5)))
    probs = np.stack([1 - shifted, shifted], 1)
    t, b = fit_temperature_and_bias(probs, y)
    from model.inference import calibrated_malignant_probability
    # sigmoid(s / 2 - 0.75) is the true probability; the fit gives T 1.94 and b -0.78. The temperature check catches
    # a fit that leaves T at 1 or inverts it (0.5); it cannot tell the joint fit from a temperature-only one (2.06),
    # which is what the bias and the recovered probabilities are for (a bias of 0, or of the wrong sign, puts them
    # 0.18 or more off).
    assert abs(t - 2.0) < 0.1
    assert abs(b + 0.75) < 0.1
    true_p = 1 / (1 + np.exp(-true_logit))
    assert np.abs(calibrated_malignant_probability(probs, t, b) - true_p).max() < 0.03
    assert np.abs(calibrated_malignant_probability(probs, fit_temperature(probs, y)) - true_p).max() > 0.15
    ece_platt, _ = expected_calibration_error(calibrated_malignant_probability(probs, t, b), y)
    ece_temperature, _ = expected_calibration_error(
        calibrated_malignant_probability(probs, fit_temperature(probs, y)), y)
    assert ece_platt < 0.02 < ece_temperature


def test_threshold_is_the_kth_lowest_positive_with_k_from_n_plus_one():
    positives = np.linspace(0.01, 0.99, 30)
    p = np.concatenate([positives, [0.001, 0.5]])
    y = np.array([1] * 30 + [0, 0])
    assert threshold_for_sensitivity(p, y, 0.9) == positives[2]  # k = floor(0.1 * 31) = 3
    assert threshold_for_sensitivity(p, y, 0.8) == positives[5]  # k = floor(0.2 * 31) = 6
    # ten positives: k = floor(0.1 * 11) = 1, the lowest; five: no k fits, the lowest too
    assert threshold_for_sensitivity(p[20:], y[20:], 0.9) == positives[20]
    assert threshold_for_sensitivity(p[25:], y[25:], 0.9) == positives[25]
    # where n and n + 1 part: 19 positives give k = floor(0.1 * 20) = 2 (with n: 1), 29 give 3 (with n: 2)
    assert threshold_for_sensitivity(positives[:19], np.ones(19, int), 0.9) == positives[1]
    assert threshold_for_sensitivity(positives[:29], np.ones(29, int), 0.9) == positives[2]


def test_the_empirical_rule_takes_one_positive_more_than_the_unbiased_one_at_30():
    from train.thresholds import empirical_threshold

    positives = np.linspace(0.01, 0.99, 30)
    y = np.ones(30, dtype=int)
    assert empirical_threshold(positives, y, 0.9) == positives[3]  # keeps 27 of 30
    assert threshold_for_sensitivity(positives, y, 0.9) == positives[2]  # keeps 28 of 30


def test_threshold_gives_new_positives_the_target_sensitivity_on_average():
    """30 validation melanomas, as in ISIC 2017: the threshold fitted on them must hold for new melanomas.

    The true sensitivity of each fitted threshold is known here (scores are normal), so its mean over many
    validation draws is the sensitivity to expect on new data. The empirical rule (keep 90% of these 30)
    expects 27/31 = 0.871.
    """
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    y = np.array([1] * 30 + [0] * 120)
    true_sensitivity = []
    for _ in range(4000):
        scores = np.concatenate([rng.normal(1.0, 1.0, 30), rng.normal(-1.0, 1.0, 120)])
        true_sensitivity.append(norm.sf(threshold_for_sensitivity(scores, y, 0.9), loc=1.0))
    assert 0.898 < np.mean(true_sensitivity) < 0.910  # 28/31 = 0.903 expected


def test_ece_is_zero_for_perfect_calibration_and_large_for_bad():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    assert expected_calibration_error(p, y)[0] < 0.02
    assert expected_calibration_error(np.clip(p * 0.3, 0, 1), y)[0] > 0.2


def test_ece_weights_each_bin_by_its_share_of_the_images():
    # three images in the lowest bin (mean score 0.05, one malignant: 1/3), one in the highest (0.95, malignant)
    p, y = np.array([0.05, 0.05, 0.05, 0.95]), np.array([0, 0, 1, 1])
    ece, bins = expected_calibration_error(p, y)
    assert ece == pytest.approx(3 / 4 * (1 / 3 - 0.05) + 1 / 4 * 0.05)  # 0.225; an unweighted mean gives 0.167
    assert [b["count"] for b in bins] == [3, 1]


def test_classification_metrics_on_a_known_case():
    p = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.6])
    y = np.array([1, 1, 1, 0, 0, 0])
    m = classification_metrics(p, y, threshold=0.5, bootstrap=200)
    assert m["confusion_matrix"]["rows_true_cols_predicted"] == [[2, 1], [1, 2]]
    assert abs(m["sensitivity"] - 2 / 3) < 1e-9 and abs(m["specificity"] - 2 / 3) < 1e-9
    assert abs(m["roc_auc"] - 8 / 9) < 1e-9
    assert m["roc_auc_ci95"][0] <= m["roc_auc"] <= m["roc_auc_ci95"][1]
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))  # 0.2917
    assert m["accuracy"] == pytest.approx(4 / 6) and m["per_class"]["malignant"]["precision"] == pytest.approx(2 / 3)


def test_diagnosis_breakdown_scores_each_benign_diagnosis_against_the_malignant_images_alone():
    rng = np.random.default_rng(0)
    # melanomas high, keratoses well below them, naevi overlapping them: the naevi cost the ranking
    p = np.concatenate([rng.uniform(0.4, 1.0, 40), rng.uniform(0.0, 0.3, 30), rng.uniform(0.2, 0.8, 60)])
    y = np.array([1] * 40 + [0] * 90)
    dx = ["melanoma"] * 40 + ["seborrheic_keratosis"] * 30 + ["nevus"] * 60
    rows = {r["diagnosis"]: r for r in diagnosis_breakdown(p, y, dx, threshold=0.5, bootstrap=200)}
    assert [rows[d]["n"] for d in ("melanoma", "nevus", "seborrheic_keratosis")] == [40, 60, 30]
    assert rows["melanoma"]["label"] == "malignant" and "roc_auc_against_malignant" not in rows["melanoma"]
    assert rows["melanoma"]["flagged"] == pytest.approx((p[:40] >= 0.5).mean())  # its sensitivity
    assert rows["nevus"]["flagged"] == pytest.approx((p[70:] >= 0.5).mean())  # its false-positive rate
    assert rows["seborrheic_keratosis"]["roc_auc_against_malignant"] == 1.0
    nevus_auc = roc_auc_score(np.r_[np.ones(40), np.zeros(60)], np.r_[p[:40], p[70:]])
    assert rows["nevus"]["roc_auc_against_malignant"] == pytest.approx(nevus_auc) and nevus_auc < 0.95
    low, high = rows["nevus"]["roc_auc_against_malignant_ci95"]
    assert low < nevus_auc < high
    table = format_diagnosis_table(list(rows.values()), 0.5)
    assert "nevus" in table and f"{nevus_auc:.3f}" in table


def test_diagnosis_breakdown_marks_a_diagnosis_with_both_labels_and_needs_one_per_image():
    p, y = np.array([0.9, 0.1, 0.8, 0.2]), np.array([1, 0, 0, 1])
    rows = diagnosis_breakdown(p, y, ["a", "b", "a", "b"], threshold=0.5, bootstrap=10)
    assert [r["label"] for r in rows] == ["mixed", "mixed"]
    with pytest.raises(ValueError, match="one diagnosis per scored image"):
        diagnosis_breakdown(p, y, ["a", "b"], threshold=0.5)


def test_fast_auc_and_bootstrap_match_scikit_learn_ties_included():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    y = (rng.uniform(size=120) < 0.25).astype(int)
    p = np.round(rng.uniform(size=120) * 0.6 + 0.4 * y, 1)  # one decimal: many tied scores across the classes
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    # the intervals are those of the same resamples scored by scikit-learn
    intervals = bootstrap_intervals(p, y, threshold=0.5, n=200, seed=4)
    draws, samples = np.random.default_rng(4), {"roc_auc": [], "accuracy": [], "f1_malignant": []}
    for _ in range(200):
        idx = draws.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        pred = (p[idx] >= 0.5).astype(int)
        samples["roc_auc"].append(roc_auc_score(y[idx], p[idx]))
        samples["accuracy"].append((pred == y[idx]).mean())
        samples["f1_malignant"].append(f1_score(y[idx], pred, zero_division=0))
    for name, values in samples.items():
        np.testing.assert_allclose(intervals[name], np.percentile(values, [2.5, 97.5]), atol=1e-12)
    assert bootstrap_intervals(p, y, threshold=2.0, n=50)["f1_malignant"] == (0.0, 0.0)  # nothing flagged: F1 is 0


def test_the_paired_interval_is_that_of_the_same_resamples_scored_by_scikit_learn():
    rng = np.random.default_rng(5)
    y = np.array([1, 1] + [0] * 10)  # two melanomas in twelve: about one resample in eight has none, and is skipped
    ref = np.round(rng.uniform(size=12) * 0.8 + 0.2 * y, 1)  # ties across the classes
    p = np.round(rng.uniform(size=12) * 0.7 + 0.3 * y, 1)
    draws, plain, skipped = np.random.default_rng(7), [], 0
    for _ in range(300):
        idx = draws.integers(0, 12, 12)
        if y[idx].min() == y[idx].max():
            skipped += 1
            continue
        plain.append(roc_auc_score(y[idx], p[idx]) - roc_auc_score(y[idx], ref[idx]))  # candidate minus reference
    assert skipped > 10
    interval = paired_auc_interval(y, ref, p, n=300, seed=7)
    np.testing.assert_allclose(interval, np.percentile(plain, [2.5, 97.5]), atol=1e-12)
    assert interval[0] < interval[1]
    draws, pos, neg, stratified = np.random.default_rng(7), np.flatnonzero(y == 1), np.flatnonzero(y == 0), []
    for _ in range(300):  # stratified: each class drawn apart, so every resample keeps two melanomas and ten others
        idx = np.concatenate([draws.choice(pos, 2), draws.choice(neg, 10)])
        stratified.append(roc_auc_score(y[idx], p[idx]) - roc_auc_score(y[idx], ref[idx]))
    np.testing.assert_allclose(paired_auc_interval(y, ref, p, n=300, seed=7, stratified=True),
                               np.percentile(stratified, [2.5, 97.5]), atol=1e-12)
    assert paired_auc_interval(np.zeros(12), ref, p, n=20) == pytest.approx([np.nan, np.nan], nan_ok=True)
