"""The training and evaluation commands end to end on a tiny synthetic data set (plumbing, not accuracy)."""
import argparse
import csv
import io
import json
import os
import re
import shlex

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from model.bundle import load_bundle
from train import bundlediff, evaluate as evaluate_cli
from train.gate import GATE_CANDIDATES, choose
from train.data import DataError
from train.augment import build_consistency_shift as build_shift
from train.losses import ConsistencyLoss, RankingLoss, training_loss
from train.optimizers import SharpnessAware, WarmupCosineDecay, fine_tune_optimizer
from train.train import (Lookahead, ValidationAUC, WeightAverage, code_version, early_stop_epoch, fit_stage,
                         main as train_main, make_dataset, make_soup, parse_args, stochastic_weight_average)

pytestmark = pytest.mark.slow

# Runs that test one option, not the default path (the `trained` fixture covers that): fine-tuning from block 6
# and a fixed gate layer spare each run tracing the whole backbone's backward pass and the gate's layer sweep.
OPTION_RUN = ["--unfreeze-from", "6", "--gate-layer", "block5c_add"]


@pytest.fixture(scope="module")
def trained(tiny_data, tiny_backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:  # what the command fed the network, for the augmentation test
        TRAINED_CALLS.update(datasets=_spy(mp, "make_dataset"), validations=_spy(mp, "ValidationAUC"))
        train_main(trained_command(tiny_data, tiny_backbone, out))
    return out


def trained_command(tiny_data, tiny_backbone, out) -> list[str]:
    return ["--data", str(tiny_data), "--weights", str(tiny_backbone), "--image-size", "64", "--batch-size", "8",
            "--head-epochs", "1", "--epochs", "2", "--warmup-epochs", "1", "--dense-units", "16",
            "--run-dir", str(out), "--output", str(out / "bundle" / "tiny.keras")]


TRAINED_CALLS = {}


# Options that do not exclude one another share one tiny run, so that each costs a test, not a training run
# (tests/conftest.py sends the tests of one shared run to one pytest-xdist worker). Each test still checks its own
# option, and the runs check that these options train together.
RANKING_RUN = ("--pooling", "gem", "--layer-decay", "0.7", "--auc-loss", "0.5", "--drop-connect", "0.4",
               "--malignant-share", "0.5", "--calibration", "platt", "--swa", "2", "--swa-lr", "1e-3")
FOCAL_RUN = ("--pooling", "attention", "--focal-gamma", "2", "--sam", "0.05", "--circle-mask", "--cutmix", "1.0",
             "--colour-jitter", "2", "--distortion", "0.7", "--noise-augment", "0.5", "--blur-augment", "0.5",
             "--blur-kinds", "motion, median", "--clahe", "0.7", "--lookahead", "2")
CONSISTENCY_RUN = ("--consistency", "12", "--ema", "0.9", "--epochs", "2")


@pytest.fixture(scope="module")
def ranking_run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ranking_run")
    return run_dir, _one_epoch_run(tiny_data, run_dir, *RANKING_RUN)


@pytest.fixture(scope="module")
def focal_run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("focal_run")
    with pytest.MonkeyPatch.context() as mp:
        spied = {"sam": _spy(mp, "SharpnessAware"), "datasets": _spy(mp, "make_dataset"),
                 "lookahead": _spy(mp, "Lookahead")}
        card = _one_epoch_run(tiny_data, run_dir, *FOCAL_RUN)
    return run_dir, card, spied


@pytest.fixture(scope="module")
def consistency_run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("consistency_run")
    with pytest.MonkeyPatch.context() as mp:
        spied = {"datasets": _spy(mp, "make_dataset"), "optimizers": _spy(mp, "fine_tune_optimizer")}
        card = _one_epoch_run(tiny_data, run_dir, *CONSISTENCY_RUN)
    return run_dir, card, spied


def test_code_version_is_the_commit_and_whether_tracked_files_changed(tmp_path):
    import subprocess

    assert code_version(tmp_path) is None  # not a checkout
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "a.py"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "a"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "b.py").write_text("untracked\n")  # untracked files are not the code that ran
    assert code_version(tmp_path) == {"commit": head, "modified": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) == {"commit": head, "modified": True}


def test_training_writes_a_complete_run_folder(trained):
    for name in ("args.json", "history.csv", "training_curves.png", "duplicates.json", "audit.json",
                 "melanoma_efficientnet.keras",
                 "melanoma_efficientnet.json", "test/metrics.json", "test/roc.png", "test/reliability.png",
                 "test/predictions.csv", "test/report.md"):
        assert (trained / name).exists(), name
    report = (trained / "test" / "report.md").read_text()  # the training command, the test metrics, in words
    (tn, fp), (fn, tp) = json.loads((trained / "test" / "metrics.json").read_text())["confusion_matrix"][
        "rows_true_cols_predicted"]
    assert f"{tp} of {tp + fn} melanomas flagged" in report and f"{tn} of {tn + fp} benign lesions cleared" in report
    assert "python -m train " in report and "--dense-units 16" in report and "](roc.png)" in report
    rows = list(csv.DictReader(open(trained / "history.csv")))
    assert [r["stage"] for r in rows] == ["head", "fine_tune", "fine_tune"]
    assert json.loads((trained / "args.json").read_text())["image_size"] == 64


def test_the_app_serves_the_bundle_the_training_command_wrote_as_training_scored_it(trained, tiny_data):
    """A developer's path: train on their own data, point the app at the bundle. The app must load it, judge an image
    as the training run's own test evaluation did (test/predictions.csv), and describe that bundle, not the shipped
    one."""
    from app import create_app

    card = json.loads((trained / "bundle" / "tiny.json").read_text())
    client = create_app({"TESTING": True, "MODEL_PATH": str(trained / "bundle" / "tiny.keras")}).test_client()
    assert client.get("/healthz").get_json()["version"] == card["version"]
    with open(trained / "test" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    files = [(row["image"].rsplit("/", 1)[-1], (tiny_data / row["image"]).read_bytes()) for row in rows]
    res = client.post("/api/v1/predict", content_type="multipart/form-data",
                      data={"image": [(io.BytesIO(data), name) for name, data in files]})
    assert res.status_code == 200
    judged = [p for p in res.get_json()["predictions"] if not p.get("rejected")]
    assert len(judged) >= len(rows) // 2, res.get_json()  # the gate passes most images like its training images
    scored = {row["image"].rsplit("/", 1)[-1]: float(row["probability_malignant"]) for row in rows}
    for p in judged:
        assert p["probability_malignant"] == pytest.approx(scored[p["filename"]], abs=2e-4), p["filename"]
        assert p["threshold"] == pytest.approx(card["threshold"])
    about = client.get("/about").get_data(as_text=True)
    assert f"of <code>{tiny_data.name}</code>" in about and "ISIC" not in about
    assert f"{card['test']['roc_auc']:.3f}" in about


def test_the_same_command_and_seed_train_the_same_bundle_bit_for_bit(trained, tiny_data, tiny_backbone, tmp_path):
    """TensorFlow's deterministic ops (`--deterministic`, on by default). Without them the augmentation's random
    draws, made by parallel threads, land on other batches from run to run: two such runs of this command differed
    in 50 of the network's 249 weight arrays."""
    again = tmp_path / "again"
    train_main(trained_command(tiny_data, tiny_backbone, again))
    first, second = (run / "bundle" / "tiny.keras" for run in (trained, again))
    result = bundlediff.compare(first, second)  # what `python -m train.bundlediff` prints
    assert result["identical"], "\n".join(bundlediff.describe(result))
    assert result["weights"]["arrays"] > 100 and result["gate"]["present"] is True
    card = json.loads(first.with_suffix(".json").read_text())
    assert card["training"]["arguments"]["deterministic"] is True
    # Two runs, compared as the same model: the fields that name the run differ and are left out of the comparison.
    # (Not `training.seconds`: rounded to 0.1 s, two runs of this tiny command once took the same time.)
    assert "training.arguments.run_dir" in result["card"]["run_fields_different"]


def test_model_card_is_complete(trained, tiny_data, tiny_backbone):
    card = load_bundle(trained / "bundle" / "tiny.keras").card
    assert card["class_names"] == ["benign", "malignant"]
    assert card["preprocessing"]["image_size"] == 64
    assert 0.0 < card["threshold"] < 1.0 and card["temperature"] > 0
    assert card["view_turns"] == [0.0] and card["training"]["arguments"]["view_turns"] == [0.0]  # upright by default
    assert len(card["data"]["hash"]) == 64
    assert card["data"]["shortcut_cues"]["dark_corners"]["train_images_with_cue"] == 0  # no ring in tiny_data
    assert card["data"]["shortcut_cues"]["skin_marker_ink"]["train_images_with_cue"] == 0  # nor ink
    # the command as it was given to the training command, not the command line of the process that called it
    assert card["training"]["command"] == "python -m train " + shlex.join(
        trained_command(tiny_data, tiny_backbone, trained))
    assert card["training"]["cpu"] and card["training"]["cpu"] != "unknown"  # training time is read against it
    assert card["training"]["cwd"] == os.getcwd()  # where its relative paths lead from
    assert card["training"]["code"] == code_version()  # the checkout's commit, or None outside one
    assert {"tensorflow", "keras", "numpy", "pillow"} <= set(card["libraries"])
    for key in ("roc_auc", "roc_auc_ci95", "sensitivity", "specificity", "ece", "brier", "accuracy", "macro"):
        assert key in card["test"], key


def _spy(monkeypatch, name: str) -> list[dict]:
    """Wrap train.train's `name` (a function or class the training command calls) so that each call's arguments,
    by parameter name, and its result are recorded; the real one still runs."""
    import inspect

    import train.train as train_mod

    real, calls = getattr(train_mod, name), []

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        try:
            bound = dict(inspect.signature(real).bind(*args, **kwargs).arguments)
        except TypeError:  # a class whose __init__ takes what its base's does
            bound = {"args": args, **kwargs}
        calls.append({**bound, "result": result})
        return result

    monkeypatch.setattr(train_mod, name, spy)
    return calls


def _split_images(tiny_data, split, predictor):
    paths = sorted((tiny_data / split).rglob("*.png"))
    y = np.array([p.parent.name == "malignant" for p in paths], int)
    return np.stack([predictor.preprocess(p.read_bytes()) for p in paths]), y


def test_operating_point_is_fitted_on_the_validation_scores(trained, tiny_data, tmp_path, capsys):
    """Worked out here from the network's validation scores, apart from the calibration code: the temperature
    minimises their negative log-likelihood within its bounds (0.05-20), and the threshold is the k-th lowest
    calibrated melanoma score, k = floor((1 - target) * (6 + 1)): the lowest of the six at training's 0.90, the
    third at 0.50 (set by python -m train.calibrate on a copy, so that "the lowest of all scores" cannot pass)."""
    from model.bundle import copy_bundle
    from model.inference import Predictor
    from train import calibrate

    copy = copy_bundle(trained / "bundle" / "tiny.keras", tmp_path / "copy" / "tiny.keras")
    calibrate.main(["--model", str(copy), "--data", str(tiny_data), "--target-sensitivity", "0.5"])
    for bundle, k in ((load_bundle(trained / "bundle" / "tiny.keras"), 1), (load_bundle(copy), 3)):
        card, predictor = bundle.card, Predictor(bundle)
        x, y = _split_images(tiny_data, "val", predictor)
        assert card["validation"]["n"] == len(y) == 12
        raw = predictor.raw_probabilities(x).astype(np.float64)
        log_odds = np.log(raw[:, 1] / raw[:, 0])
        assert log_odds.std() > 1e-4  # the scores spread out, so a wrong rule would show

        def nll(t):
            z = log_odds / t
            return float(np.mean(np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y)))

        t = card["temperature"]
        assert 0.05 <= t <= 20.0 + 1e-6
        # a minimum up to the optimiser's resolution (bounded Brent on log T, x tolerance 1e-5): at a bound the NLL
        # may still fall within that step of it
        resolution = abs(nll(t * np.exp(2e-5)) - nll(t * np.exp(-2e-5)))
        assert nll(t) <= min(nll(min(t * 1.1, 20.0)), nll(max(t / 1.1, 0.05))) + resolution + 1e-9
        calibrated = 1 / (1 + np.exp(-log_odds / t))
        assert card["threshold"] == pytest.approx(np.sort(calibrated[y == 1])[k - 1], abs=1e-4)


