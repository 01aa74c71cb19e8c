"""Fit a bundle's operating point again on a validation split: temperature, threshold, indeterminate band.

    python -m train.calibrate --model model/shipped/melanoma_efficientnet.keras --data ../shared/data/isic2017

Training does this once at its end (`python -m train`); this command repeats it on a trained bundle,
through the serving path, for a new threshold rule, another target sensitivity, a validation split
from another clinic, or other views to serve (`--view-turns 45`: the image turned 45 degrees, resampled as
training turns its images; `0,45`: that view and the upright one, averaged). The calibration is refit on what
the bundle will then serve; the gate then reads the first view's features. It rewrites the model card (the
network is untouched) and says so in the card.
Refresh the card's test metrics afterwards with `python -m train.evaluate ... --update-card`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import shlex
import sys
from pathlib import Path

import numpy as np

from model.bundle import card_path, load_bundle, write_card
from model.inference import Predictor
from model.turn import parse_turns
from train import data as data_mod
from train.cli import command, random_seed, share, writable
from train.gate import indeterminate_band
from train.metrics import (THRESHOLD_RULE, classification_metrics, fit_temperature, fit_temperature_and_bias,
                           threshold_for_sensitivity)

CALIBRATIONS = ("temperature", "platt")

log = logging.getLogger("train.calibrate")


def operating_point(predictor: Predictor, x_val: np.ndarray, y_val: np.ndarray, target_sensitivity: float,
                    calibration: str = "temperature") -> tuple[dict, np.ndarray]:
    """Fit the calibration (on the raw softmax outputs of the validation images: a temperature, or for "platt" a
    temperature and a bias on the log-odds) and then the threshold (on the calibrated probabilities), and set them
    on `predictor`. Returns the model card's fields, validation metrics included, and the calibrated validation
    probabilities."""
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, not {calibration!r}")
    raw_val = np.concatenate([predictor.raw_probabilities(x_val[i : i + 32]) for i in range(0, len(x_val), 32)])
    if calibration == "platt":
        predictor.temperature, predictor.logit_bias = fit_temperature_and_bias(raw_val, y_val)
    else:
        predictor.temperature, predictor.logit_bias = fit_temperature(raw_val, y_val), 0.0
    p_val = predictor.calibrated(raw_val)
    predictor.threshold = threshold_for_sensitivity(p_val, y_val, target_sensitivity)
    validation = classification_metrics(p_val, y_val, predictor.threshold, bootstrap=500)
    validation.pop("reliability_bins", None)
    return {"calibration_method": calibration, "temperature": predictor.temperature,
            "logit_bias": predictor.logit_bias, "threshold": predictor.threshold,
            "target_sensitivity": target_sensitivity, "threshold_rule": THRESHOLD_RULE,
            "validation": validation}, p_val


def validation_split(dataset: data_mod.Dataset, card: dict, data) -> tuple[data_mod.Split, int]:
    """The validation images for a bundle (see `dataset_as_trained`) and how many came from the training split."""
    drawn, moved = data_mod.dataset_as_trained(dataset, card, data)
    return drawn.splits["val"], moved


def recalibrate(model: str | Path, data: str | Path, target_sensitivity: float, images=None, seed: int | None = None,
                command: str | None = None, calibration: str = "temperature", view_turns=None) -> dict:
    """Refit the operating point of the bundle at MODEL on DATA's validation split (serving `view_turns` from now on,
    when given); returns the new card."""
    bundle = load_bundle(model)
    predictor = Predictor(bundle)
    card = bundle.card
    dataset = data_mod.discover(data, images, seed=data_mod.bundle_seed(seed, card))
    val, moved = validation_split(dataset, card, data)
    y_val = np.asarray(val.labels)  # discover() has checked that both classes are there
    x_val = data_mod.load_images(val.paths, predictor.spec)
    before = {k: card.get(k) for k in ("calibration_method", "temperature", "logit_bias", "threshold",
                                       "target_sensitivity", "view_turns") if k in card}
    if view_turns is not None:
        predictor.turns = parse_turns(view_turns)
        card["view_turns"] = list(predictor.turns)
    point, p_val = operating_point(predictor, x_val, y_val, target_sensitivity, calibration)
    card.update(point)
    if "indeterminate_band" in card:
        fraction = float(card.get("indeterminate_band_fraction_of_validation", 0.15))
        card["indeterminate_band"] = indeterminate_band(p_val, predictor.threshold, fraction)
    card["calibration"] = {
        "command": command or "python -m train.calibrate " + shlex.join(
            ["--model", str(model), "--data", str(data), "--target-sensitivity", str(target_sensitivity),
             "--calibration", calibration]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": str(data),
        "data_hash": dataset.data_hash(),
        "validation_images": int(len(y_val)),
        "validation_images_from_train": moved,
        "validation_malignant": int(y_val.sum()),
        "before": before,
    }
    write_card(model, card)
    log.info("temperature %.3f -> %.3f, logit bias %.3f -> %.3f, threshold %.4f -> %.4f (target sensitivity %.2f, "
             "%d validation melanomas, %d validation images moved from training)",
             before.get("temperature") or float("nan"), point["temperature"],
             before.get("logit_bias", 0.0), point["logit_bias"], before.get("threshold") or float("nan"),
             point["threshold"], target_sensitivity, int(y_val.sum()), moved)
    return card


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="bundle .keras file (its .json card is rewritten)")
    parser.add_argument("--data", required=True, help="data folder or label CSV with a validation split")
    parser.add_argument("--images", default=None, help="image folder for a CSV (default: the CSV's folder)")
    parser.add_argument("--target-sensitivity", type=share, default=0.90,
                        help="expected sensitivity for malignant the threshold is fixed for (default: 0.90)")
    parser.add_argument("--seed", type=random_seed, default=None, help=data_mod.SEED_HELP)
    parser.add_argument("--calibration", choices=CALIBRATIONS, default="temperature",
                        help="temperature: one temperature on the log-odds; platt: a temperature and a bias, for "
                             "bundles trained with --auc-loss (default: temperature)")
    parser.add_argument("--view-turns", default=None,
                        help="views the bundle serves from now on, degrees separated by commas, averaged (e.g. 45, or "
                             "0,45; the gate reads the first; default: keep the card's, or the upright view alone)")
    args = parser.parse_args(argv)
    if args.view_turns is not None:
        try:
            args.view_turns = parse_turns(args.view_turns)
        except ValueError as exc:
            parser.error(f"--view-turns: {exc}")
    if not 0.0 < args.target_sensitivity < 1.0:
        parser.error(f"--target-sensitivity must be between 0 and 1, not {args.target_sensitivity}")
    return args


@command
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if not Path(args.model).is_file():
        print(f"error: no bundle at {args.model}", file=sys.stderr)
        raise SystemExit(2)
    command = "python -m train.calibrate " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        writable(Path(args.model).parent, "--model", card_path(args.model))  # its card, rewritten after the work
        card = recalibrate(args.model, args.data, args.target_sensitivity, args.images, args.seed, command,
                           args.calibration, args.view_turns)
    except data_mod.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    v = card["validation"]
    print(f"threshold {card['threshold']:.4f}, temperature {card['temperature']:.3f}, "
          f"logit bias {card['logit_bias']:.3f}, views {card.get('view_turns', [0.0])}; on validation: "
          f"sensitivity {v['sensitivity']:.3f}, specificity {v['specificity']:.3f}. Refresh the test metrics with "
          f"python -m train.evaluate {shlex.join(['--model', str(args.model), '--data', str(args.data)])} "
          f"--update-card")
    return card


if __name__ == "__main__":
    main()
