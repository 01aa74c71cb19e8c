"""Fit the gate and the indeterminate band for a bundle, and measure how often it refuses.

    python -m train.gate --model model/shipped/melanoma_efficientnet.keras \
        --data ../shared/data/isic2017 --fit --nonlesion runs/nonlesion

`--fit` stores in the bundle: quality limits and the training split's pooled features
(`<name>.gate.npz`, with the k-NN distance threshold at `--percentile` of the training images'
leave-one-out distances), and the indeterminate band, sized on the validation split. Without
`--fit` it only measures: the refusal rate on the real lesion images of `--split` and on the
non-lesion set (see `python -m train.nonlesion`). Writes gate.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from model.bundle import card_path, load_bundle
from model.gate import FeatureNeighbours, fit_quality_limits, quality_measures
from model.inference import DEFAULT_GATE_LAYER, Predictor
from model.preprocessing import ImageError, decode
from train import data as data_mod

log = logging.getLogger("train.gate")


def features_of(predictor: Predictor, arrays: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    probs, feats = [], []
    for i in range(0, len(arrays), batch_size):
        p, f = predictor.raw_outputs(arrays[i : i + batch_size], tta_views=1)
        probs.append(p)
        feats.append(f)
    return np.concatenate(probs), np.concatenate(feats)


def indeterminate_band(p_val: np.ndarray, threshold: float, fraction: float) -> list[float]:
    """The band around the threshold (symmetric in log-odds) holding `fraction` of the validation images."""
    logit = lambda p: np.log(np.clip(p, 1e-6, 1 - 1e-6) / np.clip(1 - p, 1e-6, 1))  # noqa: E731
    distance = np.abs(logit(p_val) - logit(np.array(threshold)))
    width = float(np.quantile(distance, fraction))
    centre = float(logit(np.array(threshold)))
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    return [float(sigmoid(centre - width)), float(sigmoid(centre + width))]


def fit(bundle_path: Path, dataset: data_mod.Dataset, k: int, percentile: float, band_fraction: float,
        layer: str = DEFAULT_GATE_LAYER) -> dict:
    bundle = load_bundle(bundle_path)
    bundle.card["gate"] = {"layer": layer}
    predictor = Predictor(bundle)
    train = dataset.splits["train"]
    measures = [quality_measures(decode(Path(p).read_bytes())) for p in train.paths]
    x_train = data_mod.load_images(train.paths, predictor.spec)
    _, feats = features_of(predictor, x_train)
    loo = FeatureNeighbours.leave_one_out_scores(feats, k)
    threshold = float(np.percentile(loo, percentile))
    features_file = bundle_path.with_suffix(".gate.npz").name
    FeatureNeighbours(feats, k, threshold).save(bundle_path.parent / features_file)
    x_val = data_mod.load_images(dataset.splits["val"].paths, predictor.spec)
    p_val = predictor.probability(x_val)
    card = bundle.card
    card["gate"] = {
        "quality": fit_quality_limits(measures),
        "layer": layer,
        "features_file": features_file,
        "k": k,
        "distance_threshold": threshold,
        "percentile_of_training_images": percentile,
    }
    card["indeterminate_band"] = indeterminate_band(p_val, predictor.threshold, band_fraction)
    card["indeterminate_band_fraction_of_validation"] = band_fraction
    card_path(bundle_path).write_text(json.dumps(card, indent=2) + "\n")
    log.info("gate fitted: k=%d, distance threshold %.4f; band %s", k, threshold, card["indeterminate_band"])
    return card


def refusal_rate(predictor: Predictor, paths: list[Path], batch: int = 16) -> tuple[float, list[dict]]:
    """Fraction of files refused (quality, not-a-lesion, or not decodable) and each file's outcome."""
    outcomes = []
    for i in range(0, len(paths), batch):
        chunk, images = paths[i : i + batch], []
        for p in chunk:
            try:
                images.append(predictor.decode(Path(p).read_bytes()))
            except ImageError as exc:
                images.append(exc)
        ok = [im for im in images if isinstance(im, Image.Image)]
        verdicts = iter(predictor.assess(ok))
        for p, im in zip(chunk, images):
            v = next(verdicts) if isinstance(im, Image.Image) else {"rejected": True, "code": im.code}
            outcomes.append({"file": str(p), "refused": bool(v.get("rejected")), "code": v.get("code")})
    return float(np.mean([o["refused"] for o in outcomes])), outcomes


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m train.gate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="bundle .keras file")
    parser.add_argument("--data", required=True, help="data folder or label CSV, as for training")
    parser.add_argument("--split", default="test", choices=data_mod.SPLITS, help="lesion split measured (default: test)")
    parser.add_argument("--nonlesion", default=None, help="folder of non-lesion images (python -m train.nonlesion)")
    parser.add_argument("--fit", action="store_true", help="fit the gate and band on train/val and store them")
    parser.add_argument("--k", type=int, default=10, help="k of the k-th nearest neighbour (default: 10)")
    parser.add_argument("--percentile", type=float, default=99.5,
                        help="training-image distance percentile used as threshold (default: 99.5)")
    parser.add_argument("--layer", default=DEFAULT_GATE_LAYER,
                        help=f"layer whose globally pooled output the gate compares (default: {DEFAULT_GATE_LAYER})")
    parser.add_argument("--band-fraction", type=float, default=0.15,
                        help="fraction of validation images inside the indeterminate band (default: 0.15)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/gate_<bundle>)")
    args = parser.parse_args(argv)
    dataset = data_mod.discover(args.data)
    if args.fit:
        fit(Path(args.model), dataset, args.k, args.percentile, args.band_fraction, args.layer)
    predictor = Predictor(load_bundle(args.model))
    report = {"model": args.model, "split": args.split}
    val_rate, _ = refusal_rate(predictor, dataset.splits["val"].paths)
    report["val_lesions_refusal_rate"] = val_rate
    rate, outcomes = refusal_rate(predictor, dataset.splits[args.split].paths)
    report["lesions"] = {"n": len(outcomes), "refused": int(sum(o["refused"] for o in outcomes)), "rate": rate,
                         "by_reason": _by_reason(outcomes)}
    y = np.asarray(dataset.splits[args.split].labels)
    mel = [o for o, label in zip(outcomes, y) if label == 1]
    report["melanomas_refused"] = int(sum(o["refused"] for o in mel))
    print(f"val lesion images refused: {val_rate:.1%}")
    print(f"{args.split} lesion images refused: {report['lesions']['refused']}/{len(outcomes)} ({rate:.1%}); "
          f"melanomas refused: {report['melanomas_refused']}/{len(mel)}")
    if args.nonlesion:
        folder = Path(args.nonlesion)
        rows = list(csv.DictReader(open(folder / "MANIFEST.csv")))
        rate_n, outcomes_n = refusal_rate(predictor, [folder / r["file"] for r in rows])
        families = {}
        for r, o in zip(rows, outcomes_n):
            f = families.setdefault(r["family"], {"n": 0, "refused": 0})
            f["n"] += 1
            f["refused"] += int(o["refused"])
        report["nonlesion"] = {"n": len(rows), "refused": int(sum(o["refused"] for o in outcomes_n)), "rate": rate_n,
                               "by_family": families, "by_reason": _by_reason(outcomes_n),
                               "accepted": [r["source"] + " " + r["file"] for r, o in zip(rows, outcomes_n)
                                            if not o["refused"]]}
        print(f"non-lesion images refused: {report['nonlesion']['refused']}/{len(rows)} ({rate_n:.1%}); "
              f"by family: {families}")
    out = Path(args.out or f"runs/gate_{Path(args.model).stem}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _by_reason(outcomes: list[dict]) -> dict:
    reasons = {}
    for o in outcomes:
        if o["refused"]:
            reasons[o["code"]] = reasons.get(o["code"], 0) + 1
    return reasons


if __name__ == "__main__":
    main()
