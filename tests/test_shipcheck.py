"""The ship rule: each condition passes and fails where it should, and the command says why."""
import json
import shutil

import numpy as np
import pytest

from conftest import ROOT
from train.metrics import paired_auc_difference
from train.shipcheck import Limits, check, format_table, main


def _card(val_auc=0.891, ece=0.036, test_auc=0.821, seconds=2167.5, data_hash="abc") -> dict:
    return {"validation": {"roc_auc": val_auc},
            "test": {"roc_auc": test_auc, "ece": ece, "data_hash": data_hash},
            "training": {"seconds": seconds}}


def _rows(blur=-0.029, ring_spec=0.40, ring_refused=0.41, spec=0.64) -> dict:
    def row(change, specificity, refused):
        return {"auc_change": change, "specificity": specificity, "refused_by_gate": refused}
    return {"none": row(0.0, spec, 0.015), "blur": row(blur, 0.52, 0.26),
            "dermoscope_ring": row(-0.02, ring_spec, ring_refused)}


def _failed(conditions) -> list[str]:
    return [c.name for c in conditions if not c.passed]


def test_a_candidate_as_good_everywhere_and_robust_to_the_ring_ships():
    conditions = check(_card(), _card(val_auc=0.889), _rows(), _rows(ring_spec=0.62, ring_refused=0.05))
    assert _failed(conditions) == []
    names = [c.name for c in conditions]
    assert names == ["validation AUC", "test ECE", "training minutes", "blur: AUC change",
                     "dermoscope_ring: AUC change", "dermoscope_ring: specificity lost",
                     "dermoscope_ring: refused by the gate"]


@pytest.mark.parametrize("candidate, rows, failing", [
    (_card(val_auc=0.885), {}, "validation AUC"),
    (_card(ece=0.052), {}, "test ECE"),
    (_card(seconds=61 * 60), {}, "training minutes"),
    (_card(), {"blur": -0.040}, "blur: AUC change"),
    (_card(), {"ring_spec": 0.58}, "dermoscope_ring: specificity lost"),
    (_card(), {"ring_refused": 0.10}, "dermoscope_ring: refused by the gate"),
])
def test_each_condition_fails_on_its_own(candidate, rows, failing):
    cand_rows = _rows(**{"ring_spec": 0.62, "ring_refused": 0.05, **rows})
    assert _failed(check(_card(), candidate, _rows(), cand_rows)) == [failing]


def test_a_held_shift_missing_from_the_report_fails_instead_of_being_skipped():
    rows = _rows(ring_spec=0.62, ring_refused=0.05)
    del rows["dermoscope_ring"]
    conditions = check(_card(), _card(), _rows(), rows)
    assert _failed(conditions) == ["dermoscope_ring: measured"]
    assert format_table(conditions).splitlines()[-1] == "does not ship: fails dermoscope_ring: measured"


@pytest.mark.parametrize("candidate, rows, passing", [
    # each limit inclusive where the rule says "at most" or "at least", each a hair beyond it failing
    (_card(val_auc=0.891 - 0.005), {}, True), (_card(val_auc=0.891 - 0.0051), {}, False),
    (_card(ece=0.05), {}, True), (_card(ece=0.0501), {}, False),
    (_card(seconds=60 * 60), {}, True), (_card(seconds=60 * 60 + 1), {}, False),
    (_card(), {"blur": -0.029 - 0.01}, True), (_card(), {"blur": -0.029 - 0.0101}, False),
    (_card(), {"ring_spec": 0.64 - 0.0499}, True), (_card(), {"ring_spec": 0.64 - 0.0501}, False),
    (_card(), {"ring_refused": 0.0999}, True), (_card(), {"ring_refused": 0.10}, False),
])
def test_each_limit_sits_where_the_rule_says(candidate, rows, passing):
    cand_rows = _rows(**{"ring_spec": 0.62, "ring_refused": 0.05, **rows})
    assert (_failed(check(_card(), candidate, _rows(), cand_rows)) == []) == passing


def test_the_specificity_lost_under_a_held_shift_may_equal_its_margin():
    """Exactly on the margin (binary fractions, so that no rounding decides): "at most" includes it."""
    limits = Limits(held_spec_margin=0.0625)
    cand_rows = _rows(spec=0.625, ring_spec=0.625 - 0.0625, ring_refused=0.05)
    assert _failed(check(_card(), _card(), _rows(), cand_rows, limits)) == []
    cand_rows = _rows(spec=0.625, ring_spec=0.625 - 0.0625 - 2 ** -20, ring_refused=0.05)
    assert _failed(check(_card(), _card(), _rows(), cand_rows, limits)) == ["dermoscope_ring: specificity lost"]