def test_the_gate_layer_is_chosen_by_the_rule_and_the_sweep_is_in_the_card(trained):
    gate = load_bundle(trained / "bundle" / "tiny.keras").card["gate"]
    rows = gate["selection"]["candidates"]
    assert [(r["layer"], r["percentile"]) for r in rows] == list(GATE_CANDIDATES)
    manifest = list(csv.DictReader(open(trained / "nonlesion_seed0" / "MANIFEST.csv")))
    assert gate["selection"]["nonlesion_images"] == len(manifest) >= 80
    assert all(0.0 <= r["val_lesions_refused"] <= 1.0 and 0.0 <= r["nonlesion_refused"] <= 1.0 for r in rows)
    # the synthetic flat images fail the quality gate whatever the layer
    assert min(r["nonlesion_refused"] for r in rows) > 0.1
    chosen = choose(rows)
    assert (gate["layer"], gate["percentile_of_training_images"]) == (chosen["layer"], chosen["percentile"])
    assert gate["bank_views"] == ["plain", "blur", "ring"]
    bank = np.load(trained / "melanoma_efficientnet.gate.npz")["features"]
    assert bank.shape[0] == 3 * gate["bank_images"] == 3 * 24  # tiny_data's 24 training images, in three views
    # the stored gate is the chosen candidate's, refitted through the serving runtime
    assert gate["distance_threshold"] == pytest.approx(chosen["distance_threshold"], rel=0.02)


