"""The paper's comparison: handcrafted features with SVM, k-NN and random forest, against the network.

    python -m train.baselines --data ../shared/data/isic2017 \
        --network-metrics runs/eval_melanoma_efficientnet_test/metrics.json

Same data discovery, splits and duplicate handling as training; features from the same
preprocessed input as the network (train.features); hyperparameters chosen on the validation
split only; class imbalance handled with balanced class weights (k-NN: distance weighting);
the threshold for each classifier fixed on validation for the same target sensitivity as the
network; every model evaluated on the test split with the same metrics code. Writes
baselines.json and comparison.png (accuracy, F1 and AUC with its 95% interval).

With `--stack BUNDLE`, also: do the handcrafted features add to the network? The handcrafted model with the best
validation AUC is refitted on the bundle's own training images, a logistic regression on the two logits (network,
handcrafted) is fitted on the bundle's validation images (its gain there measured by repeated 5-fold
cross-validation first), its threshold set there too, and the test split scores it once, paired against the network.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from model.preprocessing import PreprocessSpec
from train import data as data_mod
from train.cli import command, random_seed, ranged, share, writable
from train.features import handcrafted
from train.metrics import classification_metrics, format_table, paired_auc_difference, threshold_for_sensitivity

log = logging.getLogger("train.baselines")

GRIDS = {
    "svm_rbf": (lambda C, gamma: make_pipeline(StandardScaler(), CalibratedClassifierCV(
        SVC(C=C, gamma=gamma, kernel="rbf", class_weight="balanced", random_state=0), ensemble=False)),
                {"C": [0.3, 1, 3, 10], "gamma": ["scale", 0.003, 0.01, 0.03]}),
    "knn": (lambda n_neighbors: make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors, weights="distance")),
            {"n_neighbors": [5, 11, 21, 41, 81]}),
    "random_forest": (lambda max_depth, min_samples_leaf: RandomForestClassifier(
        n_estimators=400, max_depth=max_depth, min_samples_leaf=min_samples_leaf, class_weight="balanced_subsample",
        n_jobs=-1, random_state=0), {"max_depth": [None, 8, 16], "min_samples_leaf": [1, 3, 10]}),
}


def feature_matrix(paths, spec: PreprocessSpec) -> np.ndarray:
    arrays = data_mod.load_images(paths, spec)
    return np.stack([handcrafted(a) for a in arrays])


def select(name: str, x_tr, y_tr, x_va, y_va):
    """Grid search on the validation split; returns the best fitted model, its params and val AUC."""
    make, grid = GRIDS[name]
    best = (-1.0, None, None)
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values))
        if params.get("n_neighbors", 0) >= len(x_tr):
            continue
        model = make(**params).fit(x_tr, y_tr)
        auc = roc_auc_score(y_va, model.predict_proba(x_va)[:, 1])
        if auc > best[0]:
            best = (auc, model, params)
    return best[1], best[2], best[0]


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def stack_cv_gain(network: np.ndarray, handcrafted: np.ndarray, y: np.ndarray, repeats: int = 20) -> dict:
    """Validation AUC of the two-logit stack, each image scored by a fit on the other folds (5-fold, `repeats`
    shuffles), minus the network's own AUC on the same images: the gain the stack can expect, before any test."""
    x, alone = np.c_[network, handcrafted], roc_auc_score(y, network)
    gains = []
    for rep in range(repeats):
        scores = np.zeros(len(y))
        for fit, held in StratifiedKFold(5, shuffle=True, random_state=rep).split(x, y):
            scores[held] = LogisticRegression().fit(x[fit], y[fit]).decision_function(x[held])
        gains.append(roc_auc_score(y, scores) - alone)
    return {"mean": float(np.mean(gains)), "sd": float(np.std(gains)), "repeats": repeats, "folds": 5}