def test_the_baseline_itself_fails_the_ring_conditions_it_is_measured_against():
    assert _failed(check(_card(), _card(), _rows(), _rows())) == ["dermoscope_ring: specificity lost",
                                                                    "dermoscope_ring: refused by the gate"]


def test_the_test_auc_gain_is_checked_only_when_asked():
    limits = Limits(held_shifts=(), min_test_auc_gain=0.01)
    assert _failed(check(_card(), _card(test_auc=0.829), _rows(), _rows(), limits)) == ["test AUC"]
    assert _failed(check(_card(), _card(test_auc=0.832), _rows(), _rows(), limits)) == []
    assert "test AUC" not in [c.name for c in check(_card(), _card(), _rows(), _rows(), Limits(held_shifts=()))]


def test_cards_evaluated_on_different_data_are_not_compared():
    with pytest.raises(ValueError, match="different data"):
        check(_card(), _card(data_hash="other"), _rows(), _rows())
    trained = _card(data_hash=None)  # python -m train's own card: the run's data hash, none in its test section
    trained["data"] = {"hash": "abc"}
    assert check(_card(), trained, _rows(), _rows(), Limits(held_shifts=()))
    trained["data"] = {"hash": "other"}
    with pytest.raises(ValueError, match="different data"):
        check(_card(), trained, _rows(), _rows())


def _write_bundle(folder, name, card):
    (folder / f"{name}.keras").write_bytes(b"")
    (folder / f"{name}.json").write_text(json.dumps(card))
    return str(folder / f"{name}.keras")


def test_the_command_prints_the_verdict_writes_it_and_exits_by_it(tmp_path, capsys):
    base = _write_bundle(tmp_path, "base", _card())
    candidate = _card(ece=0.06)
    candidate["training"]["cpu"] = "Intel(R) Xeon(R) Processor"
    cand = _write_bundle(tmp_path, "cand", candidate)
    report = tmp_path / "robustness.json"
    report.write_text(json.dumps({"results": {base: _rows(), cand: _rows(ring_spec=0.62, ring_refused=0.05)}}))
    assert main(["--baseline", base, "--candidate", cand, "--robustness", str(report)]) == 1
    out = capsys.readouterr().out
    assert "does not ship: fails test ECE" in out
    assert "trained on: baseline not recorded; candidate Intel(R) Xeon(R) Processor" in out
    written = json.loads((tmp_path / "shipcheck.json").read_text())
    assert written["ships"] is False and written["limits"]["max_ece"] == 0.05
    assert written["trained_on"]["candidate"] == "Intel(R) Xeon(R) Processor"
    assert main(["--baseline", base, "--candidate", cand, "--robustness", str(report), "--max-ece", "0.07"]) == 0
    assert "ships: every condition passes" in capsys.readouterr().out


def test_every_limit_given_to_the_command_is_the_one_it_judges_by(tmp_path, capsys):
    card = _card()
    card["test"].update(sensitivity=0.93, specificity=0.41)
    base, cand = _write_bundle(tmp_path, "base", card), _write_bundle(tmp_path, "cand", card)
    rows = {base: _rows(), cand: _rows(ring_spec=0.62, ring_refused=0.05)}
    for model_rows in rows.values():  # --shift-rule level reads the AUC under each shift
        for row in model_rows.values():
            row["roc_auc"] = 0.821 + row["auc_change"]
    report = tmp_path / "robustness.json"
    report.write_text(json.dumps({"results": rows}))
    given = {"val_auc_margin": 0.011, "max_ece": 0.042, "max_train_minutes": 13.0, "shift_margin": 0.014,
             "held_spec_margin": 0.016, "held_max_refused": 0.17, "min_test_auc_gain": 0.018, "paired_margin": 0.019,
             "min_test_sensitivity": 0.85, "min_test_specificity": 0.3}
    argv = [f"--{name.replace('_', '-')}={value}" for name, value in given.items()]
    assert main(["--baseline", base, "--candidate", cand, "--robustness", str(report), *argv, "--shift-rule", "level",
                 "--held-shifts", "blur,dermoscope_ring"]) == 1
    written = json.loads((tmp_path / "shipcheck.json").read_text())
    assert {name: written["limits"][name] for name in given} == given
    assert written["limits"]["shift_rule"] == "level"
    assert written["limits"]["held_shifts"] == ["blur", "dermoscope_ring"]
    # and they are the limits the verdict used
    by_name = {c["name"]: c for c in written["conditions"]}
    assert by_name["validation AUC"]["limit"] == ">= 0.880" and by_name["test ECE"]["limit"] == "<= 0.042"
    assert by_name["training minutes"]["limit"] == "<= 13" and not by_name["training minutes"]["passed"]
    assert by_name["test AUC"]["limit"] == ">= 0.839" and not by_name["test AUC"]["passed"]
    assert by_name["test sensitivity at its threshold"]["limit"] == ">= 0.850"
    assert by_name["test specificity at its threshold"]["limit"] == ">= 0.300"
    assert by_name["blur: AUC under it"]["limit"] == ">= 0.778"  # level: the AUC under blur (0.792) less 0.014
    assert by_name["blur: specificity lost"]["limit"] == "<= 0.016"  # blur is held too
    assert by_name["dermoscope_ring: refused by the gate"]["limit"] == "< 0.170"


