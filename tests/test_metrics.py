import numpy as np

from train.metrics import classification_metrics, expected_calibration_error, fit_temperature, threshold_for_sensitivity


def test_temperature_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    true_logit = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.5, len(y))
    true_p = 1 / (1 + np.exp(-true_logit))
    y = (rng.uniform(size=len(y)) < true_p).astype(int)  # labels drawn from the true probabilities
    over = 1 / (1 + np.exp(-3 * true_logit))  # three times too sharp
    t = fit_temperature(np.stack([1 - over, over], 1), y)
    assert 2.5 < t < 3.5


def test_threshold_meets_the_target_sensitivity():
    p = np.array([0.05, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.1, 0.15])
    y = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    t = threshold_for_sensitivity(p, y, 0.9)
    assert t == 0.2 and (p[y == 1] >= t).mean() >= 0.9


def test_ece_is_zero_for_perfect_calibration_and_large_for_bad():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    assert expected_calibration_error(p, y)[0] < 0.02
    assert expected_calibration_error(np.clip(p * 0.3, 0, 1), y)[0] > 0.2


def test_classification_metrics_on_a_known_case():
    p = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.6])
    y = np.array([1, 1, 1, 0, 0, 0])
    m = classification_metrics(p, y, threshold=0.5, bootstrap=200)
    assert m["confusion_matrix"]["rows_true_cols_predicted"] == [[2, 1], [1, 2]]
    assert abs(m["sensitivity"] - 2 / 3) < 1e-9 and abs(m["specificity"] - 2 / 3) < 1e-9
    assert abs(m["roc_auc"] - 8 / 9) < 1e-9
    assert m["roc_auc_ci95"][0] <= m["roc_auc"] <= m["roc_auc_ci95"][1]
