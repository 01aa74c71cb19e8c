"""Would more training data help? Test AUC against the number of training images, from bundles' model cards.

    python -m train --data DIR --max-train-images 500 --run-dir runs/lc_500 ...     # one bundle per size
    python -m train.learning_curve --model runs/lc_500/melanoma_efficientnet.keras \
        --model runs/lc_1000/melanoma_efficientnet.keras --model model/shipped/melanoma_efficientnet.keras

Each card holds the images its training used (`data.train_images_used`) and its test metrics (ROC AUC with its
bootstrap interval, measured by `python -m train` or `python -m train.evaluate --update-card`). The command
fits a straight line of test AUC on log2(training images), by least squares over every bundle (several seeds
of one size count as several points), and reports the gain per doubling of the data and where the line would
cross `--target-auc`, with a 95% interval for that crossing (Fieller's, from the scatter of the points about the
line; open above where the slope is not clear of zero). That crossing is an extrapolation, not a prediction:
learning curves flatten, so the data it names is the least that the measured trend asks for, not enough, and the
interval counts only the points' scatter, not the bend of a curve. Every bundle must have been tested
on the same data (the test data hash in the card); otherwise the points are not comparable and the command
stops with a sentence.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from model.bundle import BundleError, load_card
from train.cli import ranged, writable
from train.data import DataError
from train.plots import learning_curve_chart


class CurveError(ValueError):
    """Bundles that cannot make a learning curve; the message is for a person."""


def read_point(model: str | Path) -> dict:
    """One bundle's training-set size and test AUC, from its card."""
    card = load_card(model)
    test = card.get("test") or {}
    n = (card.get("data") or {}).get("train_images_used")
    if n is None or "roc_auc" not in test:
        raise CurveError(f"{model}: its model card has no training-set size or no test ROC AUC; train it with "
                         f"python -m train, or run python -m train.evaluate --update-card on it")
    return {"model": str(model), "train_images": int(n), "test_auc": float(test["roc_auc"]),
            "test_auc_ci95": test.get("roc_auc_ci95"), "val_auc": (card.get("validation") or {}).get("roc_auc"),
            "data_hash": test.get("data_hash") or (card.get("data") or {}).get("hash")}


def fit_log2(n: np.ndarray, auc: np.ndarray) -> dict:
    """Least-squares line auc = intercept + slope * log2(n), with the slope's standard error."""
    x = np.log2(np.asarray(n, dtype=float))
    y = np.asarray(auc, dtype=float)
    if len(np.unique(x)) < 2:
        raise CurveError(f"a learning curve needs bundles trained on at least two sizes. "
                         f"Received: training images {sorted(set(np.asarray(n).tolist()))}")
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    dof = len(x) - 2
    sxx = float((x - x.mean()) @ (x - x.mean()))
    variance = float(residuals @ residuals / dof) if dof > 0 else None
    se = float(np.sqrt(variance / sxx)) if variance is not None else None
    return {"intercept": float(intercept), "slope_per_doubling": float(slope), "slope_se": se,
            "points": len(x), "mean_log2_images": float(x.mean()), "mean_auc": float(y.mean()), "sxx": sxx,
            "residual_variance": variance}


def images_for(target: float, fit: dict) -> float | None:
    """Training images at which the fitted line reaches `target`; None where it never rises to it."""
    if fit["slope_per_doubling"] <= 0:
        return None
    return float(2.0 ** ((target - fit["intercept"]) / fit["slope_per_doubling"]))


