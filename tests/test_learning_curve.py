"""The learning-curve command: the fit, the extrapolation, and a sentence for bundles that cannot make a curve."""
import json

import numpy as np
import pytest

from scipy import stats

from train.learning_curve import fit_log2, images_for, images_interval, main


# (training images, test AUC): a rise of about 0.0125 per doubling that the scatter cannot tell from zero
NOT_CLEAR_OF_ZERO = [(500, 0.80), (500, 0.74), (1000, 0.75), (1000, 0.82), (2000, 0.80), (2000, 0.79)]


def _bundle(tmp_path, name, n, auc, data_hash="abc", test=True):
    card = {"data": {"train_images_used": n, "hash": "train-" + data_hash},
            "validation": {"roc_auc": auc + 0.05}}
    if test:
        card["test"] = {"roc_auc": auc, "roc_auc_ci95": [auc - 0.04, auc + 0.04], "data_hash": data_hash}
    model = tmp_path / name / "melanoma_efficientnet.keras"
    model.parent.mkdir()
    model.with_suffix(".json").write_text(json.dumps(card))
    return str(model)


def test_the_fit_recovers_a_line_in_log2_and_where_it_reaches_the_target():
    n = np.array([250, 500, 1000, 2000])
    fit = fit_log2(n, 0.70 + 0.03 * np.log2(n / 250))
    assert fit["slope_per_doubling"] == pytest.approx(0.03)
    assert fit["slope_se"] == pytest.approx(0.0, abs=1e-9)
    assert images_for(0.79, fit) == pytest.approx(250 * 2 ** 3)
    assert images_for(0.95, fit) > images_for(0.90, fit) > 2000
    assert images_for(0.95, {"intercept": 0.8, "slope_per_doubling": -0.01}) is None


def _band_contains(target, n, auc, sizes, level=0.95):
    """Whether the line's pointwise confidence band holds `target` at each size, from the least-squares
    coefficients' covariance matrix (not the centred formula the command solves)."""
    x = np.column_stack([np.ones(len(n)), np.log2(n)])
    coef, residual, *_ = np.linalg.lstsq(x, auc, rcond=None)
    dof = len(n) - 2
    cov = residual[0] / dof * np.linalg.inv(x.T @ x)
    at = np.column_stack([np.ones(len(sizes)), np.log2(sizes)])
    half = stats.t.ppf(0.5 + level / 2, dof) * np.sqrt(np.einsum("ij,jk,ik->i", at, cov, at))
    return np.abs(at @ coef - target) <= half


def test_the_interval_of_the_crossing_is_where_the_line_s_confidence_band_holds_the_target():
    rng = np.random.default_rng(0)
    n = np.repeat([400, 800, 1600], 3)
    auc = 0.74 + 0.045 * np.log2(n / 400) + rng.normal(0, 0.012, len(n))
    fit = fit_log2(n, auc)
    low, high = images_interval(0.90, fit)
    assert low < images_for(0.90, fit) < high
    sizes = np.geomspace(1000, 200_000, 20_000)
    inside = sizes[_band_contains(0.90, n, auc, sizes)]
    assert inside.min() == pytest.approx(low, rel=0.002) and inside.max() == pytest.approx(high, rel=0.002)
    # a higher level widens it on both sides
    wider = images_interval(0.90, fit, level=0.99)
    assert wider[0] < low and wider[1] > high


def test_a_slope_not_clear_of_zero_gives_no_upper_bound_and_an_exact_line_no_width():
    n, auc = (np.array(column) for column in zip(*NOT_CLEAR_OF_ZERO))
    low, high = images_interval(0.90, fit_log2(n, auc))
    assert high is None and low > 2000
    assert _band_contains(0.90, n, auc, np.array([1e9]))[0]
    exact = fit_log2(n, 0.70 + 0.02 * np.log2(n))
    assert images_interval(0.90, exact) == pytest.approx([2 ** 10, 2 ** 10])
    assert images_interval(0.90, fit_log2(np.array([500, 1000]), np.array([0.8, 0.82]))) is None  # no scatter to read


