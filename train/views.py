"""Does a bundle rank turned images better than upright ones? The AUC of single turned or zoomed views.

    python -m train.views --model model/shipped/melanoma_efficientnet.keras --data ../shared/data/isic2017

Training turns nearly every image through an angle drawn from the whole circle and fills the corners with the
mirrored border, so an upright image, with its own corners, is the rarer sight. For each `--model` and each view
this scores every image of the split through one view (after the one preprocessing path, turned and zoomed by
`model.turn`, which resamples as the training augmentation does: bilinear, mirrored at the border; `:black` leaves
the uncovered corners black, `:disc` blacks out everything outside the inscribed disc, `:discfill` paints it in the
colour of the skin next to it, `:shiftN` moves the content N pixels right and down, `:half` half a pixel
(bilinear), `:back` turns it back again) and reports the ROC AUC, its change from the upright view with a paired
bootstrap 95% interval, and the AUC of the upright view and that view averaged. By default the split is each
bundle's own validation split (as it was drawn for training); `--split test` scores the test split without the
images that duplicate train or val.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from model.architecture import CircleMask
from model.bundle import load_bundle, load_card
from model.inference import Predictor
from model.preprocessing import fill_dark_frame
from model.turn import turn
from train import data as data_mod
from train.calibrate import validation_split
from train.cli import command, not_a_bundle_file, random_seed, resamples, writable
from train.metrics import paired_auc_interval

log = logging.getLogger("train.views")

DEFAULT_VIEWS = "0,22.5,45,90,45@0.925"


OPTIONS = {"": "the corners the turn uncovers filled with the mirrored border, as training fills them",
           "black": "the corners the turn uncovers left black instead of mirrored",
           "disc": "then everything outside the disc inscribed in the image black",
           "discfill": "then everything outside that disc painted in the colour of the skin next to it, as the "
                       "preprocessing's frame fill paints a dermoscope's black frame",
           "shiftN": "then the content moved N pixels right and down (N from 1 to 32), the rows and columns it "
                     "uncovers mirrored: the pixel grid and the content's orientation kept, their phase against "
                     "the network's strides (and the JPEG blocks') moved",
           "half": "then moved half a pixel right and down, bilinear (each pixel the mean of a 2x2 block, the edges "
                   "mirrored): the smoothing of a bilinear resampling at its strongest, orientation and grid kept",
           "back": "then turned back (and zoomed back), resampled a second time: the content upright again, smoothed "
                   "as two resamplings smooth it"}


def parse_view(text: str) -> tuple[float, float, str]:
    """"ANGLE" or "ANGLE@ZOOM", either maybe with ":OPTION", one of OPTIONS (degrees; ZOOM below 1 zooms in, as
    training's zoom) -> (angle, zoom, option)."""
    view, _, option = text.strip().partition(":")
    angle, _, zoom = view.partition("@")
    value = (float(angle), float(zoom) if zoom else 1.0, option.strip())
    if not 0.0 < value[1] <= 2.0:
        raise ValueError(f"a view's zoom is in (0, 2], not {value[1]}")
    if value[2].startswith("shift"):
        if not value[2][5:].isdigit() or not 1 <= int(value[2][5:]) <= 32:
            raise ValueError(f"a view's shift is shift1 to shift32 (pixels), not {value[2]!r}")
    elif value[2] not in OPTIONS:
        raise ValueError(f"a view's option is one of {', '.join(o for o in OPTIONS if o)}, not {value[2]!r}")
    return value


def view_images(x: np.ndarray, text: str) -> np.ndarray:
    """The images (after the one preprocessing path) as `text` views them."""
    angle, zoom, option = parse_view(text)
    images = turn(x, angle, fill="constant" if option == "black" else "reflect", zoom=zoom)
    if option in ("disc", "discfill"):
        images = images * CircleMask.disc(images.shape[1], images.shape[2])
    if option == "discfill":
        images = np.stack([fill_dark_frame(np.clip(np.rint(im), 0, 255).astype(np.uint8)) for im in images])
    if option == "half":
        padded = np.pad(images, ((0, 0), (1, 0), (1, 0), (0, 0)), mode="reflect")
        images = (padded[:, :-1, :-1] + padded[:, 1:, :-1] + padded[:, :-1, 1:] + padded[:, 1:, 1:]) / 4.0
    if option == "back":
        images = turn(images, -angle, zoom=1.0 / zoom)
    if option.startswith("shift"):
        n, size = int(option[5:]), images.shape[1]
        images = np.pad(images, ((0, 0), (n, 0), (n, 0), (0, 0)), mode="reflect")[:, :size, :size]
    return images.astype(np.float32)


def log_odds(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    """The network's log-odds of malignancy for each image (one view each; the ranking is the calibrated one's). The
    predictor runs the forward pass in bounded chunks itself."""
    probs = np.clip(predictor.raw_probabilities(images, tta_views=1, turns=(0.0,)).astype(np.float64), 1e-7, 1.0)
    return np.log(probs[:, 1]) - np.log(probs[:, 0])


def score_views(predictor: Predictor, x: np.ndarray, y: np.ndarray, views: list[str], bootstrap: int = 1000) -> dict:
    upright = log_odds(predictor, x)
    out = {"images": int(len(y)), "melanomas": int(y.sum()), "upright_auc": float(skm.roc_auc_score(y, upright)),
           "views": {}}
    for text in views:
        angle, zoom, option = parse_view(text)
        scores = log_odds(predictor, view_images(x, text))
        auc = float(skm.roc_auc_score(y, scores))
        change = paired_auc_interval(y, upright, scores, n=bootstrap)
        both = float(skm.roc_auc_score(y, (upright + scores) / 2))
        out["views"][text] = {"angle": angle, "zoom": zoom, "option": option, "roc_auc": auc,
                              "auc_change": auc - out["upright_auc"], "auc_change_ci95": change,
                              "roc_auc_with_upright": both}
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.views", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, action="append", help="bundle .keras file; give it more than once")
    parser.add_argument("--data", required=True, help="data folder or label CSV, as for training")
    parser.add_argument("--images", default=None, help="image folder for a CSV (default: the CSV's folder)")
    parser.add_argument("--split", default="val", choices=("val", "test"),
                        help="each bundle's own validation split, or the test split without duplicates (default: val)")
    parser.add_argument("--views", default=DEFAULT_VIEWS,
                        help="comma-separated views, ANGLE or ANGLE@ZOOM in degrees, either maybe with :OPTION, one of "
                        + "; ".join(f"{name} ({what})" for name, what in OPTIONS.items() if name)
                        + f"; e.g. 0:disc or 45:back (default: {DEFAULT_VIEWS})")
    parser.add_argument("--bootstrap", type=resamples, default=1000, help="paired bootstrap resamples (default: 1000)")
    parser.add_argument("--seed", type=random_seed, default=None, help=data_mod.SEED_HELP)
    parser.add_argument("--out", default=None, help="JSON file to write (default: runs/views_<split>.json)")
    args = parser.parse_args(argv)
    args.views = [v.strip() for v in args.views.split(",") if v.strip()]
    try:
        for view in args.views:
            parse_view(view)
    except ValueError as exc:
        parser.error(f"--views: {exc}")
    return args


@command
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    out = Path(args.out or f"runs/views_{args.split}.json")
    writable(out.parent, given=out)
    not_a_bundle_file(out, args.model)
    seed = data_mod.bundle_seed(args.seed, *(load_card(m) for m in args.model))
    dataset = data_mod.discover(args.data, args.images, seed=seed)
    if args.split == "test":
        dataset.duplicates = data_mod.find_duplicates(dataset, known=Path(args.data) / "NEAR_DUPLICATES.csv")
    results = {}
    for model_path in args.model:
        bundle = load_bundle(model_path)
        predictor = Predictor(bundle)
        split = (validation_split(dataset, bundle.card, args.data)[0] if args.split == "val"
                 else dataset.split("test", drop_duplicates=True))
        x, y = data_mod.load_images(split.paths, predictor.spec), np.asarray(split.labels) == 1
        log.info("%s: %d %s images, %d views", model_path, len(y), args.split, len(args.views))
        results[str(model_path)] = r = score_views(predictor, x, y, args.views, args.bootstrap)
        print(f"{model_path} ({args.split}, {r['images']} images, {r['melanomas']} melanomas): upright AUC "
              f"{r['upright_auc']:.4f}")
        print(f"  {'view':12s} {'AUC':>7s} {'change [95% CI]':>26s} {'with upright':>13s}")
        for text, v in r["views"].items():
            lo, hi = v["auc_change_ci95"]
            print(f"  {text:12s} {v['roc_auc']:7.4f} {v['auc_change']:+8.4f} [{lo:+.4f}, {hi:+.4f}] "
                  f"{v['roc_auc_with_upright']:13.4f}")
    if len(results) > 1:
        for text in args.views:
            changes = [r["views"][text]["auc_change"] for r in results.values()]
            print(f"view {text}: mean change {np.mean(changes):+.4f} over {len(changes)} bundles, higher than upright "
                  f"on {sum(c > 0 for c in changes)}")
    report = {"command": "python -m train.views " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "split": args.split, "data": str(args.data), "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")
    return report


if __name__ == "__main__":
    main()
