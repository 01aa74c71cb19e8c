"""Do a split's labels line up with its images? A check of labels that were matched to images by position.

    python -m train.evaluate --model model/shipped/melanoma_efficientnet.keras \
        --data ../shared/data/isic2017 --split test --keep-duplicates --out runs/eval_shipped_test_keep
    python -m train.labelcheck --predictions runs/eval_shipped_test_keep/predictions.csv

The copy of the ISIC 2017 test ground truth available here numbers its rows instead of naming the images, so its
labels were matched to the images by position: row k to the k-th image ID in sorted order
(`../shared/data/isic2017/SOURCE.md`). If that mapping were off by some rows, everywhere or from some row on, the
labels there would belong to other images, and a model's scores would rank them no better than chance. This reads
the per-image predictions that `python -m train.evaluate` writes (run it with `--keep-duplicates`, so that every
row of the ground truth is there), sorts the images by file name as the mapping did, and reports:

- the ROC AUC of the labels as mapped, against the AUC of every other cyclic offset of the labels (what a mapping
  off by that many rows would give): the mapping used should stand alone above all of them;
- the same from each block of consecutive images on (blocks holding `--per-block` malignant ones, default 20), against
  the offsets within `--near` rows (default 10): a mapping that goes wrong at some row, by a missing or an extra row,
  is wrong from there to the end, and from the block that holds that row on another offset would rank better;
- each block's own AUC with a bootstrap 95% interval and the offset within `--near` that ranks its images best, for
  a look (a block holds few images of one class, so this is noisy).

It writes `labelcheck.json` and prints a table. What it cannot see: a few labels swapped here and there, or an
offset confined to much less than a block; the model's own errors hide those.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from model.bundle import CLASS_NAMES
from train.cli import writable
from train.data import DataError
from train.metrics import bootstrap_intervals, roc_auc


NEAR = 10  # offsets tried from each block on: a mapping off by a row or a few


class PredictionsError(ValueError):
    """A predictions file this check cannot read; its message is the sentence a person sees."""


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image names, labels 0/1, probabilities) from `python -m train.evaluate`'s predictions.csv, sorted by the
    image's file name, the order in which the labels were matched to the images."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise PredictionsError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error):
        rows = []  # not a CSV at all: said below
    needed = {"image", "label", "probability_malignant"}
    if not rows or not needed <= set(rows[0]):
        raise PredictionsError(f"{path} is not a predictions file of python -m train.evaluate: it needs the columns "
                               f"{', '.join(sorted(needed))} and at least one row")
    try:
        items = sorted((Path(r["image"]).stem, CLASS_NAMES.index(r["label"]), float(r["probability_malignant"]))
                       for r in rows)
    except ValueError:
        raise PredictionsError(f"{path}: a label is not one of {', '.join(CLASS_NAMES)}, or a probability is not a "
                               f"number") from None
    names, labels, probs = zip(*items)
    y = np.asarray(labels, dtype=np.int64)
    if y.min() == y.max():
        raise PredictionsError(f"{path} holds one class only; an AUC needs both")
    return list(names), y, np.asarray(probs, dtype=np.float64)


def offset_aucs(y: np.ndarray, p: np.ndarray, offsets, start: int = 0, stop: int | None = None) -> dict[int, float]:
    """AUC of the images from `start` on (to `stop`), each paired with the label `k` rows before its own
    (cyclically), for each offset `k` whose labels there hold both classes: the labels a mapping that went `k` rows
    wrong at row `start` would give them. A missing or extra row shifts every row after it, so an error in a mapping
    by position persists to the end."""
    aucs = {}
    for k in offsets:
        labels = np.roll(y, k)[start:stop]
        if 0 < labels.sum() < len(labels):
            aucs[int(k)] = roc_auc(labels, p[start:stop])
    return aucs


def block_bounds(y: np.ndarray, per_block: int) -> list[tuple[int, int]]:
    """Runs of consecutive images, each ending with its `per_block`-th malignant one (the last run takes the rest
    of the images; a remainder of fewer than half a block's malignant images joins the run before it). Blocks by
    malignant count, not by image count, because the ISIC IDs come in batches from different collections and the
    melanomas bunch: among the 600 test images, the 200 with the highest IDs hold one."""
    ends = [int(i) + 1 for i in np.flatnonzero(y)[per_block - 1::per_block]]
    if not ends or int(y[ends[-1]:].sum()) >= per_block / 2:
        ends.append(len(y))
    else:
        ends[-1] = len(y)
    return list(zip([0] + ends[:-1], ends))


def block_aucs(names: list[str], y: np.ndarray, p: np.ndarray, per_block: int) -> list[dict]:
    """AUC of each block of `block_bounds`, with its percentile bootstrap 95% interval (`train.metrics`'); `None`
    where a block holds one class only."""
    blocks = []
    for start, stop in block_bounds(y, per_block):
        yb, pb = y[start:stop], p[start:stop]
        row = {"first": names[start], "last": names[stop - 1], "images": int(stop - start),
               "malignant": int(yb.sum()), "auc": None, "ci95": None}
        if 0 < yb.sum() < len(yb):
            row["auc"] = roc_auc(yb, pb)
            row["ci95"] = list(bootstrap_intervals(pb, yb, threshold=0.5)["roc_auc"])
        blocks.append(row)
    return blocks


def check(names: list[str], y: np.ndarray, p: np.ndarray, per_block: int = 20, near: int = NEAR) -> dict:
    n = len(y)
    everywhere = offset_aucs(y, p, range(n))
    as_mapped, others = everywhere[0], np.array([everywhere[k] for k in range(1, n)])
    top = int(np.argmax(others)) + 1
    blocks = block_aucs(names, y, p, per_block)
    tails, start = [], 0
    for b in blocks:  # from each block's first image to the end, the mapping used against offsets within `near`
        aucs = offset_aucs(y, p, range(-near, near + 1), start)
        moved = [k for k in aucs if k]
        if 0 in aucs and moved:
            best = max(moved, key=aucs.get)
            tails.append({"from": b["first"], "images": n - start, "auc_as_mapped": aucs[0],
                          "best_other_auc": aucs[best], "best_other_offset": best})
        else:  # from here on one class only (was a KeyError): nothing to rank
            tails.append({"from": b["first"], "images": n - start, "auc_as_mapped": None, "best_other_auc": None,
                          "best_other_offset": None})
        b["best_offset_within"] = _best_local_offset(y, p, start, start + b["images"], near)
        start += b["images"]
    wrong_tails = [t["from"] for t in tails if t["auc_as_mapped"] is not None
                   and t["best_other_auc"] >= t["auc_as_mapped"]]
    return {
        "images": int(n), "malignant": int(y.sum()),
        "auc_as_mapped": as_mapped,
        "other_offsets": {"count": int(n - 1), "median_auc": float(np.median(others)), "max_auc": float(others.max()),
                          "max_at_offset": top if top <= n // 2 else top - n,
                          "at_or_above_as_mapped": int((others >= as_mapped).sum())},
        "near": near, "per_block": per_block, "blocks": blocks, "tails": tails,
        "tails_not_best_as_mapped": wrong_tails,
        "consistent": bool((others < as_mapped).all() and not wrong_tails),
    }


def _best_local_offset(y: np.ndarray, p: np.ndarray, start: int, stop: int, near: int) -> int | None:
    """The offset within `near` whose labels rank this block's images best (0 when the mapping used does);
    `None` when the block holds one class only."""
    aucs = offset_aucs(y, p, range(-near, near + 1), start, stop)
    return max(aucs, key=lambda k: (aucs[k], k == 0)) if 0 in aucs else None


def format_report(r: dict, source: str) -> str:
    o = r["other_offsets"]
    lines = [f"labels against scores in {source}: {r['images']} images, {r['malignant']} malignant, sorted by file name",
             f"  AUC as mapped: {r['auc_as_mapped']:.3f}; the {o['count']} other offsets: median {o['median_auc']:.3f}, "
             f"highest {o['max_auc']:.3f} (offset {o['max_at_offset']:+d}), {o['at_or_above_as_mapped']} at or above "
             f"the mapping used",
             f"\n  blocks of {r['per_block']} malignant images; 'from here on': the images from the block's first to the "
             f"end, as mapped and under the best other offset within +-{r['near']} rows",
             f"  {'block':<29} {'images':>6} {'malig.':>6}  {'AUC [95% CI]':<22} {'best offset':>11}   "
             f"from here on: as mapped, best other"]
    for b, t in zip(r["blocks"], r["tails"]):
        auc = "one class only" if b["auc"] is None else f"{b['auc']:.3f} [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]"
        best = "-" if b["best_offset_within"] is None else f"{b['best_offset_within']:+d}"
        tail = ("one class only" if t["auc_as_mapped"] is None else
                f"{t['auc_as_mapped']:.3f}, {t['best_other_auc']:.3f} ({t['best_other_offset']:+d})")
        lines.append(f"  {b['first'] + '..' + b['last']:<29} {b['images']:>6} {b['malignant']:>6}  {auc:<22} "
                     f"{best:>11}   {tail}")
    if r["consistent"]:
        lines.append("\nconsistent: the mapping used ranks above every other offset, over all images and from each "
                     "block on")
    else:
        lines.append("\nNOT consistent: " + "; ".join(filter(None, [
            f"{o['at_or_above_as_mapped']} other offsets rank at least as well" if o["at_or_above_as_mapped"] else "",
            f"from {', '.join(r['tails_not_best_as_mapped'])} on, another offset ranks at least as well"
            if r["tails_not_best_as_mapped"] else ""])))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.labelcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", required=True,
                        help="predictions.csv of python -m train.evaluate (run with --keep-duplicates)")
    parser.add_argument("--per-block", type=int, default=20,
                        help="malignant images per block of consecutive images (default: 20)")
    parser.add_argument("--near", type=int, default=NEAR,
                        help=f"offsets tried from each block on, up to this many rows either way (default: {NEAR})")
    parser.add_argument("--out", default=None, help="output folder (default: the predictions file's folder)")
    args = parser.parse_args(argv)
    if args.per_block < 5:
        parser.error("--per-block must be at least 5")
    if args.near < 1:
        parser.error("--near must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    path = Path(args.predictions)
    try:
        names, y, p = read_predictions(path)
        out = writable(args.out if args.out else path.parent)
    except (PredictionsError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    report = check(names, y, p, args.per_block, args.near)
    report["predictions"] = str(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "labelcheck.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report, str(path)))
    print(f"\nwritten: {out / 'labelcheck.json'}")
    return report


if __name__ == "__main__":
    main()
