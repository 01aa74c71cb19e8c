"""Evaluate a model bundle on a data split.

    python -m train.evaluate --model model/shipped/melanoma_efficientnet.keras \
        --data ../shared/data/isic2017 --split test

Prints a table, writes metrics.json, ROC / PR / confusion / reliability PNGs and report.md (train.report: the same
evaluation as one page, in words); with `--diagnosis CSV`, also a
breakdown by finer diagnosis (melanoma, nevus, seborrheic keratosis for ISIC 2017); with `--by-cue`, a breakdown by
the shortcut cues of `python -m train.audit` (dermoscope ring, skin-marker ink): for each label, the share flagged
with and without the cue, so that a cue which sways the network shows. The test split is
evaluated without the images that have an exact or near duplicate in train or val.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from model.bundle import CLASS_NAMES, card_path, load_bundle, load_card, write_card
from model.inference import Predictor
from train import data as data_mod
from train.cli import command, random_seed, writable
from train.metrics import classification_metrics, diagnosis_breakdown, format_diagnosis_table, format_table
from train.plots import evaluation_figures, sample_grid
from train.report import write_report

log = logging.getLogger("train.evaluate")


def predict_split(predictor: Predictor, paths, tta_views: int | None = None, batch_size: int = 32) -> np.ndarray:
    """Calibrated probability of malignancy for every file, through the serving path."""
    arrays = data_mod.load_images(paths, predictor.spec)
    out = [predictor.probability(arrays[i : i + batch_size], tta_views) for i in range(0, len(arrays), batch_size)]
    return np.concatenate(out)


def evaluate_split(predictor: Predictor, dataset: data_mod.Dataset, split: str, tta_views: int | None = None,
                   drop_duplicates: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    s = dataset.split(split, drop_duplicates=drop_duplicates)
    y = np.asarray(s.labels)
    start = time.perf_counter()
    p = predict_split(predictor, s.paths, tta_views)
    seconds = time.perf_counter() - start
    metrics = classification_metrics(p, y, predictor.threshold)
    metrics.update({
        "split": split,
        "duplicates_dropped": len(dataset.split(split, drop_duplicates=False)) - len(s),
        "tta_views": int(tta_views or predictor.tta_views),
        "seconds_per_image": seconds / max(len(y), 1),
    })
    return metrics, p, y


def _copies_line(seen: dict, copies: set[str], kept: bool) -> str:
    if seen.get("own_data"):
        return "its own data (copies across its splits: see the duplicates dropped)"
    if not seen["checked"]:
        return f"not checked: {seen['why']}"
    found = f"{len(copies)} among {seen['images_compared']} images of {seen['source']}"
    return found + (("; kept (--keep-duplicates)" if kept else "; left out") if copies else "")


def cue_groups(labels, flags) -> list[str]:
    """One group name per image, 'benign' or 'malignant' followed by 'with cue' or 'without cue'."""
    return [f"{'malignant' if y else 'benign'}, {'with' if flag else 'without'} cue" for y, flag in zip(labels, flags)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[1])
    parser.add_argument("--model", required=True, help="bundle .keras file (its .json card beside it)")
    parser.add_argument("--data", required=True, help="data folder or label CSV, as for training")
    parser.add_argument("--images", default=None, help="image folder for a CSV (default: the CSV's folder)")
    parser.add_argument("--split", default="test", choices=(*data_mod.SPLITS, data_mod.ALL),
                        help="split to evaluate; all = every image of the data, e.g. another clinic's images for a "
                             "bundle trained elsewhere (default: test). On data other than the bundle's own, copies "
                             "of its training images are left out where its training data is on this machine")
    parser.add_argument("--tta", type=int, default=None, choices=(1, 2, 4, 8),
                        help="test-time augmentation views (default: the bundle's tta_views)")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="keep test images that duplicate train/val images, and copies of the bundle's "
                             "training images (default: drop them)")
    parser.add_argument("--seed", type=random_seed, default=None, help=data_mod.SEED_HELP)
    parser.add_argument("--runtime", default="auto", choices=("auto", "openvino", "tensorflow"),
                        help="forward-pass runtime (default: auto, as the server: OpenVINO when installed)")
    parser.add_argument("--diagnosis", default=None, metavar="CSV",
                        help="also break the results down by finer diagnosis (CSV with image_id or path, and "
                             "diagnosis; e.g. ../shared/data/isic2017/DIAGNOSIS.csv): share flagged and AUC against "
                             "the malignant images, per diagnosis")
    parser.add_argument("--by-cue", action="store_true",
                        help="also break the results down by the shortcut cues of python -m train.audit: for each "
                             "label, the share flagged with and without each cue, and the AUC of the benign images "
                             "with and without it against all malignant ones")
    parser.add_argument("--out", default=None, help="output folder (default: runs/eval_<bundle>_<split>)")
    parser.add_argument("--update-card", action="store_true",
                        help="write these test metrics into the bundle's model card (test split of the data the "
                             "bundle was trained on, duplicates dropped, the bundle's TTA), e.g. after a change to "
                             "the runtime or the preprocessing")
    return parser.parse_args(argv)


def write_predictions(path: Path, paths, root: Path, p: np.ndarray, y: np.ndarray, threshold: float,
                      diagnoses=None) -> None:
    """One row per evaluated image, in the order scored: its path under the data folder, true label, calibrated
    probability of melanoma, whether it is flagged at the bundle's threshold (and its diagnosis when given)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "probability_malignant", "flagged"] + (["diagnosis"] if diagnoses else []))
        for i, (image, pi, yi) in enumerate(zip(paths, p, y)):
            row = [data_mod.relative_path(Path(image), Path(root)), CLASS_NAMES[int(yi)], f"{pi:.6f}",
                   int(pi >= threshold)]
            writer.writerow(row + ([diagnoses[i]] if diagnoses else []))


