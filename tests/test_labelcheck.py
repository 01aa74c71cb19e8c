"""`python -m train.labelcheck`: does a split's label sequence line up with a model's scores only as mapped?"""
import json
from pathlib import Path

import numpy as np
import pytest

from train import labelcheck
from train.evaluate import write_predictions
from train.metrics import roc_auc

N = 600


def scored(seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """600 images named in sorted order, about a fifth malignant, scored by a model of AUC about 0.85."""
    rng = np.random.default_rng(seed)
    y = (rng.random(N) < 0.2).astype(np.int64)
    p = 1.0 / (1.0 + np.exp(-(1.5 * y + rng.normal(0.0, 1.0, N) - 1.5)))
    return [f"ISIC_{12000 + i:07d}" for i in range(N)], y, p


def write(tmp_path: Path, names, y, p, order=None) -> Path:
    """A predictions.csv as `python -m train.evaluate` writes it, rows in the given order."""
    order = np.arange(len(y)) if order is None else order
    root = tmp_path / "data"
    paths = [root / "test" / ("malignant" if y[i] else "benign") / f"{names[i]}.jpg" for i in order]
    path = tmp_path / "predictions.csv"
    write_predictions(path, paths, root, p[order], y[order], 0.5)
    return path


def test_labels_as_mapped_are_consistent_and_every_other_offset_ranks_lower(tmp_path, capsys):
    names, y, p = scored()
    shuffled = np.random.default_rng(1).permutation(N)  # the file's row order does not matter: it sorts by name
    report = labelcheck.main(["--predictions", str(write(tmp_path, names, y, p, shuffled))])
    assert report["consistent"] is True
    assert report["auc_as_mapped"] == pytest.approx(roc_auc(y, p))
    assert report["other_offsets"]["count"] == N - 1 and report["other_offsets"]["at_or_above_as_mapped"] == 0
    assert report["other_offsets"]["max_auc"] < report["auc_as_mapped"] - 0.15
    assert [b["malignant"] for b in report["blocks"]][:-1] == [20] * (len(report["blocks"]) - 1)
    assert sum(b["images"] for b in report["blocks"]) == N
    assert json.loads((tmp_path / "labelcheck.json").read_text())["consistent"] is True
    assert "consistent: the mapping used ranks above every other offset" in capsys.readouterr().out


def test_a_mapping_one_row_off_from_some_row_on_is_found_from_there(tmp_path, capsys):
    names, y, p = scored()
    mapped = y.copy()
    mapped[300:] = y[299:-1]  # a row missing from the ground truth at 300: each later image gets its neighbour's label
    report = labelcheck.main(["--predictions", str(write(tmp_path, names, mapped, p))])
    assert report["consistent"] is False
    late = [t for t, b in zip(report["tails"], report["blocks"]) if int(b["first"][5:]) - 12000 >= 300]
    assert late and all(t["from"] in report["tails_not_best_as_mapped"] for t in late)
    assert all(t["best_other_offset"] == -1 for t in late)  # the offset that undoes the missing row
    assert report["tails"][0]["from"] == names[0]
    assert "NOT consistent" in capsys.readouterr().out


def test_labels_off_everywhere_rank_below_another_offset(tmp_path):
    names, y, p = scored()
    report = labelcheck.main(["--predictions", str(write(tmp_path, names, np.roll(y, 7), p))])
    assert report["consistent"] is False
    assert report["other_offsets"]["max_at_offset"] == -7
    assert report["other_offsets"]["at_or_above_as_mapped"] >= 1


def test_blocks_end_at_every_kth_malignant_image_and_a_small_remainder_joins_the_last():
    y = np.zeros(100, dtype=np.int64)
    y[[5, 9, 20, 30, 41, 60, 70]] = 1
    assert labelcheck.block_bounds(y, 2) == [(0, 10), (10, 31), (31, 61), (61, 100)]  # the 7th: half a block
    assert labelcheck.block_bounds(y, 3) == [(0, 21), (21, 100)]  # the 7th alone is under half a block: it joins
    assert labelcheck.block_bounds(y, 4) == [(0, 31), (31, 100)]
    assert labelcheck.block_bounds(y, 7) == [(0, 100)]
    assert labelcheck.block_bounds(y, 20) == [(0, 100)]


@pytest.mark.parametrize("content, sentence", [
    (None, "cannot read"),
    ("a,b\n1,2\n", "is not a predictions file of python -m train.evaluate"),
    ("image,label,probability_malignant,flagged\nx.jpg,benign,0.1,0\ny.jpg,benign,0.2,0\n", "one class only"),
    ("image,label,probability_malignant,flagged\nx.jpg,melanoma,0.1,0\n", "is not one of benign, malignant"),
])
def test_a_file_it_cannot_use_gets_a_sentence_and_status_2(tmp_path, capsys, content, sentence):
    path = tmp_path / "predictions.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        labelcheck.main(["--predictions", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and sentence in err and "Traceback" not in err


def test_a_last_stretch_of_one_class_is_said_not_a_key_error(tmp_path, capsys):
    """Sorted by file name, the images from some block to the end held one class only (10 benign then 45 malignant,
    as another clinic's folder of --split all may): labelcheck stopped with KeyError: 0."""
    names = [f"img_{i:03d}" for i in range(55)]
    y = np.array([0] * 10 + [1] * 45)
    p = np.linspace(0.1, 0.9, 55)
    report = labelcheck.main(["--predictions", str(write(tmp_path, names, y, p)), "--per-block", "5"])
    assert report["tails"][-1]["auc_as_mapped"] is None and len(report["tails"]) == len(report["blocks"])
    assert "one class only" in capsys.readouterr().out
