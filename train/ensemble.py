"""Evaluate an ensemble of trained bundles: is a small ensemble worth shipping?

    python -m train.ensemble --model runs/a/model.keras --model runs/b/model.keras \
        --data ../shared/data/isic2017 [--split test]

Each member runs on its own preprocessing (its card's input size); the members' softmax outputs
are averaged in log space (a geometric mean, as for test-time views), then, as `python -m train`
does for one network, a temperature is fitted and the threshold for the target sensitivity chosen
on the validation split. Prints each member's ROC AUC and the ensemble's full metrics on the
evaluated split (duplicates of train/val images dropped), and writes metrics.json.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from model.bundle import load_bundle, load_card
from model.inference import Predictor, average_views, calibrated_malignant_probability
from train import data as data_mod
from train.cli import command, random_seed, share, writable
from train.metrics import classification_metrics, fit_temperature, format_table, threshold_for_sensitivity

log = logging.getLogger("train.ensemble")


def raw_split(predictor: Predictor, paths, batch_size: int = 32) -> np.ndarray:
    arrays = data_mod.load_images(paths, predictor.spec)
    return np.concatenate([predictor.raw_probabilities(arrays[i : i + batch_size])
                           for i in range(0, len(arrays), batch_size)])


@command
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m train.ensemble", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="a member bundle (repeat for each)")
    parser.add_argument("--data", required=True, help="data folder or label CSV, as for training")
    parser.add_argument("--split", default="test", choices=("val", "test"), help="split to evaluate (default: test)")
    parser.add_argument("--target-sensitivity", type=share, default=0.9)
    parser.add_argument("--images", default=None, help="image folder for a CSV (default: the CSV's folder)")
    parser.add_argument("--seed", type=random_seed, default=None,
                        help=data_mod.SEED_HELP.replace("bundle's", "first member's"))
    parser.add_argument("--out", default="runs/ensemble", help="output folder (default: runs/ensemble)")
    args = parser.parse_args(argv)
    out = writable(args.out)

    seed = data_mod.bundle_seed(args.seed, *(load_card(m) for m in args.model))
    dataset = data_mod.discover(args.data, args.images, seed=seed)
    dataset.duplicates = data_mod.find_duplicates(dataset, known=Path(args.data) / "NEAR_DUPLICATES.csv")
    val, evaluated = dataset.split("val"), dataset.split(args.split)
    y_val, y = np.asarray(val.labels), np.asarray(evaluated.labels)
    raw_val, raw, members = [], [], []
    for path in args.model:
        predictor = Predictor(load_bundle(path))
        raw_val.append(raw_split(predictor, val.paths))
        raw.append(raw_split(predictor, evaluated.paths))
        auc = float(roc_auc_score(y, raw[-1][:, 1]))
        members.append({"model": path, "image_size": predictor.spec.image_size, "roc_auc": auc})
        log.info("member %s: %s ROC AUC %.4f", path, args.split, auc)
    both_val = average_views(np.concatenate(raw_val), len(raw_val))
    both = average_views(np.concatenate(raw), len(raw))
    temperature = fit_temperature(both_val, y_val)
    threshold = threshold_for_sensitivity(calibrated_malignant_probability(both_val, temperature), y_val,
                                          args.target_sensitivity)
    p = calibrated_malignant_probability(both, temperature)
    metrics = classification_metrics(p, y, threshold)
    metrics.update({"split": args.split, "members": members, "temperature": temperature,
                    "duplicates_dropped": len(dataset.splits[args.split]) - len(evaluated)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for m in members:
        print(f"member {m['model']} ({m['image_size']} px): ROC AUC {m['roc_auc']:.3f}")
    print(format_table(metrics, f"ensemble of {len(members)} on {args.split} "
                                f"({metrics['duplicates_dropped']} duplicates dropped)"))
    print(f"\nwritten: {out}/metrics.json")
    return metrics


if __name__ == "__main__":
    main()
