"""How two threshold rules hold up on new data: fit each on validation, measure it on test, over many bundles.

    python -m train.thresholds --model runs/a/melanoma_efficientnet.keras --model runs/b/... \
        --data ../shared/data/isic2017

Each bundle's calibrated probabilities (its own temperature, the serving path) on the validation and
test splits; the threshold for `--target-sensitivity` fixed on validation by

- `empirical`: the highest threshold keeping the target share of the validation melanomas (the rule
  before `train.metrics.threshold_for_sensitivity` changed), and
- `unbiased`: `threshold_for_sensitivity`, whose expected sensitivity on new melanomas is the target;

then sensitivity and specificity on test (duplicates dropped). One bundle's test sensitivity is noisy;
the mean over several training runs shows which rule keeps its promise.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from model.bundle import load_bundle, load_card
from model.inference import Predictor
from train import data as data_mod
from train.cli import command, random_seed, share, writable
from train.evaluate import predict_split
from train.metrics import threshold_for_sensitivity

log = logging.getLogger("train.thresholds")


def empirical_threshold(p: np.ndarray, y: np.ndarray, target: float) -> float:
    """The highest threshold at which at least `target` of these positives score at or above it."""
    positives = np.sort(p[y == 1])
    return float(positives[int(np.floor((1.0 - target) * len(positives) + 1e-9))])


RULES = {"empirical": empirical_threshold, "unbiased": threshold_for_sensitivity}


def sensitivity_specificity(p: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = p >= threshold
    return float(flagged[y == 1].mean()), float((~flagged[y == 0]).mean())


def study(models: list[str], dataset: data_mod.Dataset, target: float) -> list[dict]:
    rows = []
    for model in models:
        predictor = Predictor(load_bundle(model))
        scores = {}
        for split in ("val", "test"):
            s = dataset.split(split)
            scores[split] = (predict_split(predictor, s.paths), np.asarray(s.labels))
        row = {"model": model}
        for name, rule in RULES.items():
            threshold = rule(*scores["val"], target)
            row[name] = dict(zip(("threshold", "sensitivity", "specificity"),
                                 (threshold, *sensitivity_specificity(*scores["test"], threshold))))
        rows.append(row)
        log.info("%s: %s", model, {k: round(row[k]["sensitivity"], 3) for k in RULES})
    return rows


def summary(rows: list[dict], target: float) -> dict:
    out = {}
    for name in RULES:
        sens = np.array([r[name]["sensitivity"] for r in rows])
        spec = np.array([r[name]["specificity"] for r in rows])
        out[name] = {"mean_sensitivity": float(sens.mean()), "mean_specificity": float(spec.mean()),
                     "bundles_at_or_above_target": int((sens >= target - 1e-9).sum()), "bundles": len(rows)}
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.thresholds", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="a bundle .keras file (repeat for more)")
    parser.add_argument("--data", required=True, help="data folder or label CSV with val and test splits")
    parser.add_argument("--images", default=None, help="image folder for a CSV (default: the CSV's folder)")
    parser.add_argument("--target-sensitivity", type=share, default=0.90, help="(default: 0.90)")
    parser.add_argument("--seed", type=random_seed, default=None, help=data_mod.SEED_HELP)
    parser.add_argument("--out", default="runs/thresholds", help="output folder (default: runs/thresholds)")
    return parser.parse_args(argv)


@command
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    out = writable(args.out)
    seed = data_mod.bundle_seed(args.seed, *(load_card(m) for m in args.model))
    dataset = data_mod.discover(args.data, args.images, seed=seed)
    known = Path(args.data) / "NEAR_DUPLICATES.csv" if Path(args.data).is_dir() else None
    dataset.duplicates = data_mod.find_duplicates(dataset, known=known)
    rows = study(args.model, dataset, args.target_sensitivity)
    result = {"target_sensitivity": args.target_sensitivity, "data": str(args.data), "rows": rows,
              "summary": summary(rows, args.target_sensitivity)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "thresholds.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| bundle | empirical rule: test sens / spec | unbiased rule: test sens / spec |")
    print("| --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(f"{r[k]['sensitivity']:.3f} / {r[k]['specificity']:.3f}"
                                                for k in RULES) + " |")
    s = result["summary"]
    print("| **mean** | " + " | ".join(f"**{s[k]['mean_sensitivity']:.3f}** / {s[k]['mean_specificity']:.3f} "
                                        f"({s[k]['bundles_at_or_above_target']} of {s[k]['bundles']} at or above "
                                        f"{args.target_sensitivity:.2f})" for k in RULES) + " |")
    print(f"written: {out / 'thresholds.json'}")
    return result


if __name__ == "__main__":
    main()
