"""How a bundle holds up when the images look as if another camera, light or clinic took them.

    python -m train.robustness --model model/shipped/melanoma_efficientnet.keras \
        --data ../shared/data/isic2017 --split test

Each shift below is applied to the decoded image, before the one preprocessing path (squash, resize,
colour constancy) and the network, exactly as an upload from such a camera would go through the server.
The shifts are fixed and deterministic, so two runs give the same numbers. For each shift it reports the
ROC AUC and its change from the unshifted images with a paired bootstrap 95% interval, sensitivity and
specificity at the bundle's threshold, expected calibration error, how many verdicts flip, and how many
images the gate would refuse. Several `--model`s are compared side by side on the same images.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from sklearn import metrics as skm

from model.bundle import load_bundle, load_card
from model.inference import Predictor
from model.preprocessing import ImageError, decode
from train import data as data_mod
from train.cli import command, random_seed, resamples, writable
from train.metrics import expected_calibration_error, paired_auc_interval
from train.plots import robustness_chart

log = logging.getLogger("train.robustness")


def _gains(r: float, g: float, b: float) -> Callable[[Image.Image], Image.Image]:
    def shift(img: Image.Image) -> Image.Image:
        arr = np.asarray(img, dtype=np.float32) * np.array([r, g, b], np.float32)
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    return shift


def _gamma(gamma: float) -> Callable[[Image.Image], Image.Image]:
    table = [round(255.0 * (i / 255.0) ** gamma) for i in range(256)] * 3
    return lambda img: img.point(table)


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def shift(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return shift


def _low_resolution(factor: float) -> Callable[[Image.Image], Image.Image]:
    def shift(img: Image.Image) -> Image.Image:
        small = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
        return img.resize(small, Image.Resampling.BILINEAR).resize(img.size, Image.Resampling.BILINEAR)
    return shift


def dermoscope_ring(img: Image.Image) -> Image.Image:
    """Black outside the inscribed circle, as a contact dermoscope's field of view leaves it."""
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, img.width - 1, img.height - 1), fill=255)
    return Image.composite(img, Image.new("RGB", img.size), mask)


# name -> (what it imitates, the shift). The first entry is the reference.
SHIFTS: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "none": ("the images as they are", lambda img: img),
    "warm_light": ("warm illuminant: red x1.15, blue x0.80", _gains(1.15, 1.0, 0.80)),
    "cool_light": ("cool illuminant: red x0.85, blue x1.20", _gains(0.85, 1.0, 1.20)),
    "green_cast": ("green white-balance error: green x1.12", _gains(0.94, 1.12, 0.94)),
    "darker": ("underexposed: all channels x0.70", _gains(0.70, 0.70, 0.70)),
    "brighter": ("overexposed: all channels x1.30, clipped", _gains(1.30, 1.30, 1.30)),
    "gamma_0.8": ("flatter tone curve: gamma 0.8", _gamma(0.8)),
    "gamma_1.25": ("steeper tone curve: gamma 1.25", _gamma(1.25)),
    "desaturated": ("weaker colour: saturation x0.6", lambda img: ImageEnhance.Color(img).enhance(0.6)),
    "jpeg_q30": ("heavy compression: JPEG quality 30", _jpeg(30)),
    "blur": ("slightly out of focus: Gaussian blur, radius 1.5 px per 256 px of the shorter side",
             lambda img: img.filter(ImageFilter.GaussianBlur(1.5 * min(img.size) / 256))),
    "low_resolution": ("half the resolution, upscaled back", _low_resolution(0.5)),
    "dermoscope_ring": ("black field-of-view ring of a contact dermoscope", dermoscope_ring),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.robustness", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, action="append",
                        help="bundle .keras file; give it more than once to compare bundles on the same images")
    parser.add_argument("--data", required=True, help="data folder or label CSV, as for training")
    parser.add_argument("--images", default=None, help="image folder for a CSV (default: the CSV's folder)")
    parser.add_argument("--split", default="test", choices=(*data_mod.SPLITS, data_mod.ALL),
                        help="split to evaluate; all = every image of the data, as python -m train.evaluate --split "
                             "all (default: test)")
    parser.add_argument("--shifts", default=",".join(SHIFTS),
                        help=f"comma-separated shifts, from: {', '.join(SHIFTS)} (default: all)")
    parser.add_argument("--bootstrap", type=resamples, default=1000,
                        help="paired bootstrap resamples for the AUC change (default: 1000)")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="keep test images that duplicate train/val images (default: drop them)")
    parser.add_argument("--seed", type=random_seed, default=None, help=data_mod.SEED_HELP)
    parser.add_argument("--runtime", default="auto", choices=("auto", "openvino", "tensorflow"),
                        help="forward-pass runtime (default: auto, as the server)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/robustness_<split>)")
    args = parser.parse_args(argv)
    args.shifts = [s.strip() for s in args.shifts.split(",") if s.strip()]
    unknown = [s for s in args.shifts if s not in SHIFTS]
    if unknown:
        parser.error(f"unknown shift {', '.join(unknown)}; choose from {', '.join(SHIFTS)}")
    # every change is measured against the unshifted images, which come first
    args.shifts = ["none"] + [s for s in dict.fromkeys(args.shifts) if s != "none"]
    return args


