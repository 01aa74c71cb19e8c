"""The shipped bundle itself: a complete card, and (where the data set is present) the card's test
metrics reproduced by the evaluation code."""
import json

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
