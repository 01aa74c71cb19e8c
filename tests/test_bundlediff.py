"""`python -m train.bundlediff`: are two bundles the same, weights, gate file and model card, bit for bit?"""
import json
import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from train import bundlediff

CARD = {"name": "tiny", "created": "2026-12-06T04:00:00", "version": "tiny-20261206-aaaa", "threshold": 0.25,
        "temperature": 1.1, "test": {"roc_auc": 0.8, "seconds_per_image": 0.01},
        "training": {"command": "python -m train --run-dir runs/a", "seconds": 100.0,
                     "code": {"commit": "a" * 40, "modified": False},
                     "arguments": {"seed": 2, "run_dir": "runs/a", "deterministic": True}}}


def write_bundle(folder: Path, seed: int = 0, card: dict | None = None, gate: bool = True) -> Path:
    """A bundle as `python -m train` lays it out: a .keras file saved by Keras, its card and its gate file beside it."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,), name="features"), keras.layers.Dense(3, activation="relu", name="hidden"),
                              keras.layers.Dense(2, name="out")], name="tiny")  # names fixed, as a bundle's are
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.keras"
    model.save(path)
    (folder / "tiny.json").write_text(json.dumps(card or CARD))
    if gate:
        np.savez(folder / "tiny.gate.npz", features=np.arange(12, dtype=np.float32).reshape(3, 4),
                 k=np.array(2), threshold=np.array(0.5))
    return path


def test_two_saves_of_one_model_are_identical_though_the_run_fields_differ(tmp_path, capsys):
    first = write_bundle(tmp_path / "a")
    other_run = json.loads(json.dumps(CARD))
    other_run.update(created="2026-12-07T05:00:00", version="tiny-20261207-bbbb")
    other_run["test"]["seconds_per_image"] = 0.02
    other_run["training"].update(command="python -m train --run-dir runs/b", seconds=120.0,
                                 code={"commit": "b" * 40, "modified": True})
    other_run["training"]["arguments"]["run_dir"] = "runs/b"
    second = write_bundle(tmp_path / "b", card=other_run)
    assert bundlediff.main([str(first), str(second), "--out", str(tmp_path / "diff.json")]) == 0
    out = capsys.readouterr().out
    assert "weights       identical: all 4 arrays, bit for bit" in out
    assert "gate          identical: all 3 arrays" in out and "verdict: identical bundles" in out
    written = json.loads((tmp_path / "diff.json").read_text())
    assert written["identical"] is True
    assert set(written["card"]["run_fields_different"]) == {
        "created", "version", "test.seconds_per_image", "training.command", "training.seconds",
        "training.code.commit", "training.code.modified", "training.arguments.run_dir"}


@pytest.mark.parametrize("which", ["tiny.json", "tiny.keras", "tiny.gate.npz"])
def test_out_naming_a_file_of_either_bundle_is_refused_before_anything_is_written(tmp_path, capsys, which):
    """`--out A.json` wrote the comparison over bundle A's card, and A was refused from then on (checked on the
    shipped bundle: "The model card must list class_names")."""
    first, second = write_bundle(tmp_path / "a"), write_bundle(tmp_path / "b")
    for bundle in (first, second):
        before = {p.name: p.read_bytes() for p in bundle.parent.iterdir()}
        assert bundlediff.main([str(first), str(second), "--out", str(bundle.parent / which)]) == 2
        err = capsys.readouterr().err
        assert f"error: --out {bundle.parent / which} is a file of the bundle {bundle}: writing there would " in err
        assert {p.name: p.read_bytes() for p in bundle.parent.iterdir()} == before


def test_one_changed_weight_is_found_with_its_size(tmp_path, capsys):
    first = write_bundle(tmp_path / "a")
    second = write_bundle(tmp_path / "b")
    model = keras.models.load_model(second, compile=False)
    kernel, bias = model.layers[1].get_weights()
    kernel[0, 0] += 0.125
    model.layers[1].set_weights([kernel, bias])
    model.save(second)
    assert bundlediff.main([str(first), str(second)]) == 1
    out = capsys.readouterr().out
    assert "weights       DIFFERENT: 1 of 4 arrays, largest difference 0.125" in out
    assert "verdict: the bundles differ" in out


def test_a_different_model_differs_in_weights_and_card_and_the_card_fields_that_matter_come_first(tmp_path, capsys):
    first = write_bundle(tmp_path / "a")
    card = json.loads(json.dumps(CARD))
    card.update(threshold=0.3, name="tiny")
    card["test"]["roc_auc"] = 0.75
    card["training"]["arguments"]["seed"] = 3
    second = write_bundle(tmp_path / "b", seed=1, card=card)
    result = bundlediff.compare(first, second)
    assert result["identical"] is False and result["architecture"]["identical"] is True
    assert len(result["weights"]["different"]) == 2  # the kernels; both biases start at zero
    assert list(result["card"]["different"]) == ["test.roc_auc", "threshold", "training.arguments.seed"]
    assert result["card"]["different"]["threshold"] == [0.25, 0.3]
    assert bundlediff.main([str(first), str(second)]) == 1
    out = capsys.readouterr().out
    assert "  test.roc_auc: 0.8 against 0.75" in out and "trained on" not in out  # one machine: no hint


def test_bundles_that_differ_name_the_machines_when_those_differ(tmp_path, capsys):
    cards = [json.loads(json.dumps(CARD)) for _ in range(2)]
    for card, cores in zip(cards, (2, 1)):
        card["training"].update(cpu="AMD EPYC (family 25, model 1; AVX2)", cpu_count=cores)
    first, second = write_bundle(tmp_path / "a", card=cards[0]), write_bundle(tmp_path / "b", seed=1, card=cards[1])
    assert bundlediff.main([str(first), str(second)]) == 1
    assert ("trained on AMD EPYC (family 25, model 1; AVX2), 2 cores against AMD EPYC (family 25, model 1; AVX2), "
            "1 core:") in capsys.readouterr().out
    same = write_bundle(tmp_path / "c", card=cards[1])  # the same weights as `first`, another machine
    assert bundlediff.main([str(first), str(same)]) == 0
    assert "trained on" not in capsys.readouterr().out  # identical: nothing to explain


def test_a_gate_file_on_one_side_only_or_different_arrays_make_the_bundles_differ(tmp_path):
    first = write_bundle(tmp_path / "a")
    second = write_bundle(tmp_path / "b", gate=False)
    result = bundlediff.compare(first, second)
    assert result["gate"] == {"present": "one", "identical": False} and result["identical"] is False
    np.savez(tmp_path / "b" / "tiny.gate.npz", features=np.arange(12, dtype=np.float32).reshape(3, 4),
             k=np.array(2), threshold=np.array(0.75))
    result = bundlediff.compare(first, second)
    assert result["gate"]["different"] == ["threshold"] and result["gate"]["largest_difference"] == 0.25


def test_an_architecture_change_is_found(tmp_path):
    first = write_bundle(tmp_path / "a")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,), name="features"), keras.layers.Dense(3, activation="tanh", name="hidden"),
                              keras.layers.Dense(2, name="out")], name="tiny")
    second = tmp_path / "b" / "tiny.keras"
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    model.save(second)
    result = bundlediff.compare(first, second)
    assert result["architecture"]["identical"] is False and result["weights"]["identical"] is True
    assert result["identical"] is False


@pytest.mark.parametrize("case, sentence", [
    ("missing", "does not exist"),
    ("not_a_bundle", "is not a Keras bundle"),
    ("no_card", "has no model card beside it (tiny.json)"),
    ("bad_weights", "is not a Keras bundle"),
])
def test_files_it_cannot_read_get_a_sentence_and_exit_2(tmp_path, capsys, case, sentence):
    good = write_bundle(tmp_path / "a")
    if case == "missing":
        other = tmp_path / "nowhere" / "tiny.keras"
    elif case == "not_a_bundle":
        other = tmp_path / "text.keras"
        other.write_text("not a zip")
    elif case == "no_card":
        other = write_bundle(tmp_path / "b")
        (tmp_path / "b" / "tiny.json").unlink()
    else:  # a zip with the right names, the weights file not HDF5
        other = write_bundle(tmp_path / "b")
        with zipfile.ZipFile(good) as z:
            config = z.read("config.json")
        with zipfile.ZipFile(other, "w") as z:
            z.writestr("config.json", config)
            z.writestr("model.weights.h5", b"not hdf5")
    assert bundlediff.main([str(good), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and sentence in err and "Traceback" not in err
