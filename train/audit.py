"""Shortcut cues: things in the images that go with the label in training but say nothing about the lesion.

    python -m train.audit --data ../shared/data/isic2017

A network learns whatever separates the classes in its training split. If one kind of picture (here: a contact
dermoscope's black field-of-view ring) is much more common among the melanomas than among the benign lesions, the
network can learn the frame instead of the skin, and an ordinary lesion photographed through that dermoscope comes
out suspicious. For each cue and split this counts the images that show it, the share of melanomas among them against
the split's, the odds ratio and Fisher's exact test, and says which augmentation breaks the link. It writes
`audit.json` and prints a table.

Cues (their detectors are in `model.cues`, which the app shares to caution beside a verdict):
- `dark_corners`: at least half of the four corner patches (each 6/64 of the side) is near black (luminance below
  40 of 255): the ring of a contact dermoscope, or a strong vignette. Broken by `python -m train --ring-augment`.
  The same test decides when the preprocessing's frame fill (`--frame-fill`) acts.
- `skin_marker_ink`: at least 0.5% of a 128 x 128 thumbnail is purple (gentian-violet surgical marker: hue 245-330
  degrees, saturation at least 0.25) outside the lesion, the Otsu lesion mask of `model.cues` widened by 4
  pixels, so that blue-violet pigment inside the lesion (a blue-white veil among it, a melanoma sign) does not count.
  A heuristic that errs towards missing ink: a purple lesion larger than its mask can pass for ink, and where the
  ink is the darkest thing in view the mask takes it for the lesion and the image passes as clean. Surgeons mark
  lesions they mean to cut out, so ink can go with melanoma in a training set (Winkler et al., JAMA Dermatology
  2019, found markings raised a network's melanoma scores). Broken by `python -m train --ink-augment`.
"""
from __future__ import annotations

import argparse
import json
import logging

import numpy as np
from scipy.stats import fisher_exact

from model import cues
from model.cues import INK_SHARE, dark_corner_share, has_dark_corners, has_ink, ink_share  # noqa: F401 (its API)
from model.preprocessing import ImageError, decode
from train import data as data_mod
from train.cli import command, random_seed, ranged, writable

log = logging.getLogger("train.audit")

REMEDIES = {"dark_corners": "--ring-augment 0.3", "skin_marker_ink": "--ink-augment 0.3"}
# name -> (what it is, its detector, the training option that breaks its link to the label)
CUES = {name: (description, detect, REMEDIES[name]) for name, (detect, description, _) in cues.CUES.items()}


def remedy_applied(remedy: str, args) -> bool:
    """Whether the training arguments `args` already use the option `remedy` names (for example --ring-augment)."""
    return bool(getattr(args, remedy.split()[0].lstrip("-").replace("-", "_"), 0))


def cue_warning(name: str, cue: dict) -> str:
    """The sentence for a cue linked to melanoma in training: how often, and the option that breaks the link."""
    t = cue["splits"]["train"]
    return (f"shortcut cue {name} ({cue['description']}): {t['with_cue']} of {t['images']} training images show it, "
            f"{t['malignant_with_cue']} of them malignant ({t['malignant_share_with_cue']:.0%} against "
            f"{t['malignant_share_overall']:.0%} overall); a network can learn it instead of the lesion. Train with "
            f"{cue['remedy']} to break the link.")


def cue_table(flags: np.ndarray, labels: np.ndarray) -> dict:
    """Counts, melanoma shares, odds ratio and Fisher's exact test of one cue against the label."""
    flags, labels = np.asarray(flags, bool), np.asarray(labels, int)
    with_cue, without = labels[flags], labels[~flags]
    table = [[int(with_cue.sum()), int(len(with_cue) - with_cue.sum())],
             [int(without.sum()), int(len(without) - without.sum())]]
    odds, p = fisher_exact(table) if flags.any() and (~flags).any() else (None, 1.0)
    odds = None if odds is None or not np.isfinite(odds) else float(odds)
    return {
        "images": int(len(labels)), "with_cue": int(flags.sum()),
        "malignant_with_cue": table[0][0], "benign_with_cue": table[0][1],
        "malignant_share_with_cue": float(with_cue.mean()) if len(with_cue) else None,
        "malignant_share_overall": float(labels.mean()) if len(labels) else None,
        "odds_ratio": odds, "fisher_p": float(p),
    }


def cue_flags(paths) -> dict[str, np.ndarray]:
    """For each cue, whether each image shows it (each image decoded once; an unreadable one shows none)."""
    flags = {name: np.zeros(len(paths), bool) for name in CUES}
    for i, path in enumerate(paths):
        try:
            img = decode(path)
        except ImageError as exc:  # discover() lists files; a broken one is reported, not fatal here
            log.warning("%s: %s", path, exc.message)
            continue
        for name, (_, detect, _) in CUES.items():
            flags[name][i] = detect(img)
    return flags


def audit(dataset: data_mod.Dataset, alpha: float = 0.01) -> dict:
    """Every cue on every split of `dataset`; a cue is flagged when training links it to the label (p < alpha)."""
    result = {"alpha": alpha, "cues": {}}
    present = [name for name in ("train", "val", "test") if dataset.splits.get(name) and dataset.splits[name].paths]
    flags = {name: cue_flags(dataset.splits[name].paths) for name in present}
    for name, (description, _, remedy) in CUES.items():
        splits = {split: cue_table(flags[split][name], np.asarray(dataset.splits[split].labels)) for split in present}
        train = splits.get("train", {})
        linked = bool(train.get("with_cue")) and train["fisher_p"] < alpha and (train["odds_ratio"] or 0) > 1
        result["cues"][name] = {"description": description, "remedy": remedy, "splits": splits,
                                "linked_to_malignant_in_training": linked}
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.audit", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="data folder or label CSV")
    parser.add_argument("--images", default=None, help="image folder for a CSV (default: the CSV's folder)")
    parser.add_argument("--seed", type=random_seed, default=42, help="seed of the split for unsplit data (default: 42)")
    parser.add_argument("--alpha", type=ranged(float, lambda v: 0 < v < 1, "a test level between 0 and 1 (e.g. 0.01)"),
                        default=0.01,
                        help="Fisher's exact test level at which a cue counts as linked (default: 0.01)")
    parser.add_argument("--out", default="runs/audit", help="output folder (default: runs/audit)")
    return parser.parse_args(argv)


@command
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    out = writable(args.out)
    dataset = data_mod.discover(args.data, args.images, seed=args.seed)
    result = audit(dataset, args.alpha)
    result["data"] = str(args.data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| cue | split | images with it (malignant) | malignant share with it / overall | odds ratio | Fisher p |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, cue in result["cues"].items():
        for split, t in cue["splits"].items():
            share = "-" if t["malignant_share_with_cue"] is None else f"{t['malignant_share_with_cue']:.2f}"
            odds = "-" if t["odds_ratio"] is None else f"{t['odds_ratio']:.2f}"
            print(f"| {name} | {split} | {t['with_cue']} of {t['images']} ({t['malignant_with_cue']}) | "
                  f"{share} / {t['malignant_share_overall']:.2f} | {odds} | {t['fisher_p']:.2g} |")
    for name, cue in result["cues"].items():
        if cue["linked_to_malignant_in_training"]:
            print(f"warning: {cue_warning(name, cue)}")
    print(f"written: {out / 'audit.json'}")
    return result


if __name__ == "__main__":
    main()