def stacked(args, bundle, report: dict, features, base: data_mod.Dataset) -> dict:
    """The network and the best handcrafted model together (see the module's docstring): the report's row. `base`:
    the data as `run` read it, with its duplicates; redrawn only where the bundle's seed draws other splits."""
    from model.inference import Predictor
    from train.evaluate import predict_split

    card = bundle.card
    seed = int(card.get("training", {}).get("arguments", {}).get("seed", args.seed))
    own_splits = base.layout in ("split_folders", "csv_split")  # no seed draws them
    dataset = base if own_splits or seed == args.seed else data_mod.discover(args.data, args.images, seed=seed)
    dataset, moved = data_mod.dataset_as_trained(dataset, card, args.data)
    if dataset is not base and not dataset.duplicates:  # dataset_as_trained finds them when it moves images
        known = Path(args.data) / "NEAR_DUPLICATES.csv" if Path(args.data).is_dir() else None
        dataset.duplicates = data_mod.find_duplicates(dataset, known=known)
    splits = {name: dataset.split(name) for name in data_mod.SPLITS}
    y = {name: np.asarray(s.labels) for name, s in splits.items()}
    x = {name: features(s.paths) for name, s in splits.items()}
    name = max(GRIDS, key=lambda n: report["models"][n]["val_auc"])
    params = report["models"][name]["params"]
    handcrafted = GRIDS[name][0](**params).fit(x["train"], y["train"])
    predictor = Predictor(bundle)
    network = {s: predict_split(predictor, splits[s].paths) for s in ("val", "test")}
    net = {s: logit(p) for s, p in network.items()}
    hand = {s: logit(handcrafted.predict_proba(x[s])[:, 1]) for s in ("val", "test")}
    cv_gain = stack_cv_gain(net["val"], hand["val"], y["val"])
    stack = LogisticRegression().fit(np.c_[net["val"], hand["val"]], y["val"])
    p = {s: stack.predict_proba(np.c_[net[s], hand[s]])[:, 1] for s in ("val", "test")}
    threshold = threshold_for_sensitivity(p["val"], y["val"], args.target_sensitivity)
    metrics = classification_metrics(p["test"], y["test"], threshold)
    metrics.pop("reliability_bins")
    paired = paired_auc_difference(network["test"], p["test"], y["test"])
    log.info("stack: validation CV gain %+.4f (sd %.4f); test AUC %.3f against the network's %.3f, paired %+.3f "
             "[%+.3f, %+.3f]", cv_gain["mean"], cv_gain["sd"], paired["candidate"], paired["baseline"],
             paired["difference"], *paired["difference_ci95"])
    return {"params": {"model": str(args.stack), "handcrafted": name, "handcrafted_params": params,
                       "weights": {"network": float(stack.coef_[0][0]), "handcrafted": float(stack.coef_[0][1]),
                                   "intercept": float(stack.intercept_[0])},
                       "trained_on": len(y["train"]), "validated_on": len(y["val"]), "moved_to_validation": moved},
            "val_auc": float(roc_auc_score(y["val"], p["val"])), "val_cv_gain": cv_gain,
            "test_paired_with_network": paired, "test": metrics}


