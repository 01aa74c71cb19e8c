"""`report.md` in an evaluation folder: what the numbers say, in words a person can check against the table, with the
figures beside them, so that a run can be read, or passed on, as one page (GitHub and most editors render it)."""
from __future__ import annotations

import time
from pathlib import Path

from train.metrics import format_table

FIGURES = (("roc.png", "ROC curve with the threshold's point"), ("pr.png", "precision-recall curve"),
           ("confusion_matrix.png", "confusion matrix at the threshold"),
           ("reliability.png", "reliability diagram: predicted probability against the observed rate"),
           ("samples.png", "sample images with their scores"))


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "none"


def in_words(m: dict) -> list[str]:
    """The metrics as sentences, each number traceable to the table (counts from the confusion matrix)."""
    (tn, fp), (fn, tp) = m["confusion_matrix"]["rows_true_cols_predicted"]
    lo, hi = m["roc_auc_ci95"]
    flagged, cleared, n = tp + fp, tn + fn, tn + fp + fn + tp
    return [
        f"**Ranking.** ROC AUC {m['roc_auc']:.3f} (95% interval {lo:.3f}–{hi:.3f}, bootstrap over the images): a "
        f"melanoma drawn at random scores above a benign lesion drawn at random {m['roc_auc']:.0%} of the time "
        f"(50% is chance). It does not depend on the threshold.",
        f"**At the threshold {m['threshold']:.3f}.** {tp} of {tp + fn} melanomas flagged (sensitivity "
        f"{m['sensitivity']:.3f}) and {tn} of {tn + fp} benign lesions cleared (specificity {m['specificity']:.3f}). "
        f"Of the {flagged} images flagged, {tp} ({_share(tp, flagged)}) were melanomas; of the {cleared} cleared, "
        f"{fn} ({_share(fn, cleared)}) were. These shares follow this data's melanoma rate "
        f"({_share(tp + fn, n)}): where melanoma is rarer, fewer of the flagged images are melanomas.",
        f"**Calibration.** Expected calibration error {m['ece']:.3f}: in bins of predicted probability, the share of "
        f"melanomas differs from the probability by {100 * m['ece']:.1f} percentage points on average, weighted by "
        f"the images in each bin (the reliability diagram below). Brier score {m['brier']:.4f}.",
        f"**Accuracy.** {m['accuracy']:.3f}, where calling every image benign would score {_share(tn + fp, n)}: at a "
        f"threshold set for sensitivity, accuracy is low by design: read the ranking and the counts at the threshold "
        f"first.",
    ]


def write_report(out: Path, metrics: dict, title: str, command: str, about: dict | None = None,
                 tables: dict[str, str] | None = None) -> Path:
    """Write `out/report.md`: the command, what was scored (`about`: label to value), the metrics in words and as
    the printed table, the figures found in `out`, and further tables (`tables`: heading to fixed-width text)."""
    lines = [f"# {title}", "", "```bash", command, "```", ""]
    about = {**(about or {}), "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    lines += [f"- {label}: {value}" for label, value in about.items()] + ["", "## In words", ""]
    lines += [f"- {sentence}" for sentence in in_words(metrics)]
    lines += ["", "## The numbers", "", "```text", format_table(metrics, title), "```", ""]
    for heading, text in (tables or {}).items():
        lines += [f"## {heading}", "", "```text", text, "```", ""]
    figures = [(name, alt) for name, alt in FIGURES if (out / name).exists()]
    if figures:
        lines += ["## Figures", ""] + [f"![{alt}]({name})" for name, alt in figures] + [""]
    files = {"metrics.json": "every number here, and more", "predictions.csv": "one row per image: its probability "
             "of melanoma and whether it was flagged"}
    files = [f"- `{name}`: {what}" for name, what in files.items() if (out / name).exists()]
    if files:
        lines += ["## Files", ""] + files + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