def test_the_command_explains_a_bundle_missing_from_the_report(tmp_path, capsys):
    base = _write_bundle(tmp_path, "base", _card())
    cand = _write_bundle(tmp_path, "cand", _card())
    report = tmp_path / "robustness.json"
    report.write_text(json.dumps({"results": {base: _rows()}}))
    assert main(["--baseline", base, "--candidate", cand, "--robustness", str(report)]) == 2
    err = capsys.readouterr().err
    assert "cand.keras is not in the robustness report" in err and "Traceback" not in err
    assert main(["--baseline", base, "--candidate", str(tmp_path / "nowhere.keras"),
                 "--robustness", str(report)]) == 2
    assert "cannot compare the bundles" in capsys.readouterr().err


def _scores(seed=0, n=150, n_malignant=30):
    rng = np.random.default_rng(seed)
    y = np.array([1] * n_malignant + [0] * (n - n_malignant))
    return y, rng.random(n)


def test_the_paired_auc_difference_of_a_model_with_itself_is_exactly_zero():
    y, p = _scores()
    paired = paired_auc_difference(p, p, y, n=200)
    assert paired["difference"] == 0.0 and paired["difference_ci95"] == [0.0, 0.0]
    assert (paired["n"], paired["n_malignant"]) == (150, 30)


def test_the_paired_interval_separates_a_clearly_better_model_and_is_seeded():
    y, noise = _scores()
    better = y + 0.8 * noise            # nearly every melanoma above every benign image
    paired = paired_auc_difference(noise, better, y, n=500)
    assert paired["baseline"] < 0.65 < 0.95 < paired["candidate"]
    low, high = paired["difference_ci95"]
    assert 0.0 < low < paired["difference"] < high
    swapped = paired_auc_difference(better, noise, y, n=500)
    assert swapped["difference_ci95"][1] < 0.0
    assert paired_auc_difference(noise, better, y, n=500) == paired
    assert paired_auc_difference(noise, better, y, n=500, seed=1) != paired


def test_the_paired_difference_needs_both_classes_and_the_same_images():
    y, p = _scores()
    with pytest.raises(ValueError, match="same images"):
        paired_auc_difference(p, p[:-1], y)
    with pytest.raises(ValueError, match="both benign and malignant"):
        paired_auc_difference(p, p, np.zeros_like(y))


def _paired(base, cand, low, high, n=150, n_malignant=30):
    return {"n": n, "n_malignant": n_malignant, "baseline": base, "candidate": cand, "difference": cand - base,
            "difference_ci95": [low, high]}


def test_paired_comparisons_replace_the_card_validation_condition_and_guard_the_test_split():
    robust = _rows(ring_spec=0.62, ring_refused=0.05)
    # a validation AUC 0.025 lower on the cards, not detectably lower image by image: passes
    paired = {"val": _paired(0.891, 0.866, -0.07, 0.02), "test": _paired(0.821, 0.830, -0.02, 0.04, 582, 114)}
    conditions = check(_card(), _card(val_auc=0.866), _rows(), robust, paired=paired)
    assert _failed(conditions) == []
    assert [c.name for c in conditions][:3] == ["validation AUC, paired", "test AUC, paired", "test ECE"]
    assert "95% interval [-0.070, +0.020], 150 images (30 malignant)" in conditions[0].detail
    # detectably worse on test: fails, whatever the cards say
    paired["test"] = _paired(0.821, 0.780, -0.07, -0.01, 582, 114)
    assert _failed(check(_card(), _card(), _rows(), robust, paired=paired)) == ["test AUC, paired"]
    assert _failed(check(_card(), _card(), _rows(), robust, Limits(paired_margin=0.02), paired)) == []


