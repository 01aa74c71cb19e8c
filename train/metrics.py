"""Metrics shared by training (the model card) and `python -m train.evaluate`."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.stats import rankdata
from sklearn import metrics as skm

from model.bundle import CLASS_NAMES


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(log(p) / T) (Guo et al. 2017)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1.0))

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logsm = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -float(logsm[np.arange(len(y)), y].mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def fit_temperature_and_bias(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The temperature T and bias b minimising the negative log-likelihood of sigmoid(s / T + b), where s is the
    network's log-odds of malignancy (Platt scaling, Platt 1999). The bias moves the offset of the log-odds, which
    a temperature alone cannot, and which a loss on differences of log-odds (`--auc-loss`) leaves free."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1.0))
    s = logp[:, 1] - logp[:, 0]
    y = np.asarray(y, dtype=np.float64)

    def nll(params: np.ndarray) -> tuple[float, np.ndarray]:
        log_t, b = params
        z = s / np.exp(log_t) + b
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))  # -log sigmoid(z) if y else -log(1 - sigmoid(z))
        residual = 1.0 / (1.0 + np.exp(-z)) - y
        return loss, np.array([float(np.mean(residual * -s / np.exp(log_t))), float(np.mean(residual))])

    result = minimize(nll, np.array([0.0, 0.0]), jac=True, method="L-BFGS-B",
                      bounds=[(np.log(0.05), np.log(20.0)), (-10.0, 10.0)])
    return float(np.exp(result.x[0])), float(result.x[1])


THRESHOLD_RULE = "k-th lowest validation melanoma score, k = floor((1 - target) * (n + 1))"


def threshold_for_sensitivity(p: np.ndarray, y: np.ndarray, target: float) -> float:
    """A threshold whose expected sensitivity on new positives is at least `target`.

    A new positive from the same distribution scores below the k-th lowest of n positive scores
    with probability k / (n + 1), whatever the distribution. So the k-th lowest score with
    k = floor((1 - target) (n + 1)) gives new positives an expected sensitivity of 1 - k / (n + 1),
    at least `target`. The empirical rule (the highest threshold keeping `target` of these n
    positives) falls short of it: with 30 positives and a target of 0.90 it takes the 4th lowest
    score, whose expected sensitivity is 27/31 = 0.87. When n is too small for any k (fewer than 9
    positives for 0.90), the lowest positive score is used and the target is not assured.
    """
    positives = np.sort(p[y == 1])
    if len(positives) == 0:
        raise ValueError("No malignant images to choose a threshold on.")
    k = int(np.floor((1.0 - target) * (len(positives) + 1) + 1e-9))
    return float(positives[max(k - 1, 0)])


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> tuple[float, list[dict]]:
    """ECE of the probability of malignancy, in equal-width bins; also the bins for a reliability diagram."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    ece, bins = 0.0, []
    for b in range(n_bins):
        mask = index == b
        if not mask.any():
            continue
        conf, freq = float(p[mask].mean()), float(y[mask].mean())
        ece += mask.mean() * abs(conf - freq)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(mask.sum()),
                     "mean_probability": conf, "fraction_malignant": freq})
    return float(ece), bins


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney statistic: the share of (malignant, benign) pairs ranked the right way, ties
    counted half; `sklearn.metrics.roc_auc_score`'s value, without its input checks, which cost a bootstrap of 2,000
    resamples most of its time."""
    positive = np.asarray(y) == 1
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    ranks = rankdata(p)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_intervals(p: np.ndarray, y: np.ndarray, threshold: float, n: int = 2000,
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap 95% intervals of ROC AUC, accuracy and F1 for malignant (resampling images)."""
    rng = np.random.default_rng(seed)
    samples = {"roc_auc": [], "accuracy": [], "f1_malignant": []}
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        truth, pred = y[idx] == 1, p[idx] >= threshold
        samples["roc_auc"].append(roc_auc(truth, p[idx]))
        samples["accuracy"].append(float((pred == truth).mean()))
        tp, wrong = int((pred & truth).sum()), int((pred != truth).sum())
        samples["f1_malignant"].append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)  # F1 = 2TP / (2TP+FP+FN)
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in samples.items()}


