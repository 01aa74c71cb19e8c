"""Single turned views: the turn is training's resampling, and the shipped model is scored through it."""
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import lesion_fixtures
from model.architecture import CircleMask
from model.bundle import DEFAULT_BUNDLE, load_bundle
from model.inference import Predictor
from train import views
from train.metrics import paired_auc_interval


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor(load_bundle(DEFAULT_BUNDLE))


def test_turn_is_the_identity_at_0_a_grid_rotation_at_90_and_mirrors_the_corners_at_45():
    x = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3)).astype(np.uint8)
    np.testing.assert_allclose(views.turn(x, 0.0), x, atol=1e-3)
    quarter = views.turn(x, 90.0)
    assert any(np.allclose(quarter, np.rot90(x, k, axes=(1, 2)), atol=1e-3) for k in (1, 3))
    band = np.zeros((1, 33, 33, 3), np.uint8)
    band[:, 4:9, :] = 255  # a bright band near the top: turned 45 degrees, the top-left corner samples 6.6 rows
    turned = views.turn(band, 45.0)  # above the image, which the mirrored border brings back into the band
    assert band[0, 0, 0].max() == 0 and turned[0, 0, 0].min() > 200 and turned[0, 16, 16].max() < 1
    assert views.parse_view("45@0.925") == (45.0, 0.925, "") and views.parse_view(" 22.5 ") == (22.5, 1.0, "")
    assert views.parse_view("0:disc") == (0.0, 1.0, "disc") and views.parse_view("45@0.9:black") == (45.0, 0.9, "black")
    with pytest.raises(ValueError, match="zoom"):
        views.parse_view("45@0")
    with pytest.raises(ValueError, match="option"):
        views.parse_view("45:mirror")
    assert views.parse_view("0:shift4") == (0.0, 1.0, "shift4")
    for bad in ("0:shift", "0:shift0", "0:shift33", "0:shiftx"):
        with pytest.raises(ValueError, match="shift"):
            views.parse_view(bad)


def test_a_black_view_leaves_the_uncovered_corners_black_and_a_disc_view_blacks_out_the_outside_of_the_disc():
    x = np.full((1, 33, 33, 3), 200, np.uint8)
    mirrored, black = views.view_images(x, "45"), views.view_images(x, "45:black")
    assert mirrored[0, 0, 0].min() > 199 and black[0, 0, 0].max() == 0  # the corner the turn uncovers
    np.testing.assert_allclose(black[0, 16, 16], mirrored[0, 16, 16])  # the middle alike
    disc = views.view_images(x, "0:disc")
    assert disc[0, 0, 0].max() == 0 and disc[0, 0, 16].min() > 99 and disc[0, 16, 16].min() == 200
    np.testing.assert_allclose(disc, x * CircleMask.disc(33, 33))
    skin = np.full((1, 64, 64, 3), (180, 120, 100), np.uint8)
    skin[:, 28:36, 28:36] = 40  # a dark lesion in the middle, far from the disc's edge
    filled = views.view_images(skin, "0:discfill")
    np.testing.assert_allclose(filled[0, 0, 0], (180, 120, 100), atol=2)  # the corner painted in the skin's colour
    np.testing.assert_array_equal(filled[0, 28:36, 28:36], skin[0, 28:36, 28:36])  # the lesion left alone
    grid = np.random.default_rng(0).integers(0, 255, (1, 32, 32, 3)).astype(np.uint8)
    shifted = views.view_images(grid, "0:shift4")
    np.testing.assert_array_equal(shifted[0, 4:, 4:], grid[0, :-4, :-4])  # moved 4 right and 4 down
    np.testing.assert_array_equal(shifted[0, :4, 4:], grid[0, 4:0:-1, :-4])  # the uncovered rows mirrored
    half = views.view_images(grid, "0:half")
    np.testing.assert_allclose(half[0, 5, 7], grid[0, 4:6, 6:8].astype(np.float64).mean(axis=(0, 1)), atol=1e-4)
    np.testing.assert_allclose(half[0, 0, 0], grid[0, :2, :2].astype(np.float64).mean(axis=(0, 1)), atol=1e-4)  # mirrored
    rows = np.arange(32, dtype=np.float32)[:, None, None]  # stripes across the rows: a turn moves them, a turn back not
    stripes = np.broadcast_to(128 + 100 * np.sin(2 * np.pi * rows / 16), (32, 32, 3))[None]
    middle = (slice(8, 24), slice(8, 24))
    err_back = np.abs(views.view_images(stripes, "45:back")[0][middle] - stripes[0][middle]).mean()
    err_turned = np.abs(views.view_images(stripes, "45")[0][middle] - stripes[0][middle]).mean()
    assert 0 < err_back < 10 < 40 < err_turned  # upright again, smoothed by two resamplings