def run(args) -> dict:
    bundle = None
    if args.stack:  # a bundle that is not there is said before minutes of features, not after
        from model.bundle import load_bundle
        bundle = load_bundle(args.stack)
    dataset = data_mod.discover(args.data, args.images, seed=args.seed)
    known = Path(args.data) / "NEAR_DUPLICATES.csv" if Path(args.data).is_dir() else None
    dataset.duplicates = data_mod.find_duplicates(dataset, known=known)
    spec = PreprocessSpec(args.image_size)
    started = time.perf_counter()
    splits = {name: dataset.split(name) for name in data_mod.SPLITS}
    cache: dict[str, np.ndarray] = {}

    def features(paths) -> np.ndarray:  # each image's features once, whichever splits it is in
        todo = [p for p in paths if str(p) not in cache]
        if todo:
            cache.update(zip(map(str, todo), feature_matrix(todo, spec)))
        return np.stack([cache[str(p)] for p in paths])

    x = {name: features(s.paths) for name, s in splits.items()}
    y = {name: np.asarray(s.labels) for name, s in splits.items()}
    log.info("features: %d per image, %.0f s", x["train"].shape[1], time.perf_counter() - started)
    report = {"data": str(args.data), "data_hash": dataset.data_hash(), "test_duplicates_dropped":
              len(dataset.splits["test"]) - len(splits["test"]), "feature_length": int(x["train"].shape[1]),
              "target_sensitivity": args.target_sensitivity, "models": {}}
    for name in GRIDS:
        model, params, val_auc = select(name, x["train"], y["train"], x["val"], y["val"])
        threshold = threshold_for_sensitivity(model.predict_proba(x["val"])[:, 1], y["val"], args.target_sensitivity)
        p = model.predict_proba(x["test"])[:, 1]
        metrics = classification_metrics(p, y["test"], threshold)
        metrics.pop("reliability_bins")
        report["models"][name] = {"params": params, "val_auc": val_auc, "test": metrics}
        print(format_table(metrics, f"{name} {params}"))
        print()
    if args.network_metrics:
        net = json.loads(Path(args.network_metrics).read_text())
        net.pop("reliability_bins", None)
        name = f"efficientnet ({Path(net['model']).stem})" if net.get("model") else "efficientnet"  # the bundle scored
        report["models"][name] = {"params": {"model": net.get("model")}, "test": net}
    if args.stack:
        report["models"][f"{Path(args.stack).stem} + handcrafted (stacked)"] = stacked(args, bundle, report, features, dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    comparison_chart(report, out / "comparison.png")
    print_summary(report)
    return report


def print_summary(report: dict) -> None:
    print("| model | accuracy [95% CI] | precision / recall / F1, malignant | macro F1 | ROC AUC [95% CI] "
          "| sensitivity / specificity |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, m in report["models"].items():
        t = m["test"]
        mal = t["per_class"]["malignant"]
        acc_ci = t.get("accuracy_ci95") or [float("nan")] * 2
        print(f"| {name} | {t['accuracy']:.3f} [{acc_ci[0]:.3f}, {acc_ci[1]:.3f}] | {mal['precision']:.3f} / "
              f"{mal['recall']:.3f} / {mal['f1']:.3f} | {t['macro']['f1']:.3f} | {t['roc_auc']:.3f} "
              f"[{t['roc_auc_ci95'][0]:.3f}, {t['roc_auc_ci95'][1]:.3f}] | {t['sensitivity']:.3f} / "
              f"{t['specificity']:.3f} |")


def comparison_chart(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    metrics = [("accuracy", lambda t: t["accuracy"], lambda t: t.get("accuracy_ci95")),
               ("F1 (malignant)", lambda t: t["per_class"]["malignant"]["f1"], lambda t: t.get("f1_malignant_ci95")),
               ("ROC AUC", lambda t: t["roc_auc"], lambda t: t["roc_auc_ci95"])]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        t = report["models"][name]["test"]
        values = [f(t) for _, f, _ in metrics]
        errors = np.array([[v - ci(t)[0], ci(t)[1] - v] if ci(t) else [0, 0] for v, (_, _, ci) in zip(values, metrics)]).T
        xs = np.arange(len(metrics)) + (i - (len(names) - 1) / 2) * width
        ax.bar(xs, values, width, yerr=errors, capsize=3, label=name)
    ax.set_xticks(np.arange(len(metrics)), [m[0] for m in metrics])
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{Path(report['data']).name} test split (duplicates dropped)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Handcrafted features + classic ML vs. fine-tuned EfficientNet")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@command
def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(prog="python -m train.baselines", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="data folder or label CSV, as for training")
    p.add_argument("--images", default=None, help="image folder for a CSV (default: the CSV's folder)")
    p.add_argument("--image-size", type=ranged(int, lambda v: v >= 32, "a side in pixels, 32 or more (e.g. 256)"),
                   default=256, help="preprocessed size (default: 256, as the network)")
    p.add_argument("--target-sensitivity", type=share, default=0.90, help="(default: 0.90, as the network)")
    p.add_argument("--network-metrics", default=None, help="metrics.json of python -m train.evaluate, to compare")
    p.add_argument("--stack", default=None, metavar="BUNDLE",
                   help="also stack this bundle's network with the best handcrafted model, fitted on the bundle's "
                        "own validation images, and score the pair on test against the network")
    p.add_argument("--seed", type=random_seed, default=42, help="(default: 42)")
    p.add_argument("--out", default="runs/baselines", help="output folder (default: runs/baselines)")
    args = p.parse_args(argv)
    if args.network_metrics:  # read after minutes of features: checked first
        try:
            if not isinstance(json.loads(Path(args.network_metrics).read_text()), dict):
                raise ValueError
        except (OSError, ValueError):
            p.error(f"--network-metrics {args.network_metrics} is not a metrics.json that python -m train.evaluate "
                    f"writes")
    writable(args.out)
    return run(args)


if __name__ == "__main__":
    main()