def paired_auc_interval(y: np.ndarray, p_ref: np.ndarray, p: np.ndarray, n: int = 2000, seed: int = 0,
                        stratified: bool = False) -> list[float]:
    """Percentile bootstrap 95% interval of AUC(p) - AUC(p_ref), two scorings of the same images.

    Both scorings see the same resample, so the images' own difficulty drops out of the spread. Plain
    resampling draws images with replacement (resamples with one class only are skipped); stratified
    resampling draws the malignant and the benign images apart, so every resample keeps the class counts.
    """
    y = np.asarray(y, np.int64)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = []
    for _ in range(n):
        if stratified:
            idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        else:
            idx = rng.integers(0, len(y), len(y))
            if y[idx].min() == y[idx].max():
                continue
        diffs.append(roc_auc(y[idx], p[idx]) - roc_auc(y[idx], p_ref[idx]))
    if not diffs:
        return [float("nan"), float("nan")]
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def paired_auc_difference(p_base: np.ndarray, p_cand: np.ndarray, y: np.ndarray, n: int = 2000,
                          seed: int = 0) -> dict:
    """ROC AUC of two models scored on the same images, and a 95% interval of candidate minus baseline.

    The interval is a stratified paired bootstrap (`paired_auc_interval`): pairing removes the images' own
    difficulty from the spread, which is what makes a comparison on a small split (150 validation images,
    30 melanomas) say anything at all.
    """
    p_base, p_cand = np.asarray(p_base, np.float64), np.asarray(p_cand, np.float64)
    y = np.asarray(y, np.int64)
    if p_base.shape != y.shape or p_cand.shape != y.shape:
        raise ValueError("both models must be scored on the same images")
    if y.min() == y.max():
        raise ValueError("a paired AUC needs both benign and malignant images")
    base, cand = float(skm.roc_auc_score(y, p_base)), float(skm.roc_auc_score(y, p_cand))
    return {"n": int(len(y)), "n_malignant": int(y.sum()), "baseline": base, "candidate": cand,
            "difference": cand - base,
            "difference_ci95": paired_auc_interval(y, p_base, p_cand, n=n, seed=seed, stratified=True)}


