"""Acquisition-shift evaluation: the shifts do what their names say, and the shipped model is scored through them."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES, ISIC_FIXTURES, lesion_fixtures
from model.bundle import DEFAULT_BUNDLE, load_bundle
from model.inference import Predictor
from model.preprocessing import decode
from train.robustness import SHIFTS, evaluate_shifts, main, score_images


@pytest.fixture(scope="module")
def lesions() -> tuple[list[Image.Image], np.ndarray]:
    paths = lesion_fixtures("benign") + lesion_fixtures("malignant") + sorted((ISIC_FIXTURES / "cam").glob("*.jpg"))
    labels = np.array([0] * len(lesion_fixtures("benign")) + [1] * (len(paths) - len(lesion_fixtures("benign"))))
    return [decode(p.read_bytes()) for p in paths], labels


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(load_bundle(DEFAULT_BUNDLE))


def _mean(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float64).mean(axis=(0, 1))


def test_every_shift_keeps_size_and_mode_and_only_none_is_the_identity(lesions):
    img = lesions[0][0]
    for name, (description, shift) in SHIFTS.items():
        out = shift(img)
        assert out.size == img.size and out.mode == "RGB" and description
        same = np.array_equal(np.asarray(out), np.asarray(img))
        assert same == (name == "none"), name
        assert np.array_equal(np.asarray(shift(img)), np.asarray(out)), f"{name} is not deterministic"


def test_shifts_move_the_image_the_way_their_names_say(lesions):
    img = lesions[0][0]
    base = _mean(img)
    warm, cool = _mean(SHIFTS["warm_light"][1](img)), _mean(SHIFTS["cool_light"][1](img))
    assert warm[0] > base[0] and warm[2] < base[2] and cool[0] < base[0] and cool[2] > base[2]
    assert (_mean(SHIFTS["darker"][1](img)) < base - 20).all()
    ring = np.asarray(SHIFTS["dermoscope_ring"][1](img))
    assert ring[0, 0].max() == 0 and ring[-1, -1].max() == 0
    h, w = ring.shape[:2]
    assert np.array_equal(ring[h // 2, w // 2], np.asarray(img)[h // 2, w // 2])
    blurred = np.asarray(SHIFTS["blur"][1](img), np.float64)
    assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(np.asarray(img, np.float64), axis=1)).mean()


def test_shades_of_gray_makes_the_shipped_model_blind_to_a_colour_cast(predictor, lesions):
    """A camera's white balance multiplies the channels; colour constancy in the one path undoes that."""
    images, _ = lesions
    p, _ = score_images(predictor, images)
    for name in ("warm_light", "cool_light", "green_cast"):
        p_cast, _ = score_images(predictor, [SHIFTS[name][1](img) for img in images])
        assert np.abs(p_cast - p).max() < 0.05, name  # without it: 0.09-0.25 on these images


def test_evaluate_shifts_scores_the_same_images_against_the_unshifted_ones(predictor, lesions):
    images, y = lesions
    results = evaluate_shifts(predictor, images, y, ["none", "darker", "dermoscope_ring"], bootstrap=50)
    assert list(results) == ["none", "darker", "dermoscope_ring"]
    assert results["none"]["auc_change"] == 0.0 and results["none"]["verdicts_flipped"] == 0.0
    # the reference is what the serving path itself (Predictor.assess) answers for the images it does not refuse
    p, refused = score_images(predictor, images)
    served = predictor.assess(images)
    assert [bool(v.get("rejected")) for v in served] == refused.tolist()
    assert not refused.all()
    for v, pi in zip(served, p):
        if not v.get("rejected"):
            assert v["probability_malignant"] == pytest.approx(pi, abs=1e-6)
    pred = p >= predictor.threshold
    assert results["none"]["sensitivity"] == pytest.approx(pred[y == 1].mean())
    assert results["none"]["specificity"] == pytest.approx((~pred[y == 0]).mean())
    for m in results.values():
        assert 0.0 <= m["roc_auc"] <= 1.0 and 0.0 <= m["refused_by_gate"] <= 1.0
        lo, hi = m["auc_change_ci95"]
        assert lo <= hi
    assert results["dermoscope_ring"]["mean_abs_probability_change"] > 0.0


def test_an_unknown_shift_is_refused_with_a_sentence(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--model", str(DEFAULT_BUNDLE), "--data", str(FIXTURES), "--shifts", "none,fisheye"])
    assert info.value.code == 2
    assert "unknown shift fisheye" in capsys.readouterr().err


def test_command_writes_a_report_on_a_data_folder(tiny_data, tmp_path, capsys):
    out = tmp_path / "rob"
    report = main(["--model", str(DEFAULT_BUNDLE), "--data", str(tiny_data), "--split", "test",
                   "--shifts", "warm_light", "--bootstrap", "20", "--out", str(out)])
    assert list(report["results"][str(DEFAULT_BUNDLE)]) == ["none", "warm_light"]
    assert json.loads((out / "robustness.json").read_text())["n"] == report["n"] == 12
    assert (out / "robustness.png").stat().st_size > 0
    assert "warm_light" in capsys.readouterr().out
    # every image of the data with --split all: tiny_data's 24 + 12 + 12, none dropped
    report = main(["--model", str(DEFAULT_BUNDLE), "--data", str(tiny_data), "--split", "all",
                   "--shifts", "warm_light", "--bootstrap", "20", "--out", str(tmp_path / "rob_all")])
    assert (report["n"], report["duplicates_dropped"], report["split"]) == (
        len(list(tiny_data.rglob("*.png"))), 0, "all")