def test_an_unknown_gate_layer_stops_training_before_it_starts(tiny_data, tmp_path, caplog):
    with pytest.raises(SystemExit) as info:
        train_main(["--data", str(tiny_data), "--weights", "none", "--image-size", "64", "--batch-size", "8",
                    "--gate-layer", "block9z_add", "--run-dir", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "--gate-layer block9z_add is not a layer of efficientnet_lite0" in caplog.text
    assert not (tmp_path / "run" / "history.csv").exists()


def test_training_that_diverges_stops_with_one_sentence_and_no_bundle(tiny_data, tmp_path, caplog):
    """At an absurd learning rate the weights became NaN in the first epoch; the validation AUC then failed inside
    scikit-learn ("Input contains NaN", a traceback). Now one sentence names the stage, epoch and the rate to lower."""
    with pytest.raises(SystemExit) as info:
        train_main(["--data", str(tiny_data), "--weights", "none", "--image-size", "64", "--batch-size", "8",
                    "--head-epochs", "1", "--epochs", "1", "--warmup-epochs", "0", "--dense-units", "16",
                    "--gate-layer", "block5c_add", "--head-lr", "1e30", "--run-dir", str(tmp_path / "run"),
                    "--output", str(tmp_path / "b" / "tiny.keras")])
    assert info.value.code == 2
    assert re.search(r"training diverged in head epoch 1: the network's scores on the validation images are not "
                     r"numbers \(loss (nan|inf)\)\. Lower the learning rate \(--head-lr\); no bundle was written\.",
                     caplog.text), caplog.text
    assert not (tmp_path / "b").exists() and not (tmp_path / "run" / "history.csv").exists()


def test_a_batch_larger_than_the_training_images_stops_training_before_it_starts(tiny_data, tmp_path, caplog):
    """Batches are whole, so a --batch-size above tiny_data's 24 training images made none: Keras warned that the
    input ran out of data, the epochs trained on nothing (loss 0, validation AUC 0.5), and a bundle was written."""
    with pytest.raises(SystemExit) as info:
        train_main(["--data", str(tiny_data), "--weights", "none", "--image-size", "64", "--batch-size", "25",
                    "--run-dir", str(tmp_path / "run"), "--output", str(tmp_path / "b" / "tiny.keras")])
    assert info.value.code == 2
    assert ("--batch-size 25 is more than the 24 training images: not one batch would be full, so nothing would "
            "train. Use a batch of at most 24.") in caplog.text
    assert not (tmp_path / "run" / "history.csv").exists() and not (tmp_path / "b").exists()


def test_images_that_would_not_fit_in_memory_are_refused_before_any_is_read(tiny_data):
    """Loading a split holds all its images at once: more than the memory here was numpy's MemoryError traceback
    (--image-size 100000 on 24 images, 671 GiB). A million images at 1024 px (3 TiB), one file named a million times."""
    from model.preprocessing import PreprocessSpec
    from train import data as data_mod

    path = next((tiny_data / "train" / "benign").iterdir())
    with pytest.raises(DataError, match=r"^1,000,000 images at 1024 x 1024 pixels take 2,929\.7 GiB of memory, more "
                                        r"than the [\d,.]+ GiB here: use a smaller input size \(--image-size\) or "
                                        r"fewer images$"):
        data_mod.load_images([path] * 1_000_000, PreprocessSpec(1024))
    assert data_mod.load_images([path] * 2, PreprocessSpec(64)).shape == (2, 64, 64, 3)


def test_evaluate_command_reproduces_the_card(trained, tiny_data, capsys):
    out = trained / "eval"
    metrics = evaluate_cli.main(["--model", str(trained / "bundle" / "tiny.keras"), "--data", str(tiny_data),
                                 "--out", str(out)])
    card = load_bundle(trained / "bundle" / "tiny.keras").card
    assert abs(metrics["roc_auc"] - card["test"]["roc_auc"]) < 1e-6
    assert metrics["confusion_matrix"] == card["test"]["confusion_matrix"]
    # and both are the serving path's scores of those images, worked out here
    from model.inference import Predictor

    predictor = Predictor(load_bundle(trained / "bundle" / "tiny.keras"))
    x, y = _split_images(tiny_data, "test", predictor)
    p = predictor.probability(x)
    assert p.std() > 1e-5
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert metrics["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-6)
    printed = capsys.readouterr().out
    assert "ROC AUC" in printed and "sensitivity" in printed
    for name in ("metrics.json", "roc.png", "pr.png", "confusion_matrix.png", "reliability.png", "report.md"):
        assert (out / name).exists()
    report = (out / "report.md").read_text()
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]["rows_true_cols_predicted"]
    assert f"ROC AUC {metrics['roc_auc']:.3f}" in report and f"{tp} of {tp + fn} melanomas flagged" in report
    assert f"python -m train.evaluate --model {trained / 'bundle' / 'tiny.keras'}" in report
    # one row per test image: its own file, label and serving score, flagged as the bundle's threshold says
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = sorted((tiny_data / "test").rglob("*.png"))
    assert sorted(r["image"] for r in rows) == sorted(str(q.relative_to(tiny_data)) for q in paths)
    served = dict(zip((str(q.relative_to(tiny_data)) for q in paths), p))
    for r in rows:
        assert r["label"] == (tiny_data / r["image"]).parent.name
        assert float(r["probability_malignant"]) == pytest.approx(served[r["image"]], abs=1e-6)
        assert r["flagged"] == str(int(float(r["probability_malignant"]) >= predictor.threshold))
    flagged = [r["flagged"] == "1" for r in rows if r["label"] == "malignant"]
    assert np.mean(flagged) == pytest.approx(metrics["sensitivity"])
    with open(trained / "test" / "predictions.csv", newline="") as f:  # what the training run wrote: the same rows
        at_training = {r["image"]: r for r in csv.DictReader(f)}
    assert at_training.keys() == {r["image"] for r in rows}
    for r in rows:
        assert (at_training[r["image"]]["label"], at_training[r["image"]]["flagged"]) == (r["label"], r["flagged"])
        assert float(at_training[r["image"]]["probability_malignant"]) == pytest.approx(
            float(r["probability_malignant"]), abs=1e-5)
    tta = evaluate_cli.main(["--model", str(trained / "bundle" / "tiny.keras"), "--data", str(tiny_data),
                             "--out", str(out / "tta"), "--tta", "4"])
    assert tta["tta_views"] == 4


def test_evaluate_breaks_the_results_down_by_shortcut_cue(trained, tiny_data, tmp_path, capsys):
    import shutil

    from PIL import Image, ImageDraw

    from train.augment import INK_RGB

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    inked = sorted((data / "test" / "benign").glob("*.png"))[:2]
    for path in inked:  # a surgeon's ink circle around two benign test lesions
        img = Image.open(path).convert("RGB")
        ImageDraw.Draw(img).ellipse([5, 5, 58, 58], outline=tuple(int(c) for c in INK_RGB), width=2)
        img.save(path)
    metrics = evaluate_cli.main(["--model", str(trained / "bundle" / "tiny.keras"), "--data", str(data),
                                 "--out", str(tmp_path / "eval"), "--by-cue"])
    ink = {row["diagnosis"]: row for row in metrics["by_cue"]["skin_marker_ink"]}
    assert {name: row["n"] for name, row in ink.items()} == {"benign, with cue": 2, "benign, without cue": 4,
                                                              "malignant, without cue": 6}
    assert {name: row["n"] for name, row in
            ((r["diagnosis"], r) for r in metrics["by_cue"]["dark_corners"])} == {"benign, without cue": 6,
                                                                                  "malignant, without cue": 6}
    # the share flagged among the inked images is that of their own predictions
    from model.inference import Predictor

    predictor = Predictor(load_bundle(trained / "bundle" / "tiny.keras"))
    expected = (evaluate_cli.predict_split(predictor, inked) >= metrics["threshold"]).mean()
    assert ink["benign, with cue"]["flagged"] == pytest.approx(expected)
    assert ink["malignant, without cue"]["flagged"] == pytest.approx(metrics["sensitivity"])
    assert "skin_marker_ink:" in capsys.readouterr().out
    report = (tmp_path / "eval" / "report.md").read_text()  # the same tables, in the report
    assert "## By cue: skin_marker_ink" in report and "## By cue: dark_corners" in report
    assert "benign, with cue         benign         2" in report


def test_evaluate_updates_the_card_only_for_the_bundles_own_test_split(trained, tiny_data, tmp_path, capsys):
    from model.bundle import copy_bundle, load_card

    bundle = copy_bundle(trained / "bundle" / "tiny.keras", tmp_path / "copy" / "tiny.keras")
    before = load_card(bundle)
    with pytest.raises(SystemExit) as refused:
        evaluate_cli.main(["--model", str(bundle), "--data", str(tiny_data), "--split", "val", "--tta", "4",
                           "--out", str(tmp_path / "val"), "--update-card"])
    assert refused.value.code == 2
    assert "--split is val, not test" in capsys.readouterr().err
    assert load_card(bundle) == before  # nothing written
    metrics = evaluate_cli.main(["--model", str(bundle), "--data", str(tiny_data), "--out", str(tmp_path / "test"),
                                 "--runtime", "tensorflow", "--update-card"])
    after = load_card(bundle)
    assert after["test"]["runtime"] == "tensorflow" and after["test"]["roc_auc"] == metrics["roc_auc"]
    assert after["test"]["evaluated_by"].startswith("python -m train.evaluate --model")
    assert {k: v for k, v in after.items() if k != "test"} == {k: v for k, v in before.items() if k != "test"}


def test_calibrate_refits_the_operating_point_the_way_training_did(trained, tiny_data, tmp_path, capsys):
    from model.bundle import copy_bundle, load_card
    from train import calibrate

    bundle = copy_bundle(trained / "bundle" / "tiny.keras", tmp_path / "a copy" / "tiny.keras")  # a space in it
    before = load_card(bundle)
    calibrate.main(["--model", str(bundle), "--data", str(tiny_data)])
    same = load_card(bundle)
    assert abs(same["temperature"] - before["temperature"]) < 1e-3
    assert abs(same["threshold"] - before["threshold"]) < 1e-4
    assert same["threshold_rule"] == before["threshold_rule"]
    # quoted, so that it can be pasted back into a shell (the path was written bare)
    assert shlex.split(same["calibration"]["command"]) == ["python", "-m", "train.calibrate", "--model", str(bundle),
                                                           "--data", str(tiny_data)]
    assert same["calibration"]["before"]["threshold"] == before["threshold"]
    assert f"Refresh the test metrics with python -m train.evaluate --model '{bundle}'" in capsys.readouterr().out
    # a lower target sensitivity moves the threshold up, and the band moves with it
    calibrate.main(["--model", str(bundle), "--data", str(tiny_data), "--target-sensitivity", "0.5"])
    lower = load_card(bundle)
    assert lower["threshold"] >= same["threshold"] and lower["target_sensitivity"] == 0.5
    assert lower["indeterminate_band"][0] <= lower["threshold"] <= lower["indeterminate_band"][1]
    assert load_bundle(bundle).model.count_params() == load_bundle(trained / "bundle" / "tiny.keras").model.count_params()


def test_calibrate_with_platt_scaling_writes_a_bias_the_predictor_serves(trained, tiny_data, tmp_path, capsys):
    from model.bundle import copy_bundle, load_card
    from model.inference import Predictor
    from train import calibrate

    bundle = copy_bundle(trained / "bundle" / "tiny.keras", tmp_path / "copy" / "tiny.keras")
    before = load_card(bundle)
    calibrate.main(["--model", str(bundle), "--data", str(tiny_data), "--calibration", "platt"])
    platt = load_card(bundle)
    assert platt["calibration_method"] == "platt" and platt["logit_bias"] != 0.0
    assert "--calibration platt" in platt["calibration"]["command"]
    # the bias is fitted with the temperature on val, and serving applies both: the predictor reproduces the card's
    # validation sensitivity at its threshold, and the ranking (AUC) is the temperature-only fit's (below)
    predictor = Predictor(load_bundle(bundle))
    assert predictor.logit_bias == platt["logit_bias"]
    x, y = _split_images(tiny_data, "val", predictor)
    p = predictor.probability(x)
    assert np.mean(p[y == 1] >= platt["threshold"]) == pytest.approx(platt["validation"]["sensitivity"])
    raw = predictor.raw_probabilities(x).astype(np.float64)  # served: sigmoid(log odds / T + bias), worked out here
    expected = 1 / (1 + np.exp(-(np.log(raw[:, 1] / raw[:, 0]) / platt["temperature"] + platt["logit_bias"])))
    np.testing.assert_allclose(p, expected, atol=1e-6)
    # back to a temperature alone: the bias goes back to 0, and the validation ranking is the one the bias had (both
    # fits score the same forward pass; the training-time card's came from another, which for this barely trained
    # network can differ in the last bit)
    calibrate.main(["--model", str(bundle), "--data", str(tiny_data), "--calibration", "temperature"])
    again = load_card(bundle)
    assert again["logit_bias"] == 0.0 and again["calibration"]["before"]["calibration_method"] == "platt"
    assert platt["validation"]["roc_auc"] == pytest.approx(again["validation"]["roc_auc"])
    assert abs(again["temperature"] - before["temperature"]) < 1e-3


def test_calibrate_with_view_turns_refits_on_the_views_the_predictor_then_serves(trained, tiny_data, tmp_path, capsys):
    from model.bundle import copy_bundle, load_card
    from model.inference import Predictor
    from train import calibrate

    bundle = copy_bundle(trained / "bundle" / "tiny.keras", tmp_path / "copy" / "tiny.keras")
    upright = Predictor(load_bundle(bundle))
    calibrate.main(["--model", str(bundle), "--data", str(tiny_data), "--view-turns", "0,45"])
    card = load_card(bundle)
    assert card["view_turns"] == [0.0, 45.0] and card["calibration"]["before"]["view_turns"] == [0.0]
    assert "views [0.0, 45.0]" in capsys.readouterr().out
    predictor = Predictor(load_bundle(bundle))
    assert predictor.turns == (0.0, 45.0)
    x, y = _split_images(tiny_data, "val", predictor)
    p = predictor.probability(x)
    assert np.mean(p[y == 1] >= card["threshold"]) == pytest.approx(card["validation"]["sensitivity"])
    # it serves the two views' mean log-probability, renormalised, each view scored on its own here
    views = [upright.raw_probabilities(x, turns=(t,)).astype(np.float64) for t in (0.0, 45.0)]
    assert np.abs(views[0] - views[1]).max() > 1e-3  # the turned view scores differently
    mean = np.exp((np.log(views[0]) + np.log(views[1])) / 2)
    np.testing.assert_allclose(predictor.raw_probabilities(x), mean / mean.sum(axis=1, keepdims=True), atol=1e-5)
    with pytest.raises(SystemExit) as refused:
        calibrate.main(["--model", str(bundle), "--data", str(tiny_data), "--view-turns", "0,45,45"])
    assert refused.value.code == 2 and "distinct" in capsys.readouterr().err
    assert load_card(bundle) == card


def test_calibrate_refuses_a_validation_split_without_melanomas(trained, tiny_data, tmp_path, capsys):
    import shutil

    from model.bundle import copy_bundle, load_card
    from train import calibrate

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for image in (data / "val" / "malignant").iterdir():
        image.rename(data / "train" / "malignant" / image.name)
    bundle = copy_bundle(trained / "bundle" / "tiny.keras", tmp_path / "copy" / "tiny.keras")
    before = load_card(bundle)
    for argv, message in ((["--data", str(data)], "needs images of both classes"),
                          (["--data", str(tiny_data), "--target-sensitivity", "1.5"], "between 0 and 1")):
        with pytest.raises(SystemExit) as refused:
            calibrate.main(["--model", str(bundle), *argv])
        assert refused.value.code == 2
        assert message in capsys.readouterr().err
    assert load_card(bundle) == before  # nothing written


def test_threshold_study_compares_both_rules_on_test(trained, tiny_data, tmp_path, capsys):
    from train import thresholds

    bundle = str(trained / "bundle" / "tiny.keras")
    result = thresholds.main(["--model", bundle, "--model", bundle, "--data", str(tiny_data),
                              "--out", str(tmp_path / "thr")])
    assert [r["model"] for r in result["rows"]] == [bundle, bundle]
    row = result["rows"][0]
    # six validation melanomas: the unbiased rule takes the lowest score, the empirical one the lowest too
    assert row["unbiased"]["threshold"] <= row["empirical"]["threshold"]
    assert abs(row["unbiased"]["threshold"] - load_bundle(bundle).card["threshold"]) < 1e-4
    assert result["summary"]["unbiased"]["bundles"] == 2
    assert json.loads((tmp_path / "thr" / "thresholds.json").read_text())["rows"] == result["rows"]
    assert "| **mean** |" in capsys.readouterr().out
    # at a target of 0.5 the rules part, each checked against the validation melanomas' scores sorted here: the
    # unbiased rule takes the 3rd lowest of six (k = floor(0.5 * 7)), the empirical one the 4th (keeps 3 of 6)
    from model.inference import Predictor

    half = thresholds.main(["--model", bundle, "--data", str(tiny_data), "--target-sensitivity", "0.5",
                            "--out", str(tmp_path / "thr_half")])["rows"][0]
    predictor = Predictor(load_bundle(bundle))
    x, y = _split_images(tiny_data, "val", predictor)
    melanomas = np.sort(predictor.probability(x)[y == 1])
    assert half["unbiased"]["threshold"] == pytest.approx(melanomas[2], abs=1e-5)
    assert half["empirical"]["threshold"] == pytest.approx(melanomas[3], abs=1e-5)


def test_ensemble_of_a_network_with_itself_reproduces_its_card(trained, tiny_data, capsys):
    from train import ensemble

    bundle = str(trained / "bundle" / "tiny.keras")
    metrics = ensemble.main(["--model", bundle, "--model", bundle, "--data", str(tiny_data),
                             "--out", str(trained / "ensemble")])
    card = load_bundle(bundle).card
    assert abs(metrics["roc_auc"] - card["test"]["roc_auc"]) < 1e-6
    assert abs(metrics["threshold"] - card["threshold"]) < 1e-4
    assert [m["roc_auc"] for m in metrics["members"]] == [metrics["members"][0]["roc_auc"]] * 2
    assert "ensemble of 2 on test" in capsys.readouterr().out


def test_auxiliary_diagnosis_head_trains_and_the_bundle_keeps_the_two_way_head(tiny_data, tmp_path, monkeypatch):
    datasets = _spy(monkeypatch, "make_dataset")
    rows = ["image_id,diagnosis"]
    for i, path in enumerate(sorted((tiny_data / "train").glob("*/*.png"))):
        rows.append(f"{path.stem},{'melanoma' if path.parent.name == 'malignant' else ('nevus', 'keratosis')[i % 2]}")
    (tmp_path / "diagnosis.csv").write_text("\n".join(rows) + "\n")
    train_main([
        "--data", str(tiny_data), "--weights", "none", "--image-size", "64", "--batch-size", "8",
        "--head-epochs", "1", "--epochs", "1", "--warmup-epochs", "0", "--dense-units", "16",
        "--aux-diagnosis", str(tmp_path / "diagnosis.csv"), "--run-dir", str(tmp_path / "run"), *OPTION_RUN,
    ])
    bundle = load_bundle(tmp_path / "run" / "melanoma_efficientnet.keras")
    assert len(bundle.model.outputs) == 1 and bundle.model.output_shape == (None, 2)
    assert "aux_diagnosis" not in [layer.name for layer in bundle.model.layers]
    assert bundle.card["training"]["arguments"]["aux_diagnosis"].endswith("diagnosis.csv")
    history = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert len(history) == 2 and all(r["val_auc"] and r["auc"] for r in history)
    # the training batches carried the diagnoses (three: melanoma, nevus, keratosis) as the second target
    assert datasets and all(call["y_aux"] is not None and call["y_aux"].shape == (24, 3) for call in datasets)
    assert len(next(iter(datasets[0]["result"]))[1]) == 2


def test_auxiliary_diagnosis_csv_must_cover_the_training_images(tiny_data, tmp_path, caplog):
    (tmp_path / "diagnosis.csv").write_text("image_id,diagnosis\nimg_000,nevus\n")
    with pytest.raises(SystemExit):
        train_main(["--data", str(tiny_data), "--weights", "none", "--image-size", "64", "--batch-size", "8",
                    "--head-epochs", "1", "--epochs", "0", "--aux-diagnosis", str(tmp_path / "diagnosis.csv"),
                    "--run-dir", str(tmp_path / "run")])
    assert "training images have no diagnosis" in caplog.text


def test_augmentation_is_on_the_training_path_only(trained, tiny_data):
    """What the training command itself feeds the network: training batches augmented (no batch image is any
    training image as loaded), validation images exactly as the one preprocessing path loads them."""
    from model.preprocessing import PreprocessSpec
    from train.data import load_images

    datasets, validations = TRAINED_CALLS["datasets"], TRAINED_CALLS["validations"]
    assert datasets and validations
    loaded, batch = datasets[0]["x"], next(iter(datasets[0]["result"]))[0].numpy()
    assert batch.shape == (8, 64, 64, 3)
    for image in batch:
        assert not any(np.array_equal(image, original.astype(np.float32)) for original in loaded)
    spec = PreprocessSpec.from_dict(load_bundle(trained / "bundle" / "tiny.keras").card["preprocessing"])
    expected = load_images(sorted((tiny_data / "val").rglob("*.png")), spec)
    for x_val in (call["x_val"] for call in validations):  # the same arrays, in any order
        assert x_val.shape == expected.shape and x_val.dtype == expected.dtype
        assert sorted(v.tobytes() for v in x_val) == sorted(e.tobytes() for e in expected)


def test_weights_out_of_reach_stop_training_with_a_sentence_before_the_data_is_read(keras_offline, tmp_path, caplog):
    missing = tmp_path / "no_such_data"  # read first, this would stop training with its own sentence
    for weights, sentence in (("imagenet", "EfficientNetB0's ImageNet weights are not in Keras' cache"),
                              (str(tmp_path / "b0.h5"), "Weights file not found")):
        with pytest.raises(SystemExit) as info:
            train_main(["--data", str(missing), "--backbone", "efficientnet_b0", "--weights", weights,
                        "--run-dir", str(tmp_path / "run")])
        assert info.value.code == 2 and sentence in caplog.text
        assert "The data path does not exist" not in caplog.text and not (tmp_path / "run").exists()


def test_a_data_mistake_leaves_an_earlier_run_in_the_run_folder_as_it_was(tmp_path, caplog, tiny_data, monkeypatch):
    """`python -m train --run-dir runs/x` with a mistyped --data replaced runs/x's args.json and deleted its
    history.csv before it found the mistake: the earlier run's record lost. So did a mistake found once the data was
    read (a batch larger than the training split): the folder is written when only training is left to fail."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "args.json").write_text('{"seed": 2}\n')
    (run / "history.csv").write_text("epoch,loss\n1,0.5\n")
    (tmp_path / "empty").mkdir()
    for data in ("no_data", "empty"):
        with pytest.raises(SystemExit) as info:
            train_main(["--data", str(tmp_path / data), "--weights", "none", "--run-dir", str(run)])
        assert info.value.code == 2
        assert (run / "args.json").read_text() == '{"seed": 2}\n'
        assert (run / "history.csv").read_text() == "epoch,loss\n1,0.5\n" and sorted(p.name for p in run.iterdir()) == [
            "args.json", "history.csv"]
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(SystemExit):
        train_main(["--data", str(tmp_path / "empty"), "--weights", "none", "--run-dir", str(tmp_path / "fresh")])
    assert not (tmp_path / "fresh").exists()  # no empty run folder left for a mistake
    warning = f"--run-dir {run} holds an earlier run: this one replaces its files as it writes them"
    # the data found, a later mistake
    for mistake in (["--batch-size", "25"], ["--batch-size", "8", "--gate-layer", "block9z_add"]):
        with pytest.raises(SystemExit) as info:
            train_main(["--data", str(tiny_data), "--weights", "none", "--image-size", "64", *mistake,
                        "--run-dir", str(run)])
        assert info.value.code == 2
        assert (run / "args.json").read_text() == '{"seed": 2}\n' and sorted(p.name for p in run.iterdir()) == [
            "args.json", "history.csv"]
    assert warning not in caplog.text

    def stopped(*args, **kwargs):  # Ctrl-C
        raise KeyboardInterrupt
    monkeypatch.setattr("train.data.load_images", stopped)  # while it reads the images: nothing written, said so
    with pytest.raises(SystemExit) as info:
        train_main(["--data", str(tiny_data), "--weights", "none", "--image-size", "64", "--batch-size", "8",
                    "--seed", "5", "--run-dir", str(run)])
    assert info.value.code == 130 and "stopped (Ctrl-C) before training began: nothing was written." in caplog.text
    assert (run / "args.json").read_text() == '{"seed": 2}\n' and warning not in caplog.text
    monkeypatch.undo()
    monkeypatch.setattr("train.train.fit_stage", stopped)  # at the first epoch: the folder is this run's, said so
    with pytest.raises(SystemExit) as info:
        train_main(["--data", str(tiny_data), "--weights", "none", "--image-size", "64", "--batch-size", "8",
                    "--seed", "5", "--run-dir", str(run)])
    assert info.value.code == 130 and warning in caplog.text
    assert f"the run folder {run} keeps the arguments" in caplog.text
    assert json.loads((run / "args.json").read_text())["seed"] == 5 and not (run / "history.csv").exists()
    assert {"duplicates.json", "audit.json"} <= {p.name for p in run.iterdir()}


def test_bad_data_folder_exits_with_a_message(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        train_main(["--data", str(tmp_path / "empty"), "--weights", "none", "--run-dir", str(tmp_path / "run")])
    assert info.value.code == 2
    assert f"The data folder is empty: {tmp_path / 'empty'}" in caplog.text


def test_a_training_stage_gives_no_warning_a_person_sees(tmp_path):
    """Keras warned at each stage of every run that `shuffle=True` would be ignored for a tf.data dataset (the
    training batches shuffle themselves): a warning about nothing, in every training log. (Python shows a person
    UserWarnings; it hides a library's DeprecationWarnings, such as numpy's in Keras's checkpoint saving.)"""
    import warnings

    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    ds = tf.data.Dataset.from_tensor_slices((x, keras.utils.to_categorical(y, 2))).batch(8)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    args = argparse.Namespace(label_smoothing=0.0, patience=5, aux_weight=0.5, batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)  # pytest.ini ignores Keras's UserWarnings
        fit_stage(model, ds, x, y, "fine_tune", 1, keras.optimizers.Adam(0.01), args, tmp_path)
    assert [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, UserWarning)] == []


def test_weight_averaging_checkpoints_the_averaged_weights(tmp_path):
    """With --ema the checkpoint (and so the bundle) holds the moving average, not the last step's weights."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    ds = tf.data.Dataset.from_tensor_slices((x, keras.utils.to_categorical(y, 2))).batch(8)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    start = [w.copy() for w in model.get_weights()]
    args = argparse.Namespace(label_smoothing=0.0, patience=5, aux_weight=0.5, batch_size=8)
    optimizer = keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.999999)
    history = fit_stage(model, ds, x, y, "fine_tune", 3, optimizer, args, tmp_path).history

    averaged = keras.models.clone_model(model)
    averaged.load_weights(tmp_path / "best.weights.h5")
    # 24 steps at a learning rate of 0.1 move the raw weights far (the training loss falls); a momentum of
    # 0.999999 keeps the average, which validation and the checkpoint see, where it started.
    assert history["loss"][-1] < history["loss"][0] - 0.1
    assert len(set(history["val_auc"])) == 1
    # Keras starts the average at the weights after the first step, and Adam's first step moves each by the rate.
    np.testing.assert_allclose(averaged.get_weights()[0], start[0], atol=0.1 + 1e-3)


def test_weight_average_is_the_mean_of_the_epochs_weights_and_keeps_equal_weights_bit_for_bit():
    frozen = keras.layers.Dense(1, trainable=False)  # a weight no epoch moves, as the frozen backbone's
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), frozen])
    average = WeightAverage()
    average.set_model(model)
    rng = np.random.default_rng(0)
    epochs = []
    for epoch in range(3):
        weights = model.get_weights()
        weights[:2] = [rng.normal(size=w.shape).astype(np.float32) for w in weights[:2]]
        model.set_weights(weights)
        epochs.append(weights)
        average.on_epoch_end(epoch)
    averaged = average.averaged(model.get_weights())
    assert average.count == 3 and all(w.dtype == np.float32 for w in averaged)
    for i in range(2):
        np.testing.assert_allclose(averaged[i], np.mean([e[i] for e in epochs], axis=0), rtol=1e-6)
    for i in range(2, 4):
        np.testing.assert_array_equal(averaged[i], epochs[0][i])


def test_lookahead_through_fit_moves_the_slow_weights_halfway_every_k_steps_and_at_the_epoch_end():
    """Five batches with a sync every 2 steps: after steps 2 and 4 and at the epoch's end (one step pending), each
    time the slow weights halfway to the fast ones and the fast ones reset to them; the frozen layer untouched."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 3)).astype(np.float32), rng.normal(size=(10, 1)).astype(np.float32)

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1, trainable=False)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return model

    fitted, manual = build(), build()
    frozen = fitted.layers[1].get_weights()
    lookahead = Lookahead(steps=2, alpha=0.5)
    fitted.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[lookahead])
    slow = [w.copy() for w in manual.layers[0].get_weights()]
    for step in range(5):
        manual.train_on_batch(x[2 * step:2 * step + 2], y[2 * step:2 * step + 2])
        if step in (1, 3, 4):
            slow = [s + 0.5 * (f - s) for s, f in zip(slow, manual.layers[0].get_weights())]
            manual.layers[0].set_weights(slow)
    assert not np.allclose(slow[0], build().layers[0].get_weights()[0])  # the steps moved the weights
    for a, b in zip(fitted.layers[0].get_weights(), slow):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(fitted.layers[1].get_weights(), frozen):
        np.testing.assert_array_equal(a, b)
    assert lookahead.since_sync == 0


