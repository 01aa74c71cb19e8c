"""Fit the gate and the indeterminate band for a bundle, and measure how often it refuses.

    python -m train.gate --model model/shipped/melanoma_efficientnet.keras \
        --data ../shared/data/isic2017 --fit --nonlesion runs/nonlesion

`--fit` stores in the bundle: quality limits and the training split's pooled features
(`<name>.gate.npz`, with the k-NN distance threshold at `--percentile` of the training images'
leave-one-out distances), and the indeterminate band, sized on the validation split. The stored features
hold every training image as it is and in the views of `--bank-views` (default: slightly blurred, and through
a contact dermoscope's ring of random size), so that the gate does not take a lesion photographed a little out
of focus or through a dermoscope for something that is not a lesion; the threshold stays the plain images'. `--fit --select`
(what `python -m train` does) chooses the layer and percentile by a fixed rule instead: of the
candidate pairs, the one that refuses the most images of the non-lesion set (`python -m train.nonlesion`,
seed 0) while refusing at most 2% of the validation lesions; the sweep is stored in the card. Without
`--fit` it only measures: the refusal rate on the real lesion images of `--split` and on the
non-lesion set (see `python -m train.nonlesion`). Writes gate.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFilter

from model.bundle import card_path, load_bundle, load_card, write_card
from model.cues import has_dark_corners
from model.gate import FeatureNeighbours, check_quality, fit_quality_limits, quality_measures
from model.inference import DEFAULT_GATE_LAYER, Predictor
from model.preprocessing import ImageError, PreprocessSpec, decode, preprocess, squash
from model.runtime import make_forward
from model.turn import parse_turns, turn
from train import data as data_mod
from train.augment import RING_BLACK, RING_RADIUS, RING_SHIFT
from train.cli import command, random_seed, ranged, writable
from train.robustness import dermoscope_ring
from train.shipcheck import Limits

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
    # the logit and sigmoid round trip can land an ulp off the threshold: the band always holds it
    return [min(float(sigmoid(centre - width)), float(threshold)), max(float(sigmoid(centre + width)), float(threshold))]


def slight_blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur of sigma 0.5-2 px per 256 px of the shorter side: a camera a little out of focus, or an image of
    lower resolution (the training augmentation's range, `--blur-augment`, less its barely visible end)."""
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0) * min(image.size) / 256))