def test_a_zoomed_view_is_scored_on_the_zoomed_images(shipped, monkeypatch):
    x = np.stack([shipped.preprocess(p.read_bytes()) for p in lesion_fixtures("malignant")])
    y = np.array([True, False])  # labels only for the report's AUCs
    scored, log_odds = [], views.log_odds
    monkeypatch.setattr(views, "log_odds",
                        lambda predictor, images: scored.append(images) or log_odds(predictor, images))
    views.score_views(shipped, x, y, ["45@0.8"], bootstrap=10)
    assert len(scored) == 2  # the upright images, then the view's
    np.testing.assert_array_equal(scored[1], views.turn(x, 45.0, zoom=0.8))
    assert not np.allclose(scored[1], views.turn(x, 45.0), atol=1.0)


def test_views_score_the_shipped_model_as_its_predictor_does_on_the_turned_images(shipped):
    paths = lesion_fixtures("benign") + lesion_fixtures("malignant")
    y = np.array([0] * len(lesion_fixtures("benign")) + [1] * len(lesion_fixtures("malignant"))) == 1
    x = np.stack([shipped.preprocess(p.read_bytes()) for p in paths])
    report = views.score_views(shipped, x, y, ["0", "90", "45"], bootstrap=50)
    upright = shipped.probability(x)
    assert report["upright_auc"] == pytest.approx(skm.roc_auc_score(y, upright))
    assert report["views"]["0"]["roc_auc"] == pytest.approx(report["upright_auc"])
    assert report["views"]["0"]["auc_change_ci95"] == pytest.approx([0.0, 0.0], abs=1e-12)
    # a quarter turn of the pixel grid: the same scores as the predictor's own on the rotated uint8 images
    quarter = views.log_odds(shipped, views.turn(x, 90.0))
    rotated = [views.log_odds(shipped, np.ascontiguousarray(np.rot90(x, k, axes=(1, 2)))) for k in (1, 3)]
    assert any(np.allclose(quarter, r, atol=1e-3) for r in rotated)
    assert report["views"]["90"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y, quarter))
    turned = views.log_odds(shipped, views.turn(x, 45.0))
    assert not np.allclose(turned, views.log_odds(shipped, x), atol=1e-2)  # a 45-degree view is another view
    assert report["views"]["45"]["roc_auc_with_upright"] == pytest.approx(
        skm.roc_auc_score(y, (views.log_odds(shipped, x) + turned) / 2))


def test_a_views_interval_is_the_paired_bootstrap_of_its_change_from_the_upright_view(shipped):
    paths = lesion_fixtures("benign") + lesion_fixtures("malignant") + lesion_fixtures("cam")
    x = np.stack([shipped.preprocess(p.read_bytes()) for p in paths])
    # labels only for the AUCs: with the true ones every view ranks these eight perfectly and every change is 0; with
    # the four Grad-CAM melanomas labelled alternately, the upright and the 45-degree views rank them differently
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1]) == 1
    report = views.score_views(shipped, x, y, ["45"], bootstrap=200)["views"]["45"]
    upright, turned = views.log_odds(shipped, x), views.log_odds(shipped, views.turn(x, 45.0))
    change = skm.roc_auc_score(y, turned) - skm.roc_auc_score(y, upright)
    assert change != 0 and report["auc_change"] == pytest.approx(change)
    # the view minus the upright view, over the same 200 resamples of the images
    assert report["auc_change_ci95"] == pytest.approx(paired_auc_interval(y, upright, turned, n=200), abs=1e-9)
    low, high = report["auc_change_ci95"]
    assert low < high


def test_views_command_writes_its_report_and_refuses_a_bad_view(tiny_data, tmp_path, capsys):
    out = tmp_path / "views.json"
    report = views.main(["--model", str(DEFAULT_BUNDLE), "--data", str(tiny_data), "--split", "test",
                         "--views", "45,90@0.9", "--bootstrap", "20", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report)) and written["split"] == "test"
    result = written["results"][str(DEFAULT_BUNDLE)]
    assert result["images"] == 12 and set(result["views"]) == {"45", "90@0.9"}
    assert result["views"]["90@0.9"]["zoom"] == 0.9 and result["views"]["90@0.9"]["option"] == ""
    assert "upright AUC" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        views.main(["--model", str(DEFAULT_BUNDLE), "--data", str(tiny_data), "--views", "45@-1"])
    assert refused.value.code == 2 and "--views" in capsys.readouterr().err
    card = tmp_path / "copy.json"  # --out naming a bundle's card wrote the report over it: refused before any work
    card.write_text("{}")
    with pytest.raises(SystemExit) as refused:
        views.main(["--model", str(tmp_path / "copy.keras"), "--data", str(tiny_data), "--out", str(card)])
    assert refused.value.code == 2 and card.read_text() == "{}"
    assert f"--out {card} is a file of the bundle {tmp_path / 'copy.keras'}" in capsys.readouterr().err