def images_interval(target: float, fit: dict, level: float = 0.95) -> list[float | None] | None:
    """Fieller's interval for the training images at which the line reaches `target`: the sizes whose fitted AUC
    the points cannot tell from `target` at `level`. Where the slope is not clear of zero the set has no upper
    bound ([low, None]) or no bound at all ([None, None]). None where the line does not rise or too few points
    measure their scatter."""
    b, variance = fit["slope_per_doubling"], fit.get("residual_variance")
    if b <= 0 or variance is None:
        return None
    n, sxx, centre = fit["points"], fit["sxx"], fit["mean_log2_images"]
    t2 = stats.t.ppf(0.5 + level / 2, n - 2) ** 2 * variance
    c = target - fit["mean_auc"]
    # with d = log2(images) - centre: (c - b d)^2 <= t2 (1/n + d^2/sxx), i.e. a d^2 - 2 b c d + c^2 - t2/n <= 0
    a = b * b - t2 / sxx
    discriminant = t2 * (a / n + c * c / sxx)
    if a == 0 or discriminant < 0:
        return [None, None]
    roots = sorted(((b * c - np.sqrt(discriminant)) / a, (b * c + np.sqrt(discriminant)) / a))
    if a > 0:
        return [float(2.0 ** (centre + roots[0])), float(2.0 ** (centre + roots[1]))]
    # a < 0: everything outside the roots; keep the half-line that holds the crossing itself
    if c / b >= roots[1]:
        return [float(2.0 ** (centre + roots[1])), None]
    return [None, float(2.0 ** (centre + roots[0]))]


def learning_curve(models: list[str], target: float) -> dict:
    points = sorted((read_point(m) for m in models), key=lambda p: (p["train_images"], p["model"]))
    hashes = {p["data_hash"] for p in points}
    if len(hashes) > 1:
        raise CurveError("these bundles were tested on different data (test data hashes "
                         f"{', '.join(sorted(str(h)[:8] for h in hashes))}); their AUCs are not comparable")
    fit = fit_log2([p["train_images"] for p in points], [p["test_auc"] for p in points])
    means = {}
    for p in points:
        means.setdefault(p["train_images"], []).append(p["test_auc"])
    return {"points": points, "fit": fit, "target_auc": target, "images_for_target": images_for(target, fit),
            "images_for_target_ci95": images_interval(target, fit),
            "mean_test_auc_by_size": {str(k): float(np.mean(v)) for k, v in means.items()}}


def describe_interval(interval: list[float | None] | None) -> str:
    if interval is None:
        return ""
    low, high = interval
    if low is not None and high is not None:
        return f", 95% interval {low:,.0f} to {high:,.0f}"
    if low is not None:
        return f", 95% interval from {low:,.0f} with no upper bound (the slope is not clear of zero)"
    if high is not None:
        return f", 95% interval up to {high:,.0f}"
    return ", 95% interval unbounded (the slope is not clear of zero)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.learning_curve", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True,
                        help="a bundle .keras file with its card (repeat; two training-set sizes at least)")
    parser.add_argument("--target-auc", default=0.90, help="(default: 0.90)",
                        type=ranged(float, lambda v: 0.5 < v < 1, "an AUC between 0.5 and 1 (e.g. 0.9)"))
    parser.add_argument("--out", default="runs/learning_curve", help="output folder (default: runs/learning_curve)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        result = learning_curve(args.model, args.target_auc)  # reads cards only: seconds, so the check can follow
        out = writable(args.out)
    except (CurveError, BundleError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    learning_curve_chart(result, out / "learning_curve.png")
    print("| training images | bundle | test ROC AUC [95% CI] | validation ROC AUC |")
    print("| --- | --- | --- | --- |")
    for p in result["points"]:
        ci = p["test_auc_ci95"]
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        val = f"{p['val_auc']:.3f}" if p["val_auc"] is not None else ""
        print(f"| {p['train_images']} | {p['model']} | {p['test_auc']:.3f}{interval} | {val} |")
    fit = result["fit"]
    se = f" (standard error {fit['slope_se']:.3f})" if fit["slope_se"] is not None else ""
    print(f"test AUC per doubling of the training images: {fit['slope_per_doubling']:+.3f}{se}")
    reach = result["images_for_target"]
    print(f"the fitted line reaches {args.target_auc:.2f} at "
          + (f"about {reach:,.0f} training images{describe_interval(result['images_for_target_ci95'])} "
             "(a straight-line extrapolation: at least that many)" if reach else "no size: it does not rise"))
    print(f"written: {out / 'learning_curve.json'}, {out / 'learning_curve.png'}")
    return result


if __name__ == "__main__":
    main()
