"""The shipped bundle itself: a complete card, and (where the data set is present) the card's test
metrics reproduced by the evaluation code."""
import json
from pathlib import Path

import pytest

from model.bundle import DEFAULT_BUNDLE, load_card
from tests.conftest import SHARED_DATA, requires_data


def test_card_is_complete():
    card = load_card(DEFAULT_BUNDLE)
    assert card["class_names"] == ["benign", "malignant"]
    assert card["training"]["command"].startswith("python -m train --data")
    assert len(card["data"]["hash"]) == 64 and card["data"]["test_images_dropped_as_duplicates"] > 0
    assert 0 < card["threshold"] < 1 and 0.5 < card["temperature"] < 3
    low, high = card["indeterminate_band"]
    assert low < card["threshold"] < high
    assert card["gate"]["features_file"] and card["gate"]["quality"]["min_side"] >= 32
    assert (DEFAULT_BUNDLE.parent / card["gate"]["features_file"]).exists()


@pytest.mark.data
@requires_data
def test_evaluation_reproduces_the_card(tmp_path):
    from train import evaluate

    metrics = evaluate.main(["--model", str(DEFAULT_BUNDLE), "--data", str(SHARED_DATA), "--out", str(tmp_path)])
    card = load_card(DEFAULT_BUNDLE)["test"]
    assert metrics["n"] == card["n"]
    assert metrics["confusion_matrix"] == card["confusion_matrix"]
    assert abs(metrics["roc_auc"] - card["roc_auc"]) < 1e-4
    for key in ("sensitivity", "specificity", "accuracy", "brier", "ece"):  # the README's table, every number
        assert abs(metrics[key] - card[key]) < 1e-4, key
    assert json.loads((tmp_path / "metrics.json").read_text())["split"] == "test"


def test_another_clinics_folder_is_evaluated_whole_with_split_all(tmp_path, capsys):
    """`--split all` scores every image of a folder of class subfolders (which would otherwise be split 70/10/20 and
    evaluated on a fifth), each as the server scores it."""
    import csv
    import shutil

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from model.bundle import load_bundle
    from model.inference import Predictor
    from tests.conftest import lesion_fixtures
    from train import evaluate

    folder = tmp_path / "clinic"
    for label, paths in (("benign", lesion_fixtures("benign")),
                         ("malignant", lesion_fixtures("malignant") + lesion_fixtures("cam"))):
        (folder / label).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, folder / label / path.name)
    # labels only for the AUC: with the true ones these eight rank perfectly; here two melanomas are called benign
    for name in ("ISIC_0012258.jpg", "ISIC_0012356.jpg"):
        shutil.move(folder / "malignant" / name, folder / "benign" / name)
    metrics = evaluate.main(["--model", str(DEFAULT_BUNDLE), "--data", str(folder), "--split", "all",
                             "--out", str(tmp_path / "eval")])
    images = sorted(folder.rglob("*.jpg"))
    assert (metrics["n"], metrics["split"], metrics["duplicates_dropped"]) == (8, "all", 0)
    # test images, none a copy of what the model trained on: checked against its 2,150 where its data is here
    seen, source = metrics["copies_of_training_images"], Path(load_card(DEFAULT_BUNDLE)["data"]["source"])
    assert seen["checked"] == source.exists() and seen.get("images_compared", 2150) == 2150 and not seen.get("copies")
    with open(tmp_path / "eval" / "predictions.csv", newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(str(p.relative_to(folder)) for p in images)
    predictor = Predictor(load_bundle(DEFAULT_BUNDLE))
    served = predictor.probability(np.stack([predictor.preprocess(p.read_bytes()) for p in images]))
    y = np.array([p.parent.name == "malignant" for p in images])
    for path, probability in zip(images, served):
        assert float(rows[str(path.relative_to(folder))]["probability_malignant"]) == pytest.approx(probability,
                                                                                                   abs=1e-5)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, served), abs=1e-6) and metrics["roc_auc"] < 1.0
    assert "on all (0 duplicates dropped" in capsys.readouterr().out
