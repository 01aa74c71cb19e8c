"""The training and evaluation commands end to end on a tiny synthetic data set (plumbing, not accuracy)."""
import csv
import json

import pytest

from model.bundle import load_bundle
from train import evaluate as evaluate_cli
from train.train import main as train_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train_main([
        "--data", str(tiny_data), "--weights", "none", "--image-size", "64", "--batch-size", "8",
        "--head-epochs", "1", "--epochs", "2", "--warmup-epochs", "1", "--dense-units", "16",
        "--run-dir", str(out), "--output", str(out / "bundle" / "tiny.keras"),
    ])
    return out


def test_training_writes_a_complete_run_folder(trained):
    for name in ("args.json", "history.csv", "training_curves.png", "duplicates.json", "melanoma_efficientnet.keras",
                 "melanoma_efficientnet.json", "test/metrics.json", "test/roc.png", "test/reliability.png"):
        assert (trained / name).exists(), name
    rows = list(csv.DictReader(open(trained / "history.csv")))
    assert [r["stage"] for r in rows] == ["head", "fine_tune", "fine_tune"]
    assert json.loads((trained / "args.json").read_text())["image_size"] == 64


def test_model_card_is_complete(trained):
    card = load_bundle(trained / "bundle" / "tiny.keras").card
    assert card["class_names"] == ["benign", "malignant"]
    assert card["preprocessing"]["image_size"] == 64
    assert 0.0 < card["threshold"] < 1.0 and card["temperature"] > 0
    assert len(card["data"]["hash"]) == 64
    assert card["training"]["command"].startswith("python -m train")
    assert {"tensorflow", "keras", "numpy", "pillow"} <= set(card["libraries"])
    for key in ("roc_auc", "roc_auc_ci95", "sensitivity", "specificity", "ece", "brier", "accuracy", "macro"):
        assert key in card["test"], key


def test_evaluate_command_reproduces_the_card(trained, tiny_data, capsys):
    out = trained / "eval"
    metrics = evaluate_cli.main(["--model", str(trained / "bundle" / "tiny.keras"), "--data", str(tiny_data),
                                 "--out", str(out)])
    card = load_bundle(trained / "bundle" / "tiny.keras").card
    assert abs(metrics["roc_auc"] - card["test"]["roc_auc"]) < 1e-6
    assert metrics["confusion_matrix"] == card["test"]["confusion_matrix"]
    printed = capsys.readouterr().out
    assert "ROC AUC" in printed and "sensitivity" in printed
    for name in ("metrics.json", "roc.png", "pr.png", "confusion_matrix.png", "reliability.png"):
        assert (out / name).exists()
    tta = evaluate_cli.main(["--model", str(trained / "bundle" / "tiny.keras"), "--data", str(tiny_data),
                             "--out", str(out / "tta"), "--tta", "4"])
    assert tta["tta_views"] == 4


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


def test_bad_data_folder_exits_with_a_message(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        train_main(["--data", str(tmp_path / "empty"), "--weights", "none", "--run-dir", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "empty" in caplog.text