def classification_metrics(p: np.ndarray, y: np.ndarray, threshold: float, bootstrap: int = 2000) -> dict:
    """Everything the README and the model card report, for probabilities `p` of malignancy."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.int64)
    pred = (p >= threshold).astype(int)
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    ece, bins = expected_calibration_error(p, y)
    intervals = bootstrap_intervals(p, y, threshold, n=bootstrap)
    per_class = {
        name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(("benign", "malignant"))
    }
    return {
        "n": int(len(y)),
        "n_malignant": int(y.sum()),
        "threshold": float(threshold),
        "roc_auc": float(skm.roc_auc_score(y, p)),
        "roc_auc_ci95": list(intervals["roc_auc"]),
        "average_precision": float(skm.average_precision_score(y, p)),
        "accuracy": float((pred == y).mean()),
        "accuracy_ci95": list(intervals["accuracy"]),
        "f1_malignant_ci95": list(intervals["f1_malignant"]),
        "sensitivity": tp / max(tp + fn, 1),
        "specificity": tn / max(tn + fp, 1),
        "per_class": per_class,
        "macro": {k: float(np.mean([per_class[c][k] for c in per_class])) for k in ("precision", "recall", "f1")},
        "confusion_matrix": {"labels": ["benign", "malignant"], "rows_true_cols_predicted": cm.tolist()},
        "brier": float(np.mean((p - y) ** 2)),
        "ece": ece,
        "reliability_bins": bins,
    }


def diagnosis_breakdown(p: np.ndarray, y: np.ndarray, diagnoses, threshold: float, bootstrap: int = 2000,
                        seed: int = 0) -> list[dict]:
    """Per finer diagnosis: how many, the share flagged at `threshold`, and for a benign diagnosis the ROC AUC of
    all malignant images against its images alone, with a percentile bootstrap 95% interval (resampling the
    malignant images and that diagnosis's images apart).

    For a malignant diagnosis the flagged share is its sensitivity; for a benign one it is its false-positive rate,
    so the rows show which benign lesions cost the specificity and which pairs the ranking separates worst.
    """
    p, y = np.asarray(p, np.float64), np.asarray(y, np.int64)
    diagnoses = np.asarray(diagnoses, dtype=object)
    if not (p.shape == y.shape == diagnoses.shape):
        raise ValueError("one diagnosis per scored image")
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(y == 1)
    rows = []
    for name in sorted(set(diagnoses.tolist())):
        idx = np.flatnonzero(diagnoses == name)
        labels = set(y[idx].tolist())
        row = {"diagnosis": name, "n": int(len(idx)),
               "label": CLASS_NAMES[labels.pop()] if len(labels) == 1 else "mixed",
               "flagged": float((p[idx] >= threshold).mean())}
        if row["label"] == "benign" and len(pos):
            both = np.concatenate([pos, idx])
            row["roc_auc_against_malignant"] = float(skm.roc_auc_score(y[both], p[both]))
            samples = []
            for _ in range(bootstrap):
                draw = np.concatenate([rng.choice(pos, len(pos)), rng.choice(idx, len(idx))])
                samples.append(roc_auc(y[draw], p[draw]))
            row["roc_auc_against_malignant_ci95"] = ([float(np.percentile(samples, 2.5)),
                                                      float(np.percentile(samples, 97.5))] if samples else None)
        rows.append(row)
    return rows


def format_diagnosis_table(rows: list[dict], threshold: float) -> str:
    """The breakdown for a person: one line per diagnosis."""
    head = f"{'diagnosis':<24} {'label':<9} {'images':>6}  {'flagged at ' + format(threshold, '.3f'):>17}  " \
           "AUC against malignant [95% CI]"
    lines = [head, "-" * len(head)]
    for r in rows:
        auc = ""
        if "roc_auc_against_malignant" in r:
            low, high = r["roc_auc_against_malignant_ci95"] or (float("nan"), float("nan"))
            auc = f"{r['roc_auc_against_malignant']:.3f} [{low:.3f}, {high:.3f}]"
        lines.append(f"{r['diagnosis']:<24} {r['label']:<9} {r['n']:>6}  {r['flagged']:>17.3f}  {auc}".rstrip())
    return "\n".join(lines)


def format_table(m: dict, title: str) -> str:
    """A short table for a person."""
    lines = [title, "-" * len(title)]
    rows = [
        ("images (malignant)", f"{m['n']} ({m['n_malignant']})"),
        ("ROC AUC [95% CI]", f"{m['roc_auc']:.3f} [{m['roc_auc_ci95'][0]:.3f}, {m['roc_auc_ci95'][1]:.3f}]"),
        ("threshold", f"{m['threshold']:.3f}"),
        ("sensitivity", f"{m['sensitivity']:.3f}"),
        ("specificity", f"{m['specificity']:.3f}"),
        ("accuracy", f"{m['accuracy']:.3f}"),
        ("precision / recall / F1 malignant",
         "{precision:.3f} / {recall:.3f} / {f1:.3f}".format(**m["per_class"]["malignant"])),
        ("precision / recall / F1 benign",
         "{precision:.3f} / {recall:.3f} / {f1:.3f}".format(**m["per_class"]["benign"])),
        ("macro precision / recall / F1", "{precision:.3f} / {recall:.3f} / {f1:.3f}".format(**m["macro"])),
        ("Brier score", f"{m['brier']:.4f}"),
        ("expected calibration error", f"{m['ece']:.4f}"),
        ("confusion [[TN, FP], [FN, TP]]", str(m["confusion_matrix"]["rows_true_cols_predicted"])),
    ]
    width = max(len(r[0]) for r in rows)
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