def test_the_command_reads_the_cards_and_reports_the_gain_per_doubling(tmp_path, capsys):
    models = [_bundle(tmp_path, "a", 500, 0.76), _bundle(tmp_path, "b", 1000, 0.80), _bundle(tmp_path, "c", 2000, 0.82),
              _bundle(tmp_path, "d", 2000, 0.84)]
    out = tmp_path / "curve"
    result = main([arg for m in models for arg in ("--model", m)] + ["--out", str(out)])
    # least squares over the 4 points at log2 sizes 0, 1, 2, 2 (from 500): Sxy 0.095, Sxx 2.75
    assert result["fit"]["slope_per_doubling"] == pytest.approx(0.095 / 2.75)
    assert result["mean_test_auc_by_size"] == {"500": 0.76, "1000": 0.80, "2000": pytest.approx(0.83)}
    assert [p["train_images"] for p in result["points"]] == [500, 1000, 2000, 2000]
    assert images_for(0.90, result["fit"]) == pytest.approx(result["images_for_target"])
    assert result["images_for_target"] == pytest.approx(8000)  # 0.90 is 4 doublings of 0.0345 above 500 images
    printed = capsys.readouterr().out
    assert "+0.035" in printed and "training images" in printed
    low, high = result["images_for_target_ci95"]
    assert f"95% interval {low:,.0f} to {high:,.0f}" in printed and low < 8000 < high
    assert json.loads((out / "learning_curve.json").read_text())["target_auc"] == 0.90
    assert (out / "learning_curve.png").stat().st_size > 1000


def test_a_curve_that_does_not_rise_reaches_no_size(tmp_path, capsys):
    models = [_bundle(tmp_path, "a", 500, 0.82), _bundle(tmp_path, "b", 2000, 0.80)]
    result = main(["--model", models[0], "--model", models[1], "--out", str(tmp_path / "curve")])
    assert result["images_for_target"] is None
    assert "no size: it does not rise" in capsys.readouterr().out


def test_a_curve_whose_slope_is_not_clear_of_zero_says_its_interval_has_no_upper_bound(tmp_path, capsys):
    models = [_bundle(tmp_path, f"m{i}", n, auc) for i, (n, auc) in enumerate(NOT_CLEAR_OF_ZERO)]
    out = tmp_path / "curve"
    result = main([arg for m in models for arg in ("--model", m)] + ["--out", str(out)])
    low, high = result["images_for_target_ci95"]
    assert high is None and 2000 < low < result["images_for_target"]
    assert f"95% interval from {low:,.0f} with no upper bound" in capsys.readouterr().out
    assert json.loads((out / "learning_curve.json").read_text())["images_for_target_ci95"] == [low, None]
    assert (out / "learning_curve.png").stat().st_size > 1000


@pytest.mark.parametrize("bundles, message", [
    ([("a", 1000, 0.8, "abc", True), ("b", 1000, 0.82, "abc", True)], "at least two sizes"),
    ([("a", 500, 0.8, "abc", True), ("b", 1000, 0.82, "xyz", True)], "tested on different data"),
    ([("a", 500, 0.8, "abc", True), ("b", 1000, 0.82, "abc", False)], "no test ROC AUC"),
])
def test_bundles_that_cannot_make_a_curve_get_a_sentence(tmp_path, capsys, bundles, message):
    models = [_bundle(tmp_path, *b) for b in bundles]
    with pytest.raises(SystemExit) as exit_info:
        main([arg for m in models for arg in ("--model", m)] + ["--out", str(tmp_path / "curve")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "curve").exists()


def test_a_missing_bundle_gets_a_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "nowhere.keras"), "--model", str(tmp_path / "b.keras")])
    assert exit_info.value.code == 2
    assert "nowhere" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_gets_a_sentence(tmp_path, capsys):
    """Checked after the curve, which reads cards only, so a failed curve leaves no folder behind (above)."""
    models = [_bundle(tmp_path, name, n, auc) for name, n, auc in (("a", 500, 0.78), ("b", 1000, 0.81))]
    (tmp_path / "a_file").write_text("a file, where the output's folder would be")
    with pytest.raises(SystemExit) as exit_info:
        main([arg for m in models for arg in ("--model", m)] + ["--out", str(tmp_path / "a_file" / "curve")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: cannot write --out {tmp_path / 'a_file' / 'curve'}: " in err and "Traceback" not in err
