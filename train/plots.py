"""PNG figures for a person: training curves, ROC, precision-recall, confusion matrix, reliability, learning curve."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402


def training_curves(history_csv: Path, out: Path) -> Path:
    """Loss and AUC per epoch, training and validation; the copies of a soup (`--soup`) each get their own lines,
    drawn from the end of the head stage they share; the epochs of a weight average (`--swa`) go on from the last
    stage's, after a second grey line."""
    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    stages = [s for s in dict.fromkeys(r.get("stage", "") for r in rows) if s != "swa"]
    head_epochs = sum(1 for r in rows if r.get("stage") == "head")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    lines = [s for s in stages if s != "head"] or ["head"]
    for key, ax in (("loss", axes[0]), ("auc", axes[1])):
        for n, stage in enumerate(lines):
            part = [r for r in rows if r.get("stage") in ("head", stage)
                    or (stage == lines[-1] and r.get("stage") == "swa")]
            x = np.arange(1, len(part) + 1)
            suffix = "" if len(stages) <= 2 else f" ({stage.removeprefix('fine_tune_')})"
            for prefix, style in (("", "-"), ("val_", "--")):
                values = [float(r[prefix + key]) for r in part if r.get(prefix + key) not in (None, "")]
                if len(values) == len(part):
                    ax.plot(x, values, style, color=f"C{2 * n + (prefix == 'val_')}",
                            label=(prefix or "train_") + key + suffix)
        ax.set_xlabel("epoch (head stage, then fine-tuning)")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    before_swa = next((i for i, r in enumerate(rows) if r.get("stage") == "swa"), None)
    for ax in axes:
        ax.axvline(head_epochs + 0.5, color="grey", lw=0.8)
        if before_swa is not None:  # the epochs before the average's, on its line
            ax.axvline(head_epochs + sum(1 for r in rows[:before_swa] if r.get("stage") == lines[-1]) + 0.5,
                       color="grey", lw=0.8, ls=":")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def evaluation_figures(p: np.ndarray, y: np.ndarray, metrics: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fpr, tpr, _ = skm.roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    lo, hi = metrics["roc_auc_ci95"]
    ax.plot(fpr, tpr, label=f"AUC {metrics['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}]")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.scatter([1 - metrics["specificity"]], [metrics["sensitivity"]], color="red", zorder=3,
               label=f"threshold {metrics['threshold']:.2f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, melanoma")
    ax.legend(loc="lower right")
    paths.append(_save(fig, out_dir / "roc.png"))

    precision, recall, _ = skm.precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(recall, precision, label=f"AP {metrics['average_precision']:.3f}")
    ax.axhline(y.mean(), ls=":", color="grey", label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, melanoma")
    ax.legend()
    paths.append(_save(fig, out_dir / "pr.png"))

    cm = np.asarray(metrics["confusion_matrix"]["rows_true_cols_predicted"])
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["benign", "malignant"], yticklabels=["benign", "malignant"],
           xlabel="predicted", ylabel="true", title="Confusion matrix")
    paths.append(_save(fig, out_dir / "confusion_matrix.png"))

    bins = metrics["reliability_bins"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.plot([b["mean_probability"] for b in bins], [b["fraction_malignant"] for b in bins], "o-")
    ax.set(xlabel="predicted probability of malignancy", ylabel="observed fraction malignant",
           title=f"Reliability (ECE {metrics['ece']:.3f})", xlim=(0, 1), ylim=(0, 1))
    paths.append(_save(fig, out_dir / "reliability.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sample_grid(paths, p: np.ndarray, y: np.ndarray, threshold: float, out: Path, per_group: int = 4) -> Path:
    """Test images with true label, predicted label and probability: confident correct calls of each
    class, and the most confident mistakes in both directions (missed melanomas, false alarms)."""
    from PIL import Image

    pred = (p >= threshold).astype(int)
    groups = [
        ("correct: melanoma", np.where((y == 1) & (pred == 1))[0], -p),
        ("correct: benign", np.where((y == 0) & (pred == 0))[0], p),
        ("missed melanoma (most confident)", np.where((y == 1) & (pred == 0))[0], p),
        ("false alarm (most confident)", np.where((y == 0) & (pred == 1))[0], -p),
    ]
    fig, axes = plt.subplots(len(groups), per_group, figsize=(2.3 * per_group, 2.6 * len(groups)))
    for row, (title, idx, key) in enumerate(groups):
        chosen = idx[np.argsort(key[idx])][:per_group]
        for col in range(per_group):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(chosen):
                i = chosen[col]
                ax.imshow(Image.open(paths[i]).convert("RGB"))
                ok = pred[i] == y[i]
                ax.set_title(f"true {'mel' if y[i] else 'ben'} · pred {'mel' if pred[i] else 'ben'}\np = {p[i]:.2f}",
                             fontsize=8, color="green" if ok else "red")
        axes[row, 0].text(-0.08, 0.5, title, transform=axes[row, 0].transAxes, rotation=90, va="center",
                          ha="right", fontsize=9)
    fig.suptitle(f"Sample test predictions (threshold {threshold:.2f})", fontsize=10)
    return _save(fig, out)


def robustness_chart(results: dict[str, dict[str, dict]], out: Path) -> Path:
    """ROC AUC per acquisition shift, one bar per bundle, with the unshifted AUC as a line."""
    models = list(results)
    shifts = list(next(iter(results.values())))
    x = np.arange(len(shifts))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(shifts) + 2), 4))
    for i, model in enumerate(models):
        aucs = [results[model][s]["roc_auc"] for s in shifts]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, aucs, width, label=Path(model).parent.name or model)
        ax.axhline(results[model][shifts[0]]["roc_auc"], color=bars.patches[0].get_facecolor(), lw=0.8, ls="--")
    ax.set_xticks(x, shifts, rotation=35, ha="right")
    ax.set_ylabel("ROC AUC")
    lows = [results[m][s]["roc_auc"] for m in models for s in shifts]
    ax.set_ylim(max(0.0, min(lows) - 0.05), 1.0)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def learning_curve_chart(result: dict, out: Path) -> Path:
    """Test AUC (with its bootstrap interval) against training images on a log2 axis, the fitted line and the target."""
    points, fit = result["points"], result["fit"]
    n = np.array([p["train_images"] for p in points], dtype=float)
    auc = np.array([p["test_auc"] for p in points])
    ci = np.array([p["test_auc_ci95"] or [a, a] for p, a in zip(points, auc)])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(n, auc, yerr=[auc - ci[:, 0], ci[:, 1] - auc], fmt="o", capsize=3,
                label="test AUC, 95% bootstrap interval")
    reach = result["images_for_target"]
    low, high = result.get("images_for_target_ci95") or (None, None)
    furthest = high or reach
    right = max(n.max(), min(furthest, n.max() * 64)) if furthest else n.max()
    xs = np.geomspace(n.min(), right, 50)
    ax.plot(xs, fit["intercept"] + fit["slope_per_doubling"] * np.log2(xs), "--",
            label=f"fit: {fit['slope_per_doubling']:+.3f} AUC per doubling")
    ax.axhline(result["target_auc"], color="grey", lw=0.8, label=f"target {result['target_auc']:.2f}")
    if low is not None:
        ax.hlines(result["target_auc"], low, min(high or right, right), color="C2", lw=5, alpha=0.5,
                  label="95% interval of the crossing" + ("" if high else " (no upper bound)"))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlabel("training images")
    ax.set_ylabel("test ROC AUC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)