def random_ring(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Near-black outside a circle of radius 0.40-0.58 of the shorter side, its centre moved by up to 4%: a contact
    dermoscope's field of view, drawn from the training augmentation's ranges (`train.augment.RING_*`)."""
    w, h = image.size
    side = min(w, h)
    r = rng.uniform(*RING_RADIUS) * side
    cx, cy = w / 2 + rng.uniform(-RING_SHIFT, RING_SHIFT) * side, h / 2 + rng.uniform(-RING_SHIFT, RING_SHIFT) * side
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    black = tuple(int(v) for v in rng.uniform(0, RING_BLACK, 3))
    return Image.composite(image, Image.new("RGB", image.size, black), mask)


def exposure(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """All channels times a gain of 0.7-1.3, clipped: under- or overexposure. Not among the default views: on the
    shipped model it made the gate refuse more plain lesions than the 2% target (README, the gate)."""
    gain = rng.uniform(0.7, 1.3)
    return image.point(lambda v: min(255, int(v * gain + 0.5)))


BANK_VIEWS = {"blur": slight_blur, "ring": random_ring, "exposure": exposure}
DEFAULT_BANK_VIEWS = ("blur", "ring")


def bank_views(paths: list[Path], spec, views=DEFAULT_BANK_VIEWS, seed: int = 0):
    """The training images through the one preprocessing path, as they are and then in each of `views`
    (`BANK_VIEWS`): one (len(paths), size, size, 3) uint8 array per view, made when asked for, so that only one
    view's images are in memory at a time. Their features, stacked in this order, make the gate's bank."""
    yield data_mod.load_images(paths, spec)
    rng = np.random.default_rng(seed)
    for view in views:
        shift = BANK_VIEWS[view]
        yield np.stack([preprocess(shift(decode(Path(p).read_bytes(), draft_size=spec.image_size), rng), spec)
                        for p in paths])


GATE_CANDIDATES = (("block4c_add", 99.5), ("block4c_add", 99.0), ("block5c_add", 99.5), ("block5c_add", 99.0),
                   ("block6d_add", 99.5), ("block6d_add", 99.0))
MAX_VAL_LESION_REFUSAL = 0.02
MAX_RINGED_LESION_REFUSAL = Limits.held_max_refused  # python -m train.shipcheck's limit under the simulated ring


def choose(rows: list[dict], max_val_lesion_refusal: float = MAX_VAL_LESION_REFUSAL,
           max_ringed_refusal: float = MAX_RINGED_LESION_REFUSAL) -> dict:
    """The selection rule, over sweep rows in candidate order.

    Among the candidates that refuse at most `max_val_lesion_refusal` of the validation lesions and at most
    `max_ringed_refusal` of the same lesions seen through a contact dermoscope's ring (rows without
    `val_ringed_refused` are not held to that), the one that refuses the most non-lesion images; ties go to
    fewer lesions refused, then to the earlier candidate. When none meets both limits, the lesion limit
    alone decides; when none meets that, the candidate refusing the fewest lesions.
    """
    if not rows:
        raise ValueError("no gate candidates to choose from")
    within = [r for r in rows if r["val_lesions_refused"] <= max_val_lesion_refusal]
    eligible = [r for r in within if r.get("val_ringed_refused", 0.0) <= max_ringed_refusal] or within
    if not eligible:
        return min(rows, key=lambda r: (r["val_lesions_refused"], -r["nonlesion_refused"]))
    return max(eligible, key=lambda r: (r["nonlesion_refused"], -r["val_lesions_refused"]))


def served_quality_measures(paths: list[Path], spec) -> list[dict]:
    """Each image's quality measures as the server takes them (`Predictor.assess`): decoded at the JPEG draft scale
    it uses and measured on the picture squashed to the model's input. Measured on the whole image instead, the
    limits of a bundle with a small input (96 px or less) were those of sharper pictures than it is served, and its
    quality gate refused most of its own training images as too blurred."""
    measures = []
    for p in paths:
        image = decode(Path(p).read_bytes(), draft_size=spec.image_size)
        measures.append(quality_measures(image, squash(image, spec)))
    return measures


def _screen(paths: list[Path], spec, limits: dict, shift=None) -> tuple[np.ndarray, np.ndarray]:
    """Decode each file as serving does, `shift` (a PIL image function) applied after decoding when given;
    (refused before the network, preprocessed arrays of the rest)."""
    refused, arrays = np.zeros(len(paths), bool), []
    for i, path in enumerate(paths):
        try:
            image = decode(Path(path).read_bytes(), draft_size=spec.image_size)
        except ImageError:
            refused[i] = True
            continue
        if shift is not None:
            image = shift(image)
        if check_quality(image, limits):
            refused[i] = True
        else:
            arrays.append(preprocess(image, spec))
    size = spec.image_size
    return refused, (np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8))


def sweep(bundle_path: Path, dataset: data_mod.Dataset, nonlesion: list[Path], k: int = 10,
          candidates=GATE_CANDIDATES, views=DEFAULT_BANK_VIEWS) -> tuple[list[dict], dict[str, np.ndarray], dict]:
    """Refusal rates of every candidate (layer, percentile) on the validation lesions, the same lesions through a
    contact dermoscope's black ring (`train.robustness.dermoscope_ring`), and the non-lesion set.

    The whole gate is measured (unreadable or poor-quality images refused before the network, then the
    k-NN distance), from one forward pass per image through every candidate layer, of the view the served gate
    reads (the first of the card's `view_turns`). Returns the rows,
    the training images' pooled features per layer and the quality limits, so `fit` need not redo them.
    """
    bundle = load_bundle(bundle_path)
    spec = PreprocessSpec.from_dict(bundle.card["preprocessing"])
    model = bundle.model
    names = {layer.name for layer in model.layers}
    missing = sorted({layer for layer, _ in candidates} - names)
    if missing:
        log.info("gate candidates not in this network, skipped: %s", ", ".join(missing))
    layers = list(dict.fromkeys(layer for layer, _ in candidates if layer in names))
    if not layers:
        raise ValueError(f"none of the gate's candidate layers is in the network: {sorted({c[0] for c in candidates})}")
    outputs = [model.get_layer(name).output for name in layers]
    dims = [int(o.shape[-1]) for o in outputs]
    pooled = keras.Model(model.inputs, [model.output, *outputs])
    size = spec.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)], autograph=False)
    def forward(x):
        probs, *maps = pooled(x, training=False)
        return probs, tf.concat([tf.reduce_mean(m, axis=(1, 2)) for m in maps], axis=1)

    run = make_forward(forward)  # the serving runtime (OpenVINO where installed), every layer in one pass
    first = parse_turns(bundle.card.get("view_turns", [0.0]))[0]  # the view whose features the served gate reads

    def features(arrays: np.ndarray) -> list[np.ndarray]:
        chunks = [run(turn(arrays[i : i + 32], first))[1] for i in range(0, len(arrays), 32)]
        joined = np.concatenate(chunks) if chunks else np.zeros((0, sum(dims)), np.float32)
        return np.split(joined, np.cumsum(dims)[:-1], axis=1)

    train = dataset.splits["train"]
    limits = fit_quality_limits(served_quality_measures(train.paths, spec))
    per_view = [features(arrays) for arrays in bank_views(train.paths, spec, views)]
    bank = [np.concatenate(parts) for parts in zip(*per_view)]  # per layer, view after view
    n_images = len(train.paths)
    val = dataset.splits["val"].paths
    screened = {"val": _screen(val, spec, limits), "val_ringed": _screen(val, spec, limits, dermoscope_ring),
                "nonlesion": _screen(nonlesion, spec, limits)}
    feats = {name: features(arrays) for name, (_, arrays) in screened.items()}
    rows = []
    for layer, percentile in candidates:
        if layer not in layers:
            continue
        j = layers.index(layer)
        threshold = float(np.percentile(FeatureNeighbours.leave_one_out_scores(bank[j], k, n_images), percentile))
        gate = FeatureNeighbours(bank[j], k, threshold)
        rates = {}
        for name, (before, _) in screened.items():
            refused = before.copy()
            refused[~before] = gate.refuse(feats[name][j]) if len(feats[name][j]) else []
            rates[name] = float(refused.mean()) if len(refused) else 0.0
        rows.append({"layer": layer, "percentile": percentile, "distance_threshold": threshold,
                     "val_lesions_refused": rates["val"], "val_ringed_refused": rates["val_ringed"],
                     "nonlesion_refused": rates["nonlesion"]})
        log.info("gate candidate %s at %.1f: validation lesions refused %.1f%% (%.1f%% with a dermoscope ring), "
                 "non-lesion images %.1f%%", layer, percentile, 100 * rates["val"], 100 * rates["val_ringed"],
                 100 * rates["nonlesion"])
    return rows, dict(zip(layers, bank)), limits


def fit_selected(bundle_path: Path, dataset: data_mod.Dataset, nonlesion_dir: Path, k: int = 10,
                 band_fraction: float = 0.15, candidates=GATE_CANDIDATES,
                 max_val_lesion_refusal: float = MAX_VAL_LESION_REFUSAL, views=DEFAULT_BANK_VIEWS) -> dict:
    """Sweep the candidates on `nonlesion_dir` (a train.nonlesion folder), fit the chosen one, record the sweep."""
    nonlesion_dir = Path(nonlesion_dir)
    rows_n = list(csv.DictReader(open(nonlesion_dir / "MANIFEST.csv")))
    rows, banks, limits = sweep(bundle_path, dataset, [nonlesion_dir / r["file"] for r in rows_n], k, candidates,
                                views)
    chosen = choose(rows, max_val_lesion_refusal)
    log.info("gate: %s at percentile %.1f chosen", chosen["layer"], chosen["percentile"])
    selection = {
        "rule": f"of the candidates refusing at most {max_val_lesion_refusal:.0%} of the validation lesions and at "
                f"most {MAX_RINGED_LESION_REFUSAL:.0%} of them with a dermoscope ring, the one refusing the most "
                f"non-lesion images; ties to fewer lesions refused, then to the earlier candidate",
        "nonlesion_images": len(rows_n),
        "nonlesion_set": "python -m train.nonlesion --seed 0 --no-browser",
        "candidates": rows,
    }
    return fit(bundle_path, dataset, k, chosen["percentile"], band_fraction, chosen["layer"], selection,
               train_features=banks[chosen["layer"]], quality=limits, views=views)


def fit(bundle_path: Path, dataset: data_mod.Dataset, k: int, percentile: float, band_fraction: float,
        layer: str = DEFAULT_GATE_LAYER, selection: dict | None = None, train_features: np.ndarray | None = None,
        quality: dict | None = None, views=DEFAULT_BANK_VIEWS) -> dict:
    """Fit the gate at `layer` and the band; `train_features` and `quality`, when a sweep already has them,
    are the training images' pooled features at that layer (every view of `bank_views`) and the quality limits."""
    bundle = load_bundle(bundle_path)
    bundle.card["gate"] = {"layer": layer}
    predictor = Predictor(bundle)
    train = dataset.splits["train"]
    if quality is None:
        quality = fit_quality_limits(served_quality_measures(train.paths, predictor.spec))
    feats = train_features
    if feats is None:
        feats = np.concatenate([features_of(predictor, arrays)[1]
                                for arrays in bank_views(train.paths, predictor.spec, views)])
    loo = FeatureNeighbours.leave_one_out_scores(feats, k, len(train.paths))
    threshold = float(np.percentile(loo, percentile))
    features_file = bundle_path.with_suffix(".gate.npz").name
    neighbours = FeatureNeighbours(feats, k, threshold)  # written with the card at the end, not before: a mistake in
    # between (an unreadable validation image) left the new gate file beside the old card, and the bundle refused
    x_val = data_mod.load_images(dataset.splits["val"].paths, predictor.spec)
    p_val = predictor.probability(x_val)
    card = bundle.card
    card["gate"] = {
        "quality": quality,
        "layer": layer,
        "features_file": features_file,
        "k": k,
        "distance_threshold": threshold,
        "percentile_of_training_images": percentile,
        "bank_views": ["plain", *views],
        "bank_images": len(train.paths),
    }
    if selection:
        card["gate"]["selection"] = selection
    card["indeterminate_band"] = indeterminate_band(p_val, predictor.threshold, band_fraction)
    card["indeterminate_band_fraction_of_validation"] = band_fraction
    write_card(bundle_path, card, also=[(bundle_path.parent / features_file, neighbours.save)])
    log.info("gate fitted: k=%d, distance threshold %.4f; band %s", k, threshold, card["indeterminate_band"])
    return card


def refusal_rate(predictor: Predictor, paths: list[Path], batch: int = 16) -> tuple[float, list[dict]]:
    """Fraction of files refused (quality, not-a-lesion, or not decodable) and each file's outcome, with whether the
    image has a dermoscope's dark rim in its corners (`model.cues`; None where it could not be decoded)."""
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
            outcomes.append({"file": str(p), "refused": bool(v.get("rejected")), "code": v.get("code"),
                             "dark_corners": has_dark_corners(im) if isinstance(im, Image.Image) else None})
    return float(np.mean([o["refused"] for o in outcomes])), outcomes


@command
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m train.gate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="bundle .keras file")
    parser.add_argument("--data", required=True, help="data folder or label CSV, as for training")
    parser.add_argument("--split", default="test", choices=data_mod.SPLITS, help="lesion split measured (default: test)")
    parser.add_argument("--nonlesion", default=None, help="folder of non-lesion images (python -m train.nonlesion)")
    parser.add_argument("--fit", action="store_true", help="fit the gate and band on train/val and store them")
    parser.add_argument("--select", action="store_true",
                        help="with --fit: choose --layer and --percentile by the selection rule, as python -m train "
                             "does, on the non-lesion set of train.nonlesion --seed 0 --no-browser (built under --out)")
    parser.add_argument("--k", type=ranged(int, lambda v: v >= 1, "a whole number, 1 or more (e.g. 10)"), default=10,
                        help="k of the k-th nearest neighbour (default: 10)")
    parser.add_argument("--percentile", default=99.5,
                        type=ranged(float, lambda v: 0 < v <= 100, "a percentile in (0, 100] (e.g. 99.5)"),
                        help="training-image distance percentile used as threshold (default: 99.5)")
    parser.add_argument("--layer", default=DEFAULT_GATE_LAYER,
                        help=f"layer whose globally pooled output the gate compares (default: {DEFAULT_GATE_LAYER})")
    parser.add_argument("--bank-views", default=",".join(DEFAULT_BANK_VIEWS),
                        help="with --fit: views of each training image stored beside it, from: "
                             f"{', '.join(BANK_VIEWS)}; none = the images as they are only "
                             f"(default: {','.join(DEFAULT_BANK_VIEWS)})")
    parser.add_argument("--band-fraction", type=ranged(float, lambda v: 0 <= v < 1, "a share in [0, 1) (e.g. 0.15)"),
                        default=0.15,
                        help="fraction of validation images inside the indeterminate band (default: 0.15)")
    parser.add_argument("--images", default=None, help="image folder for a CSV (default: the CSV's folder)")
    parser.add_argument("--seed", type=random_seed, default=None, help=data_mod.SEED_HELP)
    parser.add_argument("--out", default=None, help="output folder (default: runs/gate_<bundle>)")
    args = parser.parse_args(argv)
    if args.select and not args.fit:
        parser.error("--select chooses the layer of a gate being fitted: add --fit")
    views = () if args.bank_views == "none" else tuple(v for v in args.bank_views.split(",") if v)
    unknown = [v for v in views if v not in BANK_VIEWS]
    if unknown:
        parser.error(f"unknown bank view {', '.join(unknown)}; choose from {', '.join(BANK_VIEWS)}, or none")
    if args.nonlesion and not (Path(args.nonlesion) / "MANIFEST.csv").is_file():
        parser.error(f"--nonlesion {args.nonlesion} has no MANIFEST.csv: make the folder with python -m "
                     f"train.nonlesion --out {args.nonlesion}")
    if args.fit:  # the gate file and the card are written beside the bundle after minutes of work: checked now
        writable(Path(args.model).parent, "--fit", card_path(args.model))
    card = load_card(args.model)
    dataset = data_mod.discover(args.data, args.images, seed=data_mod.bundle_seed(args.seed, card))
    dataset, moved = data_mod.dataset_as_trained(dataset, card, args.data)
    if moved:
        log.info("%d training images moved to validation, as when the bundle trained (--val-from-train)", moved)
    out = writable(args.out or f"runs/gate_{Path(args.model).stem}")
    if args.fit and args.select:
        from train.nonlesion import build

        build(out / "nonlesion_seed0", seed=0, with_browser=False)
        fit_selected(Path(args.model), dataset, out / "nonlesion_seed0", args.k, args.band_fraction, views=views)
    elif args.fit:
        fit(Path(args.model), dataset, args.k, args.percentile, args.band_fraction, args.layer, views=views)
    predictor = Predictor(load_bundle(args.model))
    report = {"model": args.model, "split": args.split}
    val_rate, _ = refusal_rate(predictor, dataset.splits["val"].paths)
    report["val_lesions_refusal_rate"] = val_rate
    rate, outcomes = refusal_rate(predictor, dataset.splits[args.split].paths)
    report["lesions"] = {"n": len(outcomes), "refused": int(sum(o["refused"] for o in outcomes)), "rate": rate,
                         "by_reason": _by_reason(outcomes)}
    rimmed = [o for o in outcomes if o["dark_corners"]]
    report["lesions"]["dark_corners"] = {"n": len(rimmed), "refused": int(sum(o["refused"] for o in rimmed))}
    y = np.asarray(dataset.splits[args.split].labels)
    mel = [o for o, label in zip(outcomes, y) if label == 1]
    report["melanomas_refused"] = int(sum(o["refused"] for o in mel))
    print(f"val lesion images refused: {val_rate:.1%}")
    print(f"{args.split} lesion images refused: {report['lesions']['refused']}/{len(outcomes)} ({rate:.1%}); "
          f"melanomas refused: {report['melanomas_refused']}/{len(mel)}; with a dark rim in the corners refused: "
          f"{report['lesions']['dark_corners']['refused']}/{len(rimmed)}")
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