def test_the_command_scores_both_bundles_image_by_image_with_data(tmp_path, tiny_data, capsys):
    shipped = ROOT / "model" / "shipped"
    for role in ("base", "cand"):
        shutil.copytree(shipped, tmp_path / role)
    base, cand = (str(tmp_path / role / "melanoma_efficientnet.keras") for role in ("base", "cand"))
    report = tmp_path / "robustness.json"
    report.write_text(json.dumps({"results": {base: _rows(), cand: _rows(ring_spec=0.62, ring_refused=0.05)}}))
    assert main(["--baseline", base, "--candidate", cand, "--robustness", str(report),
                 "--data", str(tiny_data), "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "validation AUC, paired" in out and "test AUC, paired" in out
    assert "difference +0.000, 95% interval [+0.000, +0.000], 12 images (6 malignant)" in out
    written = json.loads((tmp_path / "shipcheck.json").read_text())
    assert written["paired"]["val"]["difference"] == 0.0 and written["paired"]["test"]["n"] == 12


def test_the_operating_point_is_checked_only_when_asked():
    def card(sens, spec):
        c = _card()
        c["test"].update(sensitivity=sens, specificity=spec)
        return c

    assert _failed(check(card(0.83, 0.64), card(0.80, 0.30), _rows(), _rows(), Limits(held_shifts=()))) == []
    limits = Limits(held_shifts=(), min_test_sensitivity=0.85, min_test_specificity=0.40)
    conditions = check(card(0.83, 0.64), card(0.93, 0.32), _rows(), _rows(), limits)
    assert _failed(conditions) == ["test specificity at its threshold"]
    assert [(c.name, c.baseline) for c in conditions[2:4]] == [("test sensitivity at its threshold", 0.83),
                                                              ("test specificity at its threshold", 0.64)]
    assert _failed(check(card(0.83, 0.64), card(0.84, 0.46), _rows(), _rows(), limits)) == [
        "test sensitivity at its threshold"]
    assert _failed(check(card(0.83, 0.64), card(0.93, 0.46), _rows(), _rows(), limits)) == []


def test_the_level_shift_rule_compares_the_auc_under_each_shift_not_the_loss_from_clean():
    def rows(clean, shifted):
        return {"none": {"roc_auc": clean, "auc_change": 0.0},
                "jpeg_q30": {"roc_auc": shifted, "auc_change": shifted - clean}}
    base = rows(0.823, 0.816)
    better_clean_same_shifted = rows(0.836, 0.816)   # loses 0.020 from its own clean AUC, the baseline 0.007
    worse_shifted = rows(0.836, 0.804)
    no_ring = Limits(held_shifts=())
    assert _failed(check(_card(), _card(), base, better_clean_same_shifted, no_ring)) == ["jpeg_q30: AUC change"]
    level = Limits(held_shifts=(), shift_rule="level")
    conditions = check(_card(), _card(), base, better_clean_same_shifted, level)
    assert _failed(conditions) == [] and [c.name for c in conditions][-1] == "jpeg_q30: AUC under it"
    assert conditions[-1].baseline == 0.816 and conditions[-1].limit == ">= 0.806"
    assert _failed(check(_card(), _card(), base, worse_shifted, level)) == ["jpeg_q30: AUC under it"]
    with pytest.raises(ValueError, match="shift_rule"):
        check(_card(), _card(), base, base, Limits(shift_rule="relative"))


def test_card_validation_aucs_on_different_validation_images_are_not_compared():
    moved = {**_card(), "data": {"val_from_train": 283}}
    with pytest.raises(ValueError, match="--data"):
        check(_card(), moved, _rows(), _rows(), Limits(held_shifts=()))
    paired = {"val": {"difference_ci95": [-0.03, 0.03], "difference": 0.0, "n": 150, "n_malignant": 30,
                      "baseline": 0.857, "candidate": 0.857}}
    assert _failed(check(_card(), moved, _rows(), _rows(), Limits(held_shifts=()), paired)) == []