def _swa_case(tmp_path, start_scale: float, train_labels_flipped: bool):
    """A linear softmax model started at weights that rank the validation images perfectly times `start_scale`,
    averaged over three epochs at rate 0.5 on those images, their labels flipped or not."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    targets = keras.utils.to_categorical(1 - y if train_labels_flipped else y, 2)
    ds = tf.data.Dataset.from_tensor_slices((x, targets)).shuffle(64, seed=0).batch(8)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.set_weights([np.array([[-1.0, 1.0], [0.0, 0.0]], np.float32) * start_scale, np.zeros(2, np.float32)])
    start = model.get_weights()
    args = parse_args(["--data", str(tmp_path), "--swa", "3", "--swa-lr", "0.5", "--label-smoothing", "0",
                       "--weight-decay", "0"])
    swa = stochastic_weight_average(model, ds, x, y, args, tmp_path, first_epoch=5)
    return model, start, swa, x, y


def test_swa_keeps_the_average_when_validation_does_not_get_worse(tmp_path):
    model, start, swa, x, y = _swa_case(tmp_path, -1.0, train_labels_flipped=False)  # starts ranking backwards
    assert swa["val_auc_fine_tuned"] == 0.0 and swa["used"] == "average"
    assert swa["epochs"] == 3 and len(swa["val_auc_epochs"]) == 3 and swa["learning_rate"] == 0.5
    assert swa["val_auc_average"] == pytest.approx(roc_auc_score(y, model(x).numpy()[:, 1]), abs=1e-9)
    assert swa["val_auc_average"] > 0.9
    kept = keras.models.clone_model(model)
    kept.load_weights(tmp_path / "best.weights.h5")
    for a, b in zip(kept.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [(r["stage"], r["epoch"]) for r in rows] == [("swa", "6"), ("swa", "7"), ("swa", "8")]
    assert not (tmp_path / "swa_best_epoch.weights.h5").exists()


def test_swa_falls_back_to_the_fine_tuned_weights_when_averaging_hurts(tmp_path):
    model, start, swa, x, y = _swa_case(tmp_path, 1.0, train_labels_flipped=True)  # trained to rank backwards
    assert swa["val_auc_fine_tuned"] == 1.0 and swa["val_auc_average"] < 0.5 and swa["used"] == "fine-tuned"
    for a, b in zip(model.get_weights(), start):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "best.weights.h5").exists()


def test_early_stopping_waits_for_the_second_half_of_the_schedule(tmp_path):
    """A flat validation AUC with patience 1 stops after 2 epochs, or, from epoch 3 on, after 5."""
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    ds = tf.data.Dataset.from_tensor_slices((x, keras.utils.to_categorical(y, 2))).batch(8)
    args = argparse.Namespace(label_smoothing=0.0, patience=1, aux_weight=0.5, batch_size=8)
    epochs_run = []
    for start in (0, 3):
        (tmp_path / str(start)).mkdir()
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        history = fit_stage(model, ds, x, y, "fine_tune", 8, keras.optimizers.Adam(0.0), args, tmp_path / str(start),
                            early_stop_from=start).history
        assert len(set(history["val_auc"])) == 1
        epochs_run.append(len(history["val_auc"]))
    assert epochs_run == [2, 5]
    # the defaults: 2 head epochs, 2 warm-up epochs, then half of the remaining 28 of 30 fine-tuning epochs
    defaults = argparse.Namespace(head_epochs=2, warmup_epochs=2, epochs=30)
    assert early_stop_epoch(defaults) == 18


@pytest.mark.parametrize("warmup_steps", [0, 10])
def test_the_schedule_read_once_per_step_trains_exactly_as_keras_cosine_decay(warmup_steps):
    def trained_weights(schedule_class):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(2, activation="softmax")])
        schedule = schedule_class(initial_learning_rate=1e-4, decay_steps=20, warmup_target=1e-2,
                                  warmup_steps=warmup_steps, alpha=0.01)
        model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.5), loss="categorical_crossentropy")
        x = np.random.default_rng(1).normal(size=(64, 8)).astype("float32")
        model.fit(x, np.eye(2)[np.arange(64) % 2], batch_size=8, epochs=4, verbose=0, shuffle=False)
        return model.get_weights(), schedule

    ours, schedule = trained_weights(WarmupCosineDecay)
    keras_own, keras_schedule = trained_weights(keras.optimizers.schedules.CosineDecay)
    for a, b in zip(ours, keras_own):  # through warm-up, decay and the floor past it, weight decay on every variable
        np.testing.assert_array_equal(a, b)
    for step in (0, 5, 10, 25, 40):
        assert float(schedule(step)) == float(keras_schedule(step))


def test_clip_norm_bounds_the_step_after_a_gradient_spike():
    """Adam scales steps by the gradients' running size, so a spike after small gradients moves a weight about
    three times the learning rate; clipped to a global norm (--clip-norm), the spike is no larger than the rest."""
    steps = []
    for clip in (0.0, 1e-3):
        args = argparse.Namespace(lr=0.1, epochs=1, warmup_epochs=0, weight_decay=0.0, ema=0.0, clip_norm=clip)
        optimizer = fine_tune_optimizer(args, steps=10**6)  # the rate stays about 0.1 over these steps
        weight = keras.Variable(np.zeros(1, np.float32))
        step = tf.function(lambda gradient: optimizer.apply_gradients([(gradient, weight)]))
        for _ in range(2000):  # enough steps for Adam's bias corrections to fade
            step(tf.constant([1e-3]))
        before = float(weight.numpy()[0])
        step(tf.constant([1e3]))
        steps.append(before - float(weight.numpy()[0]))
    unclipped, clipped = steps
    assert unclipped > 0.25
    assert 0.05 < clipped < 0.12


def test_momentum_swaps_adamw_for_nesterov_sgd():
    """--momentum 0.9: stage 2 takes plain Nesterov steps, m <- 0.9 m - lr g and w <- w + 0.9 m - lr g (no Adam
    scaling), on the same schedule; without it the optimizer is AdamW."""
    args = argparse.Namespace(lr=0.1, epochs=1, warmup_epochs=0, weight_decay=0.0, ema=0.0, clip_norm=0.0,
                              momentum=0.9)
    optimizer = fine_tune_optimizer(args, steps=10**6)  # the rate stays 0.1 over these steps
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.nesterov
    weight = keras.Variable(np.zeros(1, np.float32))
    m = w = 0.0
    for gradient in (1.0, 1.0, -2.0):
        optimizer.apply_gradients([(tf.constant([gradient]), weight)])
        m = 0.9 * m - 0.1 * gradient
        w = w + 0.9 * m - 0.1 * gradient
        np.testing.assert_allclose(weight.numpy()[0], w, rtol=1e-4)
    assert isinstance(fine_tune_optimizer(argparse.Namespace(**{**vars(args), "momentum": 0.0}), steps=10),
                      keras.optimizers.AdamW)


def test_layer_decay_gives_each_block_its_share_of_the_rate():
    """--layer-decay 0.5: Adam's first step moves a weight by its learning rate whatever the gradient's size, so the
    head moves by lr, block 7 by lr/2, block 6 by lr/4 and the stem by lr/2^8; 1 leaves plain AdamW."""
    args = argparse.Namespace(lr=0.1, epochs=1, warmup_epochs=0, weight_decay=0.0, ema=0.0, clip_norm=0.0,
                              layer_decay=0.5)
    optimizer = fine_tune_optimizer(args, steps=10**6)  # the rate stays 0.1 over these steps
    names = {"head_dense": 1.0, "top_conv": 1.0, "block7a_project_conv": 0.5, "block6c_dwconv": 0.25,
             "block2a_expand_conv": 0.5 ** 6, "stem_conv": 0.5 ** 8}
    weights = [keras.Variable(np.zeros(2, np.float32), name=name) for name in names]
    optimizer.apply_gradients([(tf.constant([3.0, -0.01]), w) for w in weights])
    for w, scale in zip(weights, names.values()):
        np.testing.assert_allclose(w.numpy(), [-0.1 * scale, 0.1 * scale], rtol=1e-3)
    plain = fine_tune_optimizer(argparse.Namespace(**{**vars(args), "layer_decay": 1.0}), steps=10)
    assert type(plain) is keras.optimizers.AdamW


def test_layer_decay_runs_from_the_command_line(tiny_data, ranking_run):
    _, card = ranking_run
    assert card["training"]["arguments"]["layer_decay"] == 0.7
    with pytest.raises(SystemExit):
        train_main(["--data", str(tiny_data), "--layer-decay", "1.5"])


def test_gem_pooling_trains_its_exponent_and_ships_in_the_bundle(ranking_run):
    run_dir, card = ranking_run
    assert card["training"]["arguments"]["pooling"] == "gem"
    bundle = load_bundle(run_dir / "melanoma_efficientnet.keras")  # the bundle loads the custom layer
    p = float(bundle.model.get_layer("gem_pool").p.numpy())
    assert p != 3.0  # learned from its start


def test_attention_pooling_trains_and_ships_in_the_bundle(focal_run):
    run_dir, card, _ = focal_run
    assert card["training"]["arguments"]["pooling"] == "attention"
    bundle = load_bundle(run_dir / "melanoma_efficientnet.keras")  # the bundle loads the custom layer
    assert np.abs(bundle.model.get_layer("attention_pool").w.numpy()).max() > 0  # moved from the average


def test_weight_averaging_runs_from_the_command_line(consistency_run):
    run_dir, card, spied = consistency_run
    assert card["training"]["arguments"]["ema"] == 0.9
    [call] = spied["optimizers"]  # stage 2's optimizer keeps the weights' moving average at that momentum
    assert call["result"].use_ema and call["result"].ema_momentum == pytest.approx(0.9)
    history = list(csv.DictReader(open(run_dir / "history.csv")))
    assert [r["stage"] for r in history] == ["head", "fine_tune", "fine_tune"]


def test_validation_auc_traces_the_forward_pass_once_and_follows_the_weights(tmp_path):
    """Each epoch's val_auc is the AUC of the model's eager outputs with the weights of that epoch, and the traced
    forward pass is not traced again each epoch, nor for the shorter last batch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 2)).astype(np.float32)  # 64 + 6: a full batch and a shorter one
    y = (x[:, 0] + 0.5 * rng.normal(size=70) > 0).astype(int)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    callback = ValidationAUC(x, y, "fine_tune", tmp_path / "history.csv")
    callback.set_model(model)
    ranks = np.array([[-1.0, 1.0], [0.0, 0.0]], np.float32)
    aucs = []
    for epoch, kernel in enumerate([ranks, -ranks, rng.normal(size=(2, 2)).astype(np.float32)]):
        model.set_weights([kernel, np.zeros(2, np.float32)])
        logs = {}
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, logs)
        eager = model(x, training=False).numpy()[:, 1]
        assert logs["val_auc"] == pytest.approx(roc_auc_score(y, eager), abs=1e-9)
        aucs.append(logs["val_auc"])
    assert aucs[0] > 0.7 and aucs[1] == pytest.approx(1 - aucs[0])  # the weights of each epoch, not the first's
    assert callback.forward.experimental_get_tracing_count() <= 2
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 4  # header and three epochs