def score_images(predictor: Predictor, images: list[Image.Image], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probability of malignancy for every image, and whether the gate would refuse it.

    The same steps as `Predictor.assess`, but every image gets a probability, refused or not, so that all
    shifts are scored on the same images.
    """
    probs, refused = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = np.stack([predictor.preprocess(img) for img in chunk])
        raw, features = predictor.raw_outputs(batch)
        probs.append(predictor.calibrated(raw))
        bad_quality = np.array([predictor.quality_refusal(img) is not None for img in chunk])
        refused.append(bad_quality | np.asarray(predictor.not_a_lesion(features), bool))
    return np.concatenate(probs), np.concatenate(refused)


def shift_metrics(y: np.ndarray, p: np.ndarray, refused: np.ndarray, p_ref: np.ndarray, threshold: float,
                  bootstrap: int) -> dict:
    pred, pred_ref = p >= threshold, p_ref >= threshold
    auc, auc_ref = skm.roc_auc_score(y, p), skm.roc_auc_score(y, p_ref)
    return {
        "roc_auc": float(auc),
        "auc_change": float(auc - auc_ref),
        "auc_change_ci95": paired_auc_interval(y, p_ref, p, bootstrap),
        "sensitivity": float(pred[y == 1].mean()),
        "specificity": float((~pred[y == 0]).mean()),
        "ece": expected_calibration_error(p, y)[0],
        "mean_abs_probability_change": float(np.mean(np.abs(p - p_ref))),
        "verdicts_flipped": float(np.mean(pred != pred_ref)),
        "refused_by_gate": float(refused.mean()),
    }


def evaluate_shifts(predictor: Predictor, images: list[Image.Image], y: np.ndarray, shifts: list[str],
                    bootstrap: int = 1000) -> dict[str, dict]:
    """Metrics of one predictor on the same images under every shift; `shifts[0]` is the reference."""
    results, p_ref = {}, None
    for name in shifts:
        p, refused = score_images(predictor, [SHIFTS[name][1](img) for img in images])
        p_ref = p if p_ref is None else p_ref
        results[name] = shift_metrics(y, p, refused, p_ref, predictor.threshold, bootstrap)
        log.info("%-16s AUC %.3f (%+.3f)", name, results[name]["roc_auc"], results[name]["auc_change"])
    return results


def format_table(results: dict[str, dict[str, dict]]) -> str:
    """One block per bundle: a row per shift."""
    lines = []
    for model, rows in results.items():
        title = f"{model}: AUC change with paired bootstrap 95% interval; sens/spec at the bundle's threshold"
        lines += [title, "-" * len(title),
                  f"{'shift':<16} {'AUC':>6} {'change [95% CI]':>26} {'sens':>6} {'spec':>6} {'ECE':>6} "
                  f"{'flipped':>8} {'refused':>8}"]
        for name, m in rows.items():
            lo, hi = m["auc_change_ci95"]
            change = "" if name == "none" else f"{m['auc_change']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            lines.append(f"{name:<16} {m['roc_auc']:>6.3f} {change:>26} {m['sensitivity']:>6.3f} "
                         f"{m['specificity']:>6.3f} {m['ece']:>6.3f} {m['verdicts_flipped']:>8.1%} "
                         f"{m['refused_by_gate']:>8.1%}")
        lines.append("")
    return "\n".join(lines)


@command
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    out = writable(args.out or f"runs/robustness_{args.split}")
    whole = args.split == data_mod.ALL
    seed = data_mod.bundle_seed(args.seed, *(load_card(m) for m in args.model))
    dataset = data_mod.discover(args.data, args.images, seed=seed, whole=whole)
    if not whole:
        dataset.duplicates = data_mod.find_duplicates(dataset, known=Path(args.data) / "NEAR_DUPLICATES.csv")
    data_hash = dataset.data_hash()
    seen, copies = data_mod.leave_out_copies_of_training_images({m: load_card(m) for m in args.model}, dataset,
                                                                data_hash, args.split, args.keep_duplicates)
    data_mod.not_own_data_under_all(seen, args.split, args.data)
    split = data_mod.scorable(dataset.split(args.split, drop_duplicates=not args.keep_duplicates), args.split,
                              args.data)
    images = []
    for path in split.paths:
        try:
            images.append(decode(Path(path).read_bytes()))
        except ImageError as exc:
            raise SystemExit(f"Unreadable image {path}: {exc.message}") from None
    y = np.asarray(split.labels)
    results = {}
    for model_path in args.model:
        bundle = load_bundle(model_path)
        key = str(model_path)
        log.info("%s: %d images of %s under %d shifts", key, len(images), args.split, len(args.shifts))
        results[key] = evaluate_shifts(Predictor(bundle, runtime=args.runtime), images, y, args.shifts, args.bootstrap)
    out.mkdir(parents=True, exist_ok=True)
    report = {"data": str(args.data), "split": args.split, "n": int(len(y)), "n_malignant": int(y.sum()),
              "duplicates_dropped": len(dataset.split(args.split, drop_duplicates=False)) - len(split),
              "data_hash": data_hash, "copies_of_training_images_left_out": 0 if args.keep_duplicates else len(copies),
              "shifts": {name: SHIFTS[name][0] for name in args.shifts}, "results": results}
    (out / "robustness.json").write_text(json.dumps(report, indent=2) + "\n")
    robustness_chart(results, out / "robustness.png")
    print(format_table(results))
    print(f"written: {out}/robustness.json and robustness.png")
    return report


if __name__ == "__main__":
    main()