@command
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    out = writable(args.out or f"runs/eval_{Path(args.model).stem}_{args.split}")
    if args.update_card:  # rewritten after the evaluation: checked now
        writable(Path(args.model).parent, "--update-card", card_path(args.model))
    bundle = load_bundle(args.model)
    earlier = out / "metrics.json"
    if earlier.is_file():  # the default folder is named by the bundle's file name, which every run gives alike
        try:
            what = f"of {json.loads(earlier.read_text()).get('model', 'a bundle')}"
        except (OSError, ValueError):
            what = "from before"
        log.warning("%s holds an evaluation %s: this one replaces it (--out to keep both)", out, what)
    predictor = Predictor(bundle, runtime=args.runtime)
    dataset = data_mod.discover(args.data, args.images, seed=data_mod.bundle_seed(args.seed, bundle.card),
                                whole=args.split == data_mod.ALL)
    data_mod.scorable(dataset.split(args.split), args.split, args.data)
    if args.update_card:
        _check_card_update(args, bundle.card, dataset)
    if args.split != data_mod.ALL:  # duplicates across this data's own splits; under `all` no split is held out
        dataset.duplicates = data_mod.find_duplicates(dataset, known=Path(args.data) / "NEAR_DUPLICATES.csv")
    data_hash = dataset.data_hash()
    [seen], copies = data_mod.leave_out_copies_of_training_images({str(args.model): bundle.card}, dataset, data_hash,
                                                                  args.split, args.keep_duplicates)
    data_mod.not_own_data_under_all([seen], args.split, args.data)
    if copies and not args.keep_duplicates:
        data_mod.scorable(dataset.split(args.split), args.split, args.data)
    paths = dataset.split(args.split, drop_duplicates=not args.keep_duplicates).paths
    diagnoses = None
    if args.diagnosis:
        try:
            diagnoses = data_mod.diagnoses_for(paths, data_mod.read_diagnoses(args.diagnosis), args.diagnosis,
                                               args.split)
        except data_mod.DataError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    metrics, p, y = evaluate_split(predictor, dataset, args.split, args.tta, not args.keep_duplicates)
    if diagnoses is not None:
        metrics["by_diagnosis"] = diagnosis_breakdown(p, y, diagnoses, predictor.threshold)
        metrics["diagnosis_csv"] = str(args.diagnosis)
    if args.by_cue:
        from train.audit import cue_flags

        metrics["by_cue"] = {name: diagnosis_breakdown(p, y, cue_groups(y, flags), predictor.threshold)
                             for name, flags in cue_flags(paths).items()}
    metrics.update({"model": str(args.model), "model_version": bundle.version, "data": str(args.data),
                    "data_hash": data_hash, "runtime": predictor.runtime,
                    "copies_of_training_images": {**seen, "left_out": bool(copies) and not args.keep_duplicates}})
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    np.savez(out / "predictions.npz", probability_malignant=p, label=y)
    write_predictions(out / "predictions.csv", paths, dataset.root, p, y, predictor.threshold, diagnoses)
    evaluation_figures(p, y, metrics, out)
    sample_grid(paths, p, y, predictor.threshold, out / "samples.png")
    title = (f"{bundle.name} on {args.split} ({metrics['duplicates_dropped']} duplicates dropped, "
             f"TTA {metrics['tta_views']} views)")
    print(format_table(metrics, title))
    tables = {}
    if diagnoses is not None:
        tables["By diagnosis"] = format_diagnosis_table(metrics["by_diagnosis"], predictor.threshold)
        print("\n" + tables["By diagnosis"])
    for name, rows in metrics.get("by_cue", {}).items():
        text = format_diagnosis_table(rows, predictor.threshold).replace("diagnosis", "group    ", 1)
        tables[f"By cue: {name}"] = text
        print(f"\n{name}:\n{text}")
    invoked = "python -m train.evaluate " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_report(out, metrics, title, invoked,
                 about={"model": f"`{args.model}` (version {bundle.version})", "data": f"`{args.data}` (hash "
                        f"{metrics['data_hash'][:12]}), split {args.split}", "runtime": predictor.runtime,
                        "copies of the bundle's training images": _copies_line(seen, copies, args.keep_duplicates)},
                 tables=tables)
    print(f"\nwritten: {out}/metrics.json, predictions.csv, report.md and PNGs")
    if args.update_card:
        card = load_card(args.model)
        card["test"] = {k: v for k, v in metrics.items() if k != "reliability_bins"}
        card["test"]["evaluated_by"] = invoked
        write_card(args.model, card)
        print(f"model card updated: {card_path(args.model)}")
    return metrics


def _check_card_update(args, card: dict, dataset: data_mod.Dataset) -> None:
    """The card's test metrics describe one thing: the test split of the training data, as the server runs it."""
    problems = []
    if args.split != "test":
        problems.append(f"--split is {args.split}, not test")
    if args.keep_duplicates:
        problems.append("--keep-duplicates is set")
    if args.tta not in (None, card.get("tta_views", 1)):
        problems.append(f"--tta {args.tta} differs from the bundle's {card.get('tta_views', 1)} views")
    trained_on = (card.get("data") or {}).get("hash")
    if trained_on != dataset.data_hash():
        problems.append(f"{args.data} is not the data the bundle was trained on (data hash differs)")
    if problems:
        print("error: cannot update the model card: " + "; ".join(problems) + ". Drop --update-card, or evaluate "
              "the bundle's own test split.", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