def _soup_case(tmp_path, second_scale: float):
    """A linear softmax model, a checkpoint that ranks the validation images perfectly and a second one: that
    checkpoint's weights times `second_scale`."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    good = [np.array([[-1.0, 1.0], [0.0, 0.0]], np.float32), np.zeros(2, np.float32)]
    paths = [tmp_path / "best_copy1.weights.h5", tmp_path / "best_copy2.weights.h5"]
    for path, scale in zip(paths, (1.0, second_scale)):
        model.set_weights([w * scale for w in good])
        model.save_weights(path)
    return model, paths, x, y, good


def test_soup_averages_the_copies_when_validation_does_not_get_worse(tmp_path):
    model, paths, x, y, good = _soup_case(tmp_path, 3.0)
    soup = make_soup(model, paths, x, y)
    assert soup["used"] == "soup" and soup["val_auc_copies"] == [1.0, 1.0] and soup["val_auc_soup"] == 1.0
    np.testing.assert_allclose(model.get_weights()[0], 2.0 * good[0])  # the mean of 1x and 3x


def test_soup_falls_back_to_the_best_copy_when_averaging_hurts(tmp_path):
    # the second copy ranks every pair the wrong way; their mean is all zeros and ranks nothing
    model, paths, x, y, good = _soup_case(tmp_path, -1.0)
    soup = make_soup(model, paths, x, y)
    assert soup["val_auc_copies"] == [1.0, 0.0] and soup["val_auc_soup"] == 0.5
    assert soup["used"] == "copy 1"
    np.testing.assert_allclose(model.get_weights()[0], good[0])


def test_soup_runs_from_the_command_line_and_the_bundle_holds_what_it_says(tiny_data, tmp_path):
    run = tmp_path / "run"
    train_main([
        "--data", str(tiny_data), "--weights", "none", "--image-size", "64", "--batch-size", "8",
        "--head-epochs", "1", "--epochs", "2", "--warmup-epochs", "0", "--dense-units", "16", "--soup", "2",
        "--run-dir", str(run), *OPTION_RUN,
    ])
    history = list(csv.DictReader(open(run / "history.csv")))
    assert [r["stage"] for r in history] == ["head"] + ["fine_tune_copy1"] * 2 + ["fine_tune_copy2"] * 2
    card = load_bundle(run / "melanoma_efficientnet.keras").card
    soup = card["training"]["soup"]
    assert soup["copies"] == 2 and len(soup["val_auc_copies"]) == 2
    assert card["training"]["best_val_auc"] == max(soup["val_auc_soup"], *soup["val_auc_copies"])
    net = load_bundle(run / "melanoma_efficientnet.keras").model
    head = lambda m: m.get_layer("head_dense").get_weights()[0]  # noqa: E731
    copies = []
    for i in (1, 2):
        m = keras.models.clone_model(net)
        m.load_weights(run / f"best_copy{i}.weights.h5")
        copies.append(head(m))
    assert not np.allclose(copies[0], copies[1])  # each copy saw its own data order and augmentation
    expected = (copies[0] + copies[1]) / 2 if soup["used"] == "soup" else copies[int(soup["used"][-1]) - 1]
    np.testing.assert_allclose(head(net), expected, rtol=1e-5, atol=1e-6)


def test_swa_runs_from_the_command_line_after_fine_tuning_and_the_card_says_what_it_kept(ranking_run):
    run_dir, card = ranking_run
    rows = list(csv.DictReader(open(run_dir / "history.csv")))
    assert [r["stage"] for r in rows] == ["head", "fine_tune", "swa", "swa"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    swa = card["training"]["swa"]
    assert swa["epochs"] == 2 and swa["learning_rate"] == 1e-3 and swa["used"] in ("average", "fine-tuned")
    assert swa["val_auc_epochs"] == pytest.approx([float(r["val_auc"]) for r in rows[2:]])
    assert swa["val_auc_fine_tuned"] == pytest.approx(float(rows[1]["val_auc"]))  # the best fine-tuned epoch's
    assert card["training"]["best_val_auc"] == max(swa["val_auc_average"], swa["val_auc_fine_tuned"])
    assert (run_dir / "training_curves.png").stat().st_size > 0


@pytest.mark.parametrize("flag, value, message", [
    ("--ema", "1.5", "--ema is a momentum in [0, 1)"),
    ("--ink-augment", "1.5", "--ink-augment is a share of training images in [0, 1]"),
    ("--ring-augment", "1.5", "--ring-augment is a share of training images in [0, 1]"),
    ("--blur-augment", "1.5", "--blur-augment is a share of training images in [0, 1]"),
    ("--jpeg-augment", "-0.1", "--jpeg-augment is a share of training images in [0, 1]"),
    ("--cutout", "1.5", "--cutout is a share of training images in [0, 1]"),
    ("--right-angles", "-0.5", "--right-angles is a share of training images in [0, 1]"),
    ("--unresampled", "1.5", "--unresampled is a share of training images in [0, 1]"),
    ("--colour-jitter", "3.5", "--colour-jitter scales the colour jitter's ranges, in [0, 3]"),
    ("--distortion", "1.5", "--distortion is a share of training images in [0, 1]"),
    ("--noise-augment", "-0.5", "--noise-augment is a share of training images in [0, 1]"),
    ("--clahe", "1.5", "--clahe is a share of training images in [0, 1]"),
    ("--blur-kinds", "gaussian,sharpen", "--blur-kinds is a comma-separated list of distinct kinds among gaussian"),
    ("--blur-kinds", "motion,motion", "--blur-kinds is a comma-separated list of distinct kinds"),
    ("--blur-kinds", "motion", "--blur-kinds motion chooses among the blurs of --blur-augment, which is off"),
    ("--drop-connect", "1", "--drop-connect is the last block's chance of being skipped"),
    ("--mixup", "-0.2", "--mixup is the Beta distribution's alpha"),
    ("--auc-loss", "-0.5", "--auc-loss is the ranking loss's weight"),
    ("--clip-norm", "-1", "--clip-norm is a gradient norm"),
    ("--soup", "0", "--soup is a number of fine-tuned copies"),
    ("--swa", "-1", "--swa is a number of epochs"),
    ("--swa-lr", "1e-4", "--swa-lr is the rate of --swa's epochs"),
    ("--lookahead", "-1", "--lookahead is a number of steps between syncs"),
    ("--consistency", "-1", "--consistency is the divergence's weight"),
    ("--focal-gamma", "-2", "--focal-gamma is the focal loss's exponent"),
    ("--malignant-share", "1", "--malignant-share is a chance in [0, 1)"),
    ("--momentum", "1", "--momentum is SGD's momentum"),
    ("--view-turns", "0,45,45", "view turns must be one or more distinct, finite angles"),
    ("--dense-units", "-1", "--dense-units is the head's hidden layer width"),
])
def test_option_out_of_range_exits_with_a_message(tiny_data, tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as info:
        train_main(["--data", str(tiny_data), flag, value, "--run-dir", str(tmp_path / "run")])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _probs(log_odds):
    p = 1 / (1 + np.exp(-np.asarray(log_odds, dtype=np.float64)))
    return np.stack([1 - p, p], axis=1).astype(np.float32)


def test_ranking_loss_adds_the_squared_hinge_of_pairs_ranked_closer_than_the_margin():
    y = np.eye(2, dtype=np.float32)[[1, 1, 0, 0, 0]]
    cross_entropy = float(keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(y, _probs([3, 0.5, 0, -2, 1])))
    loss = RankingLoss(0.5, label_smoothing=0.1)
    # malignant log-odds 3 and 0.5 against benign 0, -2 and 1: of the six pairs, (3, *) and (0.5, -2) are a margin
    # apart; (0.5, 0) is 0.5 short and (0.5, 1) is ranked the wrong way, 1.5 short
    expected = cross_entropy + 0.5 * (0.5**2 + 1.5**2) / 6
    np.testing.assert_allclose(float(loss(y, _probs([3, 0.5, 0, -2, 1]))), expected, rtol=1e-5)
    # well ranked, or no malignant image in the batch: the cross-entropy alone
    separated = _probs([3, 2, 0, -2, 1])
    np.testing.assert_allclose(float(loss(y, separated)),
                               float(keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(y, separated)),
                               rtol=1e-5)
    benign = np.eye(2, dtype=np.float32)[[0, 0, 0, 0, 0]]
    np.testing.assert_allclose(float(loss(benign, separated)),
                               float(keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(benign, separated)),
                               rtol=1e-5)


def _one_epoch_run(tiny_data, run_dir, *flags) -> dict:
    """A one-epoch-per-stage tiny run with `flags` (a later flag wins, so `--epochs 2` among them gives two
    fine-tuning epochs); returns its card, after checking every epoch's loss is finite."""
    train_main([
        "--data", str(tiny_data), "--weights", "none", "--image-size", "64", "--batch-size", "8",
        "--head-epochs", "1", "--epochs", "1", "--warmup-epochs", "0", "--dense-units", "16",
        "--run-dir", str(run_dir), *OPTION_RUN, *flags,
    ])
    history = list(csv.DictReader(open(run_dir / "history.csv")))
    assert all(np.isfinite(float(r["loss"])) for r in history)
    return load_bundle(run_dir / "melanoma_efficientnet.keras").card


