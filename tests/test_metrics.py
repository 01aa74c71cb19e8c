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


def test_threshold_is_the_kth_lowest_positive_with_k_from_n_plus_one():
    positives = np.linspace(0.01, 0.99, 30)
    p = np.concatenate([positives, [0.001, 0.5]])
    y = np.array([1] * 30 + [0, 0])
    assert threshold_for_sensitivity(p, y, 0.9) == positives[2]  # k = floor(0.1 * 31) = 3
    assert threshold_for_sensitivity(p, y, 0.8) == positives[5]  # k = floor(0.2 * 31) = 6
    # ten positives: k = floor(0.1 * 11) = 1, the lowest; five: no k fits, the lowest too
    assert threshold_for_sensitivity(p[20:], y[20:], 0.9) == positives[20]
    assert threshold_for_sensitivity(p[25:], y[25:], 0.9) == positives[25]


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


def test_classification_metrics_on_a_known_case():
    p = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.6])
    y = np.array([1, 1, 1, 0, 0, 0])
    m = classification_metrics(p, y, threshold=0.5, bootstrap=200)
    assert m["confusion_matrix"]["rows_true_cols_predicted"] == [[2, 1], [1, 2]]
    assert abs(m["sensitivity"] - 2 / 3) < 1e-9 and abs(m["specificity"] - 2 / 3) < 1e-9
    assert abs(m["roc_auc"] - 8 / 9) < 1e-9
    assert m["roc_auc_ci95"][0] <= m["roc_auc"] <= m["roc_auc_ci95"][1]