def test_ranking_loss_and_stochastic_depth_train_from_the_command_line(ranking_run):
    run_dir, card = ranking_run
    assert card["training"]["arguments"]["auc_loss"] == 0.5
    net = load_bundle(run_dir / "melanoma_efficientnet.keras").model
    assert net.get_layer("block6d_drop").rate == pytest.approx(0.4 * 14 / 16)  # the default 0.2 would give 0.175


def test_focal_loss_weighs_each_images_smoothed_cross_entropy_by_its_error_and_trains_from_the_command_line(
        tiny_data, focal_run, capsys):
    y = np.eye(2, dtype=np.float32)[[1, 0, 0]]
    probs = _probs([2.0, -3.0, 1.0])  # an easy melanoma, an easy benign image, a benign image called malignant
    smoothed = y * 0.9 + 0.05
    per_image = np.sum(-smoothed * (1 - probs) ** 2 * np.log(probs), axis=1)
    loss = training_loss(argparse.Namespace(focal_gamma=2.0, label_smoothing=0.1, auc_loss=0.0, consistency=0.0))
    np.testing.assert_allclose(float(loss(y, probs)), per_image.mean(), rtol=1e-5)
    plain = np.sum(-smoothed * np.log(probs), axis=1)
    # without smoothing, the misclassified image carries nearly all of the loss, more than its share of the plain
    # cross-entropy (with it, the 0.05 target of the other class is weighed by its error too and keeps a floor)
    unsmoothed = training_loss(argparse.Namespace(focal_gamma=2.0, label_smoothing=0.0, auc_loss=0.0,
                                                  consistency=0.0))
    shares = [float(unsmoothed(y[i:i + 1], probs[i:i + 1])) for i in range(3)]
    shares_plain = -np.log(probs[[0, 1, 2], [1, 0, 0]])
    assert shares[2] / sum(shares) > 0.99 > 0.9 > shares_plain[2] / shares_plain.sum()
    default = training_loss(argparse.Namespace(focal_gamma=0.0, label_smoothing=0.1, auc_loss=0.0, consistency=0.0))
    np.testing.assert_allclose(float(default(y, probs)), plain.mean(), rtol=1e-5)
    _, card, _ = focal_run
    assert card["training"]["arguments"]["focal_gamma"] == 2.0
    with pytest.raises(SystemExit):
        train_main(["--data", str(tiny_data), "--focal-gamma", "2", "--auc-loss", "0.5"])
    assert "--focal-gamma replaces the cross-entropy" in capsys.readouterr().err


def test_consistency_loss_is_the_clean_cross_entropy_plus_the_jensen_shannon_divergence_of_each_pair():
    y = np.eye(2, dtype=np.float32)[[1, 0, 0]]
    clean, shifted = _probs([2.0, -1.0, 0.5]), _probs([0.0, -1.0, 2.5])
    batch_y, batch_p = np.concatenate([y, y]), np.concatenate([clean, shifted])
    cross_entropy = float(keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(y, clean))

    def js(p, q):
        m = (p + q) / 2
        return 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))

    expected = cross_entropy + 12.0 * np.mean([js(p, q) for p, q in zip(clean.astype(np.float64), shifted)])
    loss = ConsistencyLoss(12.0, label_smoothing=0.1)
    np.testing.assert_allclose(float(loss(batch_y, batch_p)), expected, rtol=1e-5)
    # a copy answered as the clean image: the cross-entropy of the clean half alone, whatever the weight
    np.testing.assert_allclose(float(loss(batch_y, np.concatenate([clean, clean]))), cross_entropy, rtol=1e-5)
    assert js(clean[0], shifted[0]) > 0.01 and js(clean[1], shifted[1]) < 1e-9


def test_consistency_batches_are_the_augmented_images_then_their_shifted_copies():
    x = np.random.default_rng(0).uniform(0, 255, (12, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 1] * 6)
    identity = keras.Sequential([keras.layers.Identity()])
    plain = next(iter(make_dataset(x, y, 4, seed=3, augmenter=identity)))
    shifted = make_dataset(x, y, 4, seed=3, augmenter=identity, shift=keras.Sequential([keras.layers.Rescaling(0.5)]))
    images, targets = next(iter(shifted))
    assert images.shape == (8, 32, 32, 3) and targets.shape == (8, 2)
    np.testing.assert_array_equal(images[:4], plain[0])  # the clean half is what a run without the shift sees
    np.testing.assert_allclose(images[4:], plain[0].numpy() * 0.5)
    np.testing.assert_array_equal(targets[4:], targets[:4])
    # the shift the command uses compresses every copy: no copy comes out unchanged
    copies = build_shift(1)(x[:4], training=True).numpy()
    assert all(np.abs(copies[i] - x[i]).mean() > 1.0 for i in range(4))


def test_consistency_trains_from_the_command_line_and_refuses_what_it_cannot_combine_with(tiny_data,
                                                                                             consistency_run, capsys):
    _, card, spied = consistency_run
    datasets = spied["datasets"]
    assert card["training"]["arguments"]["consistency"] == 12.0
    # each batch was the images and their shifted copies
    assert datasets and all(call["shift"] is not None for call in datasets)
    assert next(iter(datasets[0]["result"]))[0].shape[0] == 2 * 8
    with pytest.raises(SystemExit):
        train_main(["--data", str(tiny_data), "--consistency", "12", "--mixup", "0.2"])
    assert "does not combine with --mixup" in capsys.readouterr().err


def test_sharpness_aware_step_applies_the_gradient_taken_at_the_moved_weights_to_the_weights_themselves():
    """One SGD step by hand: w - lr * grad(w + rho * g / ||g||), not the plain step w - lr * g."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 16)]
    w0 = [rng.normal(size=(3, 2)).astype(np.float32), np.array([0.3, -0.2], np.float32)]
    rho, lr = 0.5, 0.1
    loss = keras.losses.CategoricalCrossentropy()

    def gradient(weights):
        variables = [tf.Variable(w) for w in weights]
        with tf.GradientTape() as tape:
            value = loss(y, tf.nn.softmax(x @ variables[0] + variables[1]))
        return [g.numpy() for g in tape.gradient(value, variables)]

    g = gradient(w0)
    norm = np.sqrt(sum(float(np.sum(v ** 2)) for v in g))
    g_moved = gradient([w + rho * v / norm for w, v in zip(w0, g)])
    expected = [w - lr * v for w, v in zip(w0, g_moved)]

    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2, activation="softmax")(inputs)
    model = SharpnessAware(inputs, outputs, rho=rho)
    model.set_weights(w0)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=loss)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for got, want, plain in zip(model.get_weights(), expected, [w - lr * v for w, v in zip(w0, g)]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, plain, rtol=1e-3, atol=1e-4)  # the move changed the step


def test_sharpness_aware_minimisation_trains_from_the_command_line(tiny_data, focal_run, capsys):
    _, card, spied = focal_run
    assert card["training"]["arguments"]["sam"] == 0.05
    [call] = spied["sam"]  # the network was trained through the sharpness-aware step, at that radius
    assert call["result"].rho == pytest.approx(0.05) and call["result"].optimizer.iterations.numpy() > 0
    with pytest.raises(SystemExit):
        train_main(["--data", str(tiny_data), "--sam", "-0.1"])
    assert "--sam is the radius" in capsys.readouterr().err


def test_lookahead_wraps_fine_tuning_from_the_command_line_and_refuses_ema(tiny_data, focal_run, capsys):
    _, card, spied = focal_run
    assert card["training"]["arguments"]["lookahead"] == 2
    [call] = spied["lookahead"]  # fine-tuning only: the head stage runs without it
    assert call["steps"] == 2 and call["result"].slow is not None and call["result"].since_sync == 0
    with pytest.raises(SystemExit):
        train_main(["--data", str(tiny_data), "--lookahead", "5", "--ema", "0.99"])
    assert "--lookahead averages the fine-tuning's weights itself" in capsys.readouterr().err


def test_mixup_mixes_images_and_every_target_with_the_same_weights():
    """Class 1 images are all 255 and class 0 all 0, so a mixed image's mean is its weight of class 1."""
    y = np.array([0, 1] * 16)
    x = np.repeat(y * 255, 8 * 8 * 3).reshape(32, 8, 8, 3).astype(np.uint8)
    identity = keras.Sequential([keras.layers.Identity()])
    images, (targets, aux) = next(iter(make_dataset(x, y, 32, seed=3, augmenter=identity,
                                                    y_aux=np.eye(2)[y], mixup=0.4)))
    np.testing.assert_allclose(images.numpy().mean(axis=(1, 2, 3)) / 255, targets.numpy()[:, 1], atol=1e-4)
    np.testing.assert_allclose(aux.numpy(), targets.numpy(), atol=1e-6)
    np.testing.assert_allclose(targets.numpy().sum(axis=1), 1.0, atol=1e-6)
    assert ((targets.numpy() > 0.01) & (targets.numpy() < 0.99)).any()  # some pairs of classes really are mixed

    images, targets = next(iter(make_dataset(x, y, 32, seed=3, augmenter=identity)))  # off by default
    assert set(np.unique(targets.numpy())) == {0.0, 1.0}


def test_cutmix_pastes_a_partners_rectangle_and_mixes_every_target_by_its_area():
    """Class 1 images are all 255 and class 0 all 0: a pasted rectangle shows as a box of the other value, and a
    mixed image's mean is its share of class 1."""
    y = np.array([0, 1] * 16)
    x = np.repeat(y * 255, 16 * 16 * 3).reshape(32, 16, 16, 3).astype(np.uint8)
    identity = keras.Sequential([keras.layers.Identity()])
    images, (targets, aux) = next(iter(make_dataset(x, y, 32, seed=3, augmenter=identity,
                                                    y_aux=np.eye(2)[y], cutmix=1.0)))
    images, targets = images.numpy(), targets.numpy()
    np.testing.assert_allclose(images.mean(axis=(1, 2, 3)) / 255, targets[:, 1], atol=1e-4)
    np.testing.assert_allclose(aux.numpy(), targets, atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    assert set(np.unique(images)) <= {0.0, 255.0}  # pasted, not blended
    mixed = np.flatnonzero((targets[:, 1] > 0.01) & (targets[:, 1] < 0.99))
    assert len(mixed) > 0  # some images really take a partner of the other class

    def rectangle(mask):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        return mask.sum() == len(rows) * len(cols)  # every pixel of its bounding box

    for i in mixed:  # the batch is shuffled, so which class is the partner's is unknown: one of the two is a box
        white = images[i, :, :, 0] == 255
        assert rectangle(white) or rectangle(~white)


def test_cutmix_trains_from_the_command_line_and_checks_its_range_and_partners(tiny_data, focal_run, capsys):
    _, card, spied = focal_run
    assert card["training"]["arguments"]["cutmix"] == 1.0
    datasets = spied["datasets"]
    assert datasets and all(call["cutmix"] == 1.0 for call in datasets)
    targets = np.concatenate([t.numpy() for _, t in datasets[0]["result"]])
    assert ((targets > 0.1) & (targets < 0.9)).any()  # the batches the network trained on were mixed
    for argv, message in ((["--cutmix", "1.5"], "--cutmix is the upper end of the Beta distribution's alpha"),
                          (["--cutmix", "1", "--mixup", "0.2"], "--cutmix and --mixup each mix a batch"),
                          (["--cutmix", "1", "--consistency", "12"], "does not combine with --cutmix")):
        with pytest.raises(SystemExit):
            train_main(["--data", str(tiny_data), *argv])
        assert message in capsys.readouterr().err


def test_colour_jitter_reaches_the_training_augmentation_from_the_command_line(focal_run):
    from train.augment import RandomSaturationHue

    _, card, spied = focal_run
    assert card["training"]["arguments"]["colour_jitter"] == 2.0
    augmenter = spied["datasets"][0]["augmenter"]
    jitter = next(layer for layer in augmenter.layers if isinstance(layer, RandomSaturationHue))
    assert jitter.saturation == pytest.approx((0.2, 0.8)) and jitter.hue == pytest.approx(0.08)
    brightness = next(layer for layer in augmenter.layers if isinstance(layer, keras.layers.RandomBrightness))
    assert brightness.get_config()["factor"] == pytest.approx((-0.3, 0.3))


def test_distortion_reaches_the_training_augmentation_from_the_command_line(focal_run):
    from train.augment import RandomDistortion

    _, card, spied = focal_run
    assert card["training"]["arguments"]["distortion"] == 0.7
    augmenter = spied["datasets"][0]["augmenter"]
    warp = [layer for layer in augmenter.layers if isinstance(layer, RandomDistortion)]
    assert len(warp) == 1 and warp[0].rate == 0.7


def test_noise_reaches_the_training_augmentation_from_the_command_line(focal_run):
    from train.augment import RandomNoise

    _, card, spied = focal_run
    assert card["training"]["arguments"]["noise_augment"] == 0.5
    augmenter = spied["datasets"][0]["augmenter"]
    noise = [layer for layer in augmenter.layers if isinstance(layer, RandomNoise)]
    assert len(noise) == 1 and noise[0].rate == 0.5 and noise[0].sigma == (2.0, 10.0)


def test_blur_kinds_reach_the_training_augmentation_from_the_command_line(focal_run):
    from train.augment import RandomBlurs

    _, card, spied = focal_run
    assert card["training"]["arguments"]["blur_kinds"] == "motion,median"  # spaces dropped, as the card shows it
    augmenter = spied["datasets"][0]["augmenter"]
    blurs = [layer for layer in augmenter.layers if isinstance(layer, RandomBlurs)]
    assert len(blurs) == 1 and blurs[0].rate == 0.5 and blurs[0].kinds == ("motion", "median")


def test_clahe_reaches_the_training_augmentation_from_the_command_line(focal_run):
    from train.augment import RandomClahe

    _, card, spied = focal_run
    assert card["training"]["arguments"]["clahe"] == 0.7
    augmenter = spied["datasets"][0]["augmenter"]
    clahe = [layer for layer in augmenter.layers if isinstance(layer, RandomClahe)]
    assert len(clahe) == 1 and clahe[0].rate == 0.7 and clahe[0].clip_limit == (1.0, 4.0) and clahe[0].tiles == 8


def _epochs(ds, n):
    """The image indices (each image's pixels are its index) and targets of `n` passes over `ds`."""
    out = []
    for _ in range(n):
        batches = list(ds)
        out.append((np.concatenate([b[0].numpy()[:, 0, 0, 0] for b in batches]).astype(int),
                    np.concatenate([b[1].numpy() for b in batches])))
    return out


def test_malignant_share_draws_each_epoch_with_that_chance_of_a_melanoma_and_the_right_targets(ranking_run):
    y = np.array([1] * 10 + [0] * 50)  # a sixth malignant
    x = np.broadcast_to(np.arange(60, dtype=np.float32)[:, None, None, None], (60, 4, 4, 3)).copy()
    identity = keras.Sequential([keras.layers.Identity()])
    epochs = _epochs(make_dataset(x, y, 10, seed=3, augmenter=identity, malignant_share=0.5), 20)
    for index, targets in epochs:
        assert len(index) == 60  # an epoch is as long as the data
        np.testing.assert_array_equal(targets, np.eye(2)[y[index]])  # every image keeps its own label
    drawn = np.concatenate([index for index, _ in epochs])
    assert 0.45 < y[drawn].mean() < 0.55  # 1,200 draws: a standard error of 0.014 around 0.5
    assert len(set(drawn[y[drawn] == 1])) == 10 and len(set(drawn[y[drawn] == 0])) == 50  # every image is drawn
    assert not np.array_equal(epochs[0][0], epochs[1][0])  # a fresh draw each epoch
    again = _epochs(make_dataset(x, y, 10, seed=3, augmenter=identity, malignant_share=0.5), 2)
    np.testing.assert_array_equal(again[1][0], epochs[1][0])  # seeded
    with pytest.raises(DataError, match="draws from both classes"):  # an empty class would never be drawn from
        make_dataset(x, np.zeros(60, dtype=int), 10, seed=3, augmenter=identity, malignant_share=0.5)
    # off by default: each image once per epoch
    for index, _ in _epochs(make_dataset(x, y, 10, seed=3, augmenter=identity), 2):
        assert sorted(index) == list(range(60))
    _, card = ranking_run
    assert card["training"]["arguments"]["malignant_share"] == 0.5


def test_evaluate_breaks_the_results_down_by_diagnosis(trained, tiny_data, tmp_path, capsys):
    test = sorted((tiny_data / "test").rglob("*.png"))
    rows = [f"{p.stem},{'melanoma' if p.parent.name == 'malignant' else ('nevus' if i % 2 else 'keratosis')}"
            for i, p in enumerate(test)]
    dx = tmp_path / "dx.csv"
    dx.write_text("image_id,diagnosis\n" + "\n".join(rows) + "\n")
    bundle = str(trained / "bundle" / "tiny.keras")
    metrics = evaluate_cli.main(["--model", bundle, "--data", str(tiny_data), "--out", str(tmp_path / "dx"),
                                 "--diagnosis", str(dx)])
    by = {r["diagnosis"]: r for r in metrics["by_diagnosis"]}
    assert sum(r["n"] for r in by.values()) == metrics["n"]
    assert by["melanoma"]["label"] == "malignant" and by["melanoma"]["flagged"] == pytest.approx(metrics["sensitivity"])
    assert {by["nevus"]["label"], by["keratosis"]["label"]} == {"benign"}
    assert json.loads((tmp_path / "dx" / "metrics.json").read_text())["by_diagnosis"] == metrics["by_diagnosis"]
    with open(tmp_path / "dx" / "predictions.csv", newline="") as f:
        assert sorted((r["image"].split("/")[-1].split(".")[0], r["diagnosis"]) for r in csv.DictReader(f)) == \
            sorted(tuple(row.split(",")) for row in rows)
    assert "AUC against malignant" in capsys.readouterr().out
    # images the CSV lacks (here every benign one): one sentence, exit code 2, nothing evaluated
    dx.write_text("image_id,diagnosis\n" + "\n".join(r for r in rows if r.endswith("melanoma")) + "\n")
    with pytest.raises(SystemExit) as refused:
        evaluate_cli.main(["--model", bundle, "--data", str(tiny_data), "--out", str(tmp_path / "dx2"),
                           "--diagnosis", str(dx)])
    assert refused.value.code == 2
    assert f"test images have no diagnosis in {dx}, for example img_" in capsys.readouterr().err
    assert not (tmp_path / "dx2" / "metrics.json").exists()


def test_validation_from_train_and_extra_training_images_and_calibrate_rebuilds_the_same_splits(tiny_data, tmp_path,
                                                                                               capsys):
    """--val-from-train moves training images to validation; --extra-train adds another folder's images to training
    only (less a copy of a test image); calibrate and the gate's refit rebuild both from the card."""
    from model.bundle import copy_bundle, load_card
    from train import calibrate
    from tests.conftest import synthetic_lesion

    extra = tmp_path / "extra"
    for label, dark in (("benign", 0.1), ("malignant", 0.9)):
        (extra / label).mkdir(parents=True)
        for i in range(2):
            synthetic_lesion(64, 700 + i + int(10 * dark), dark).save(extra / label / f"more_{i}.png")
    copied = sorted((tiny_data / "test" / "malignant").iterdir())[0]
    (extra / "malignant" / "copy.png").write_bytes(copied.read_bytes())
    run = tmp_path / "run"
    train_main(["--data", str(tiny_data), "--weights", "none", "--image-size", "64", "--batch-size", "8",
                "--head-epochs", "1", "--epochs", "1", "--warmup-epochs", "0", "--dense-units", "16",
                "--val-from-train", "0.25", "--seed", "3", "--unfreeze-from", "6", "--run-dir", str(run),
                "--extra-train", str(extra)])
    card = load_card(run / "melanoma_efficientnet.keras")
    moved = json.loads((run / "val_from_train.json").read_text())
    assert len(moved) == card["data"]["val_from_train"] == 6 and all(p.startswith("train/") for p in moved)
    assert sum("/malignant/" in p for p in moved) == 3  # stratified: a quarter of each class's 12
    assert card["data"]["val_images_used"] == 12 + 6 and card["data"]["val_malignant_used"] == 6 + 3
    assert card["data"]["train_images_used"] == 24 - 6 + 4  # and the four extra images, not the copy
    report = json.loads((run / "extra_train.json").read_text())
    assert report["left_out"] == [{"path": "malignant/copy.png", "copy_of": f"test/malignant/{copied.name}"}]
    assert card["data"]["extra_train"] == {k: v for k, v in report.items() if k != "left_out"}
    assert card["data"]["extra_train"]["counts"] == {"benign": 2, "malignant": 2}
    assert card["test"]["n"] == 12  # the test split is as it was
    assert card["validation"]["n"] == 18
    # the gate's layer was chosen with the validation lesions also seen through a dermoscope ring
    candidates = card["gate"]["selection"]["candidates"]
    assert candidates and all(0.0 <= c["val_ringed_refused"] <= 1.0 for c in candidates)
    # recalibrating on the same data rebuilds the same validation split, so it lands on the same operating point
    bundle = copy_bundle(run / "melanoma_efficientnet.keras", tmp_path / "copy" / "tiny.keras")
    calibrate.main(["--model", str(bundle), "--data", str(tiny_data)])
    again = load_card(bundle)
    assert again["calibration"]["validation_images_from_train"] == 6
    assert abs(again["temperature"] - card["temperature"]) < 1e-3
    assert abs(again["threshold"] - card["threshold"]) < 1e-4
    assert again["validation"]["n"] == 18
    # refitting the gate rebuilds the same splits too: the same 22 training images, the same distance threshold
    from train import gate
    layer, percentile = card["gate"]["layer"], card["gate"]["percentile_of_training_images"]
    gate.main(["--model", str(bundle), "--data", str(tiny_data), "--fit", "--layer", layer,
               "--percentile", str(percentile), "--out", str(tmp_path / "gate")])
    refit = load_card(bundle)
    # each training image (the extra ones too) plain, slightly blurred and through a ring
    assert np.load(bundle.with_suffix(".gate.npz"))["features"].shape[0] == 3 * 22
    assert refit["gate"]["bank_images"] == 22 and refit["gate"]["bank_views"] == ["plain", "blur", "ring"]
    assert abs(refit["gate"]["distance_threshold"] - card["gate"]["distance_threshold"]) < 1e-5
    assert np.allclose(refit["indeterminate_band"], card["indeterminate_band"], atol=1e-5)


def test_circle_mask_trains_and_every_runtime_serves_it_blind_to_the_corners(focal_run):
    from model.architecture import CircleMask
    from model.inference import Predictor

    bundle = load_bundle(focal_run[0] / "melanoma_efficientnet.keras")
    assert bundle.model.layers[1].name == "circle_mask"
    assert bundle.card["training"]["arguments"]["circle_mask"] is True
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    corners = x.copy()
    outside = CircleMask.disc(64, 64)[0, :, :, 0] == 0
    corners[:, outside] = rng.uniform(0, 255, (3, int(outside.sum()), 3))
    # The gate's features read from the stem (pooled over the whole image, corners and all) show what the runtime
    # feeds the network: an untrained network's output barely depends on its input, its stem's does.
    bundle.card["gate"] = {"layer": "stem_conv"}
    for runtime in ("tensorflow", "auto"):
        predictor = Predictor(bundle, runtime=runtime)
        probs, features = predictor.raw_outputs(x, 1)
        probs_c, features_c = predictor.raw_outputs(corners, 1)
        np.testing.assert_allclose(probs_c, probs, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(features_c, features, rtol=1e-4, atol=1e-4)
        assert np.ptp(features, axis=0).max() > 1e-3  # the features do depend on the image
        np.testing.assert_allclose(probs, bundle.model(x).numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("option, value, sentence", [
    ("--image-size", "16", "--image-size is the square input's side in pixels, 32 to 1024 (e.g. 256), not 16"),
    ("--image-size", "4000", "--image-size is the square input's side in pixels, 32 to 1024 (e.g. 256), not 4000"),
    ("--batch-size", "0", "--batch-size is a count, 1 or more, not 0"),
    ("--epochs", "-1", "--epochs is a count, 0 or more, not -1"),
    ("--head-epochs", "-1", "--head-epochs is a count, 0 or more, not -1"),
    ("--warmup-epochs", "-2", "--warmup-epochs is a count, 0 or more, not -2"),
    ("--patience", "0", "--patience is a count, 1 or more, not 0"),
    ("--max-train-images", "1", "--max-train-images needs at least 2 images"),
    ("--unfreeze-from", "8", "--unfreeze-from is the first backbone block fine-tuned, 0 (stem) to 7, not 8"),
    ("--lr", "0", "--lr is a learning rate above 0"),
    ("--head-lr", "-1e-3", "--head-lr is a learning rate above 0"),
    ("--weight-decay", "-1e-4", "--weight-decay is 0 (off) or more"),
    ("--dropout", "1", "--dropout is in [0, 1) (0 = off), not 1.0"),
    ("--label-smoothing", "-0.1", "--label-smoothing is in [0, 1) (0 = off), not -0.1"),
    ("--target-sensitivity", "1", "--target-sensitivity is a share of melanomas between 0 and 1"),
])
def test_training_options_out_of_range_are_refused_before_anything_runs(option, value, sentence, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:  # the data folder does not exist: the options are judged first
        train_main(["--data", str(tmp_path / "no_data"), f"{option}={value}", "--run-dir", str(tmp_path / "run")])
    assert refused.value.code == 2 and sentence in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_no_epoch_in_either_stage_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        train_main(["--data", str(tmp_path / "no_data"), "--head-epochs", "0", "--epochs", "0"])
    assert refused.value.code == 2 and "--head-epochs and --epochs are both 0: nothing would train" in \
        capsys.readouterr().err


def test_a_warm_up_as_long_as_fine_tuning_is_said_in_one_line(tmp_path, caplog):
    """`--epochs 1` with the default 2 warm-up epochs trained at a rate that only rose, to half of --lr, and never
    decayed, without a word."""
    for epochs, warmup, said in (("1", "2", "--warmup-epochs 2 is not below --epochs 1: the learning rate rises "
                                             "through the whole of fine-tuning, ends at 50% of --lr and never decays"),
                                 ("3", "3", "--warmup-epochs 3 is not below --epochs 3: the learning rate rises "
                                             "through the whole of fine-tuning, ends at 100% of --lr"),
                                 ("3", "2", None), ("0", "2", None)):
        caplog.clear()
        parse_args(["--data", str(tmp_path), "--epochs", epochs, "--warmup-epochs", warmup])
        assert (said in caplog.text) if said else "--warmup-epochs" not in caplog.text, caplog.text


def test_baselines_stack_the_bundle_with_the_handcrafted_model_on_its_own_splits(trained, tiny_data, tmp_path):
    """`python -m train.baselines --stack BUNDLE`: the network's column is the bundle's own test scores (what its
    training run wrote), the stack is fitted on the bundle's validation images, and its row is scored on test."""
    from train.baselines import main as baselines_main

    bundle = trained / "bundle" / "tiny.keras"
    report = baselines_main(["--data", str(tiny_data), "--image-size", "64", "--stack", str(bundle),
                             "--out", str(tmp_path)])
    row = report["models"]["tiny + handcrafted (stacked)"]
    card = json.loads((trained / "bundle" / "tiny.json").read_text())
    assert row["params"]["trained_on"] == card["data"]["train_images_used"]
    assert row["params"]["validated_on"] == card["data"]["val_images_used"]
    assert row["params"]["handcrafted"] == max(("svm_rbf", "knn", "random_forest"),
                                               key=lambda n: report["models"][n]["val_auc"])
    with open(trained / "test" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    y = [r["label"] == "malignant" for r in rows]
    paired = row["test_paired_with_network"]
    assert paired["n"] == len(rows) and paired["baseline"] == pytest.approx(
        roc_auc_score(y, [float(r["probability_malignant"]) for r in rows]), abs=1e-9)
    assert row["test"]["roc_auc"] == pytest.approx(paired["candidate"])
    assert np.isfinite(list(row["params"]["weights"].values())).all()
    assert -1.0 <= row["val_cv_gain"]["mean"] <= 1.0
    saved = json.loads((tmp_path / "baselines.json").read_text())
    assert saved["models"]["tiny + handcrafted (stacked)"]["test"]["roc_auc"] == row["test"]["roc_auc"]


def test_evaluating_other_data_leaves_out_copies_of_the_images_the_bundle_trained_on(trained, tiny_data, tmp_path,
                                                                                     caplog, capsys):
    """Another clinic's folder that holds, unknown to its owner, two of the training images (one flipped): scored as
    new data they would flatter the bundle, so they are left out and named; kept on request; and where the bundle's
    training data is not on this machine, the evaluation says it could not check."""
    from PIL import Image, ImageOps

    from model.bundle import copy_bundle, load_card
    from tests.conftest import synthetic_lesion

    clinic = tmp_path / "clinic"
    for label, dark in (("benign", 0.1), ("malignant", 0.9)):
        (clinic / label).mkdir(parents=True)
        for i in range(3):
            synthetic_lesion(64, 900 + i + int(10 * dark), dark).save(clinic / label / f"new_{i}.png")
    benign_copy = sorted((tiny_data / "train" / "benign").glob("*.png"))[0]
    malignant_copy = sorted((tiny_data / "train" / "malignant").glob("*.png"))[1]
    ImageOps.mirror(Image.open(benign_copy)).save(clinic / "benign" / "renamed.png")
    (clinic / "malignant" / "same.png").write_bytes(malignant_copy.read_bytes())
    bundle = trained / "bundle" / "tiny.keras"

    metrics = evaluate_cli.main(["--model", str(bundle), "--data", str(clinic), "--split", "all",
                                 "--out", str(tmp_path / "eval")])
    seen = metrics["copies_of_training_images"]
    assert metrics["n"] == 6 and seen["checked"] and seen["left_out"] and seen["images_compared"] == 24 + 12
    assert seen["copies"] == [{"path": "benign/renamed.png", "copy_of": f"train/benign/{benign_copy.name}"},
                              {"path": "malignant/same.png", "copy_of": f"train/malignant/{malignant_copy.name}"}]
    with open(tmp_path / "eval" / "predictions.csv") as f:
        assert {r["image"] for r in csv.DictReader(f)} == {f"{label}/new_{i}.png" for label in ("benign", "malignant")
                                                           for i in range(3)}
    assert "2 among 36 images of" in (tmp_path / "eval" / "report.md").read_text()

    kept = evaluate_cli.main(["--model", str(bundle), "--data", str(clinic), "--split", "all", "--keep-duplicates",
                              "--out", str(tmp_path / "kept")])
    assert kept["n"] == 8 and not kept["copies_of_training_images"]["left_out"]

    elsewhere = copy_bundle(bundle, tmp_path / "elsewhere" / "tiny.keras")  # trained on data not on this machine
    card = load_card(elsewhere)
    card["data"]["source"] = str(tmp_path / "gone")
    (tmp_path / "elsewhere" / "tiny.json").write_text(json.dumps(card))
    caplog.clear()
    unchecked = evaluate_cli.main(["--model", str(elsewhere), "--data", str(clinic), "--split", "all",
                                   "--out", str(tmp_path / "eval")])  # where the first bundle's evaluation is
    assert unchecked["n"] == 8 and not unchecked["copies_of_training_images"]["checked"]
    assert f"{tmp_path / 'eval'} holds an evaluation of {bundle}: this one replaces it (--out to keep both)" in (
        caplog.text)  # replaced without a word: every bundle python -m train writes has the same file name
    assert f"not checked for copies of the images the bundle trained on: the bundle's training data " \
           f"({tmp_path / 'gone'}) is not on this machine" in caplog.text
    from train import robustness  # the simulated shifts score the same images, without the copies
    shifted = robustness.main(["--model", str(bundle), "--data", str(clinic), "--split", "all", "--shifts", "blur",
                               "--bootstrap", "20", "--out", str(tmp_path / "shifted")])
    assert shifted["n"] == 6 and shifted["copies_of_training_images_left_out"] == 2
    # its own data is the same data: nothing to compare, the duplicates across its splits are dropped as before
    own = evaluate_cli.main(["--model", str(bundle), "--data", str(tiny_data), "--out", str(tmp_path / "own")])
    assert own["copies_of_training_images"] == {"checked": True, "own_data": True, "copies": [], "left_out": False}
    # --split all on it scored the images it trained and was validated on beside its test images
    for command, extra in ((evaluate_cli, []), (robustness, ["--shifts", "blur"])):
        with pytest.raises(SystemExit) as refused:
            command.main(["--model", str(bundle), "--data", str(tiny_data), "--split", "all", *extra,
                          "--out", str(tmp_path / "own_all")])
        assert refused.value.code == 2
        assert f"error: {tiny_data} is the data the bundle was trained on: --split all would score" in (
            capsys.readouterr().err)
