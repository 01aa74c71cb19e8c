"""Fine-tune EfficientNet on dermoscopic images and write a model bundle with its card.

    python -m train --data ../shared/data/isic2017 --output model/shipped/melanoma_efficientnet.keras

Stage 1 trains the head with the backbone frozen; stage 2 fine-tunes the backbone from
`--unfreeze-from` upwards with every BatchNormalization frozen (trained with `--train-batchnorm`),
at a lower learning rate with warm-up and cosine decay. The best epoch on validation ROC AUC is kept; temperature scaling and
the decision threshold (for `--target-sensitivity`) are fitted on the validation split; the test
split (without duplicates of train/val images) is evaluated once, at the end.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score
from tensorflow.python.framework import config as tf_config  # op determinism: only enabling it is public API

from model.architecture import (BACKBONES, DROP_CONNECT, POOLINGS, WeightsError, build_model, check_weights,
                                freeze_backbone, unfreeze_top_blocks)
from model.bundle import CLASS_NAMES, Bundle, BundleError, copy_bundle, load_card, save_bundle
from model.inference import Predictor
from model.machine import cpu_model, usable_cores
from model.preprocessing import PreprocessSpec
from model.turn import parse_turns
from train import data as data_mod
from train.audit import audit, cue_warning, remedy_applied
from train.cli import random_seed, writable
from train.augment import BLUR_KINDS, build_augmenter
from train.augment import build_consistency_shift as build_shift
from train.calibrate import CALIBRATIONS, operating_point
from train.evaluate import evaluate_split, write_predictions
from train.distributed import cluster_config, fit_multi_worker, is_chief, make_strategy
from train.losses import training_loss
from train.optimizers import SharpnessAware, clip_norm, fine_tune_optimizer
from train.gate import fit as fit_gate
from train.gate import fit_selected as fit_selected_gate
from train.nonlesion import build as build_nonlesion
from train.metrics import format_table
from train.plots import evaluation_figures, training_curves
from train.report import write_report

log = logging.getLogger("train")

# The largest --image-size: EfficientNet's largest, B7, takes 600. Measured here: at 1024 a batch of 8 took 19 GB to
# fine-tune on 24 images; at 4000 TensorFlow crashed (a segmentation fault, no message).
MOST_IMAGE_SIZE = 1024

# What --like leaves to this command: where the data and the outputs lie, and how this machine spreads the work.
NOT_LIKE = ("data", "images", "max_train_images", "extra_train", "extra_images", "aux_diagnosis", "distribute",
            "cpu_devices", "run_dir", "output", "like")


def like_defaults(bundle: str, p: argparse.ArgumentParser, known: set[str]) -> dict:
    """The training options recorded in BUNDLE's model card, as defaults for this command (see --like)."""
    try:
        recorded = load_card(bundle).get("training", {}).get("arguments")
    except BundleError as exc:
        p.error(f"--like: {exc}")
    if not isinstance(recorded, dict):
        p.error(f"--like: the model card of {bundle} records no training arguments (training.arguments), so its "
                f"recipe cannot be repeated; give the options instead")
    defaults = {k: v for k, v in recorded.items() if k in known and k not in NOT_LIKE}
    if isinstance(defaults.get("view_turns"), list):
        defaults["view_turns"] = tuple(defaults["view_turns"])
    ignored = sorted(k for k in recorded if k not in known)
    if ignored:
        log.warning("--like %s: this version has no option for %s in its card; left out", bundle, ", ".join(ignored))
    return defaults


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n")[1])
    p.add_argument("--like", default=None, metavar="BUNDLE",
                   help="train by the recipe of this bundle, read from its model card (e.g. "
                        "model/shipped/melanoma_efficientnet.keras, the shipped model's recipe and seed): every "
                        "training option it records becomes the default, and options given here override it; the "
                        "data, --images, --max-train-images, --extra-train, --aux-diagnosis, the distribution and "
                        "the outputs are this command's own (default: none, the defaults below)")
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="folder (train/val/test or class subfolders) or label CSV")
    g.add_argument("--images", default=None, help="image folder for a CSV (default: the CSV's folder)")
    g.add_argument("--max-train-images", type=int, default=None, help="use a seeded random subset of N training "
                   "images, for smoke tests (default: all)")
    g.add_argument("--val-from-train", type=float, default=0.0, metavar="SHARE",
                   help="move a stratified, seeded share of the training images (near-duplicates together) to "
                        "the validation split, which fixes checkpoint, calibration and threshold: more validation "
                        "melanomas for fewer training images (default: 0, the data's own split)")
    g.add_argument("--extra-train", default=None, metavar="DIR_OR_CSV",
                   help="more labelled images (class subfolders, split folders or a label CSV, as --data), all "
                        "added to the training split only, less any copy of a validation or test image: more "
                        "training data, such as HAM10000 or a clinic's own, with the same test split to judge by "
                        "(default: none)")
    g.add_argument("--extra-images", default=None, help="image folder for an --extra-train CSV (default: the CSV's "
                   "folder)")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="efficientnet_lite0", choices=BACKBONES, help="(default: efficientnet_lite0)")
    g.add_argument("--weights", default="imagenet", help="imagenet, none, or a weights file (default: imagenet)")
    g.add_argument("--image-size", type=int, default=256, help="square input size in pixels, 32 to 1024 (default: 256)")
    g.add_argument("--colour-constancy", default="shades_of_gray", choices=("shades_of_gray", "none"),
                   help="colour normalisation in the shared preprocessing (default: shades_of_gray)")
    g.add_argument("--frame-fill", action="store_true",
                   help="paint a contact dermoscope's black frame in the colour of the skin next to it, in the one "
                        "preprocessing path (training and serving; default: off)")
    g.add_argument("--hair-removal", action="store_true",
                   help="paint long, thin dark strands (hairs, ruler lines) in the colour around them, in the one "
                        "preprocessing path (training and serving; default: off)")
    g.add_argument("--dropout", type=float, default=0.3, help="head dropout (default: 0.3)")
    g.add_argument("--dense-units", type=int, default=256,
                   help="units of the head's hidden layer; 0 = none, a linear head on the pooled features "
                        "(default: 256)")
    g.add_argument("--pooling", choices=tuple(POOLINGS), default="avg",
                   help="how the last feature map becomes the head's input: global average, generalised mean "
                        "with a learned exponent (GeM, starting at 3), or a learned weighted average over positions "
                        "(gated attention, starting as the average) (default: avg)")
    g.add_argument("--circle-mask", action="store_true",
                   help="black out everything outside the disc inscribed in the image, inside the network, after "
                        "training's augmentation: turned training images and upright served ones then look alike "
                        "in the corners (default: off)")
    g.add_argument("--drop-connect", type=float, default=DROP_CONNECT, metavar="RATE",
                   help="stochastic depth: the backbone's residual blocks are skipped in training with a chance "
                        f"rising linearly to RATE at the last block, as EfficientNet was pretrained (default: "
                        f"{DROP_CONNECT})")
    g.add_argument("--aux-diagnosis", default=None, metavar="CSV",
                   help="train an auxiliary head on finer diagnoses (CSV with image_id or path, and diagnosis; "
                        "e.g. DATA/DIAGNOSIS.csv: melanoma, nevus, seborrheic_keratosis); used in training only, "
                        "the bundle keeps the 2-way head (default: none)")
    g.add_argument("--aux-weight", type=float, default=0.5, help="weight of the auxiliary loss (default: 0.5)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    g.add_argument("--head-epochs", type=int, default=2, help="stage 1 epochs, backbone frozen (default: 2)")
    g.add_argument("--head-lr", type=float, default=1e-3, help="stage 1 learning rate (default: 1e-3)")
    g.add_argument("--epochs", type=int, default=30, help="stage 2 (fine-tuning) epochs (default: 30)")
    g.add_argument("--lr", type=float, default=3e-4, help="stage 2 peak learning rate (default: 3e-4)")
    g.add_argument("--warmup-epochs", type=int, default=2, help="stage 2 linear warm-up epochs (default: 2)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="decoupled weight decay, Adam(W) (default: 1e-4)")
    g.add_argument("--momentum", type=float, default=0.0, metavar="BETA",
                   help="stage 2 optimizer: SGD with this Nesterov momentum (e.g. 0.9) in place of AdamW, same schedule "
                        "and decoupled weight decay; SGD wants a far larger --lr (e.g. 1e-2) (default: 0, AdamW)")
    g.add_argument("--clip-norm", type=float, default=0.0, metavar="NORM",
                   help="clip each step's gradients to this global norm, both stages (e.g. 1.0) (default: 0, off)")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="(default: 0.1)")
    g.add_argument("--auc-loss", type=float, default=0.0, metavar="WEIGHT",
                   help="add to the cross-entropy WEIGHT times a pairwise ranking loss: the mean squared hinge of "
                        "every (malignant, benign) pair in a batch whose log-odds differ by less than 1, a surrogate "
                        "of 1 - AUC (e.g. 0.5) (default: 0, off)")
    g.add_argument("--malignant-share", type=float, default=0.0, metavar="SHARE",
                   help="draw each epoch's training images with replacement, a malignant one with this chance "
                        "(class-balanced sampling at 0.5; the output bias starts at it); the offset of the "
                        "log-odds then moves, which --calibration platt fits on val (default: 0, each image once "
                        "per epoch, the imbalance left to the output bias)")
    g.add_argument("--focal-gamma", type=float, default=0.0, metavar="GAMMA",
                   help="focal loss in place of the cross-entropy: each image's cross-entropy times (1 - p)^GAMMA, "
                        "p its predicted probability of its own class, which turns the weight from the many easy "
                        "benign images to the hard ones (Lin et al. 2017; e.g. 2) (default: 0, the plain "
                        "cross-entropy)")
    g.add_argument("--ink-augment", type=float, default=0.0, metavar="RATE",
                   help="paint skin-marker ink on this share of training images, both classes (default: 0, off)")
    g.add_argument("--ring-augment", type=float, default=0.0, metavar="RATE",
                   help="darken the corners outside a dermoscope's circular field of view on this share of "
                        "training images (default: 0, off)")
    g.add_argument("--blur-augment", type=float, default=0.0, metavar="RATE",
                   help="blur this share of training images a little (Gaussian, sigma 0.3-2 px), as a camera "
                        "slightly out of focus or of lower resolution does (default: 0, off)")
    g.add_argument("--blur-kinds", default="gaussian", metavar="KINDS",
                   help="the kinds of blur --blur-augment draws from, one per blurred image, comma-separated: "
                        "gaussian, motion (a streak 3-9 px long at any angle, a camera that moved), median (3 x 3); "
                        "after the winning ISIC 2020 solution's one-of blurs (e.g. gaussian,motion,median) "
                        "(default: gaussian)")
    g.add_argument("--jpeg-augment", type=float, default=0.0, metavar="RATE",
                   help="compress this share of training images as JPEG, quality 30-90, as a camera or an upload "
                        "does (default: 0, off)")
    g.add_argument("--noise-augment", type=float, default=0.0, metavar="RATE",
                   help="add Gaussian noise, standard deviation 2-10 of 255 levels, to this share of training images, "
                        "as a camera's sensor does (e.g. 0.5) (default: 0, off)")
    g.add_argument("--clahe", type=float, default=0.0, metavar="RATE",
                   help="equalise the luminance's histogram tile by tile, contrast-limited (CLAHE: 8 x 8 tiles, clip "
                        "limit 1-4), on this share of training images, as the winning ISIC 2020 solution did on 70%% "
                        "(e.g. 0.7) (default: 0, off)")
    g.add_argument("--cutout", type=float, default=0.0, metavar="RATE",
                   help="cover one random square, 10-37.5%% of the side, with the image's mean colour on this share "
                        "of training images (Cutout, DeVries and Taylor 2017; e.g. 0.5) (default: 0, off)")
    g.add_argument("--distortion", type=float, default=0.0, metavar="RATE",
                   help="warp this share of training images by a smooth random field, each pixel moved up to 6%% of "
                        "the side (after the grid and elastic distortions of the winning ISIC 2020 solution; e.g. "
                        "0.7) (default: 0, off)")
    g.add_argument("--colour-jitter", type=float, default=1.0, metavar="SCALE",
                   help="scale the colour jitter's ranges: brightness +-15%%, contrast +-20%%, saturation times "
                        "0.54-1.86 and hue +-0.02 of the circle at 1; e.g. 2 doubles them, 0 turns the jitter off, "
                        "at most 3 (default: 1)")
    g.add_argument("--consistency", type=float, default=0.0, metavar="WEIGHT",
                   help="pair each augmented training image with a copy compressed as JPEG (quality 30-90), half "
                        "of the copies blurred first, and add WEIGHT times the Jensen-Shannon divergence between the "
                        "two predictions to the cross-entropy, which sees the uncompressed images only (AugMix's "
                        "consistency loss; e.g. 12); twice the images per step (default: 0, off)")
    g.add_argument("--random-crop", action="store_true",
                   help="zoom height and width apart: random crops of about 40-100%% of the image with the aspect "
                        "ratio changed, in place of the one zoom for both (default: off)")
    g.add_argument("--right-angles", type=float, default=0.0, metavar="SHARE",
                   help="turn this share of training images by a whole number of quarter turns instead of any angle, "
                        "so they keep their own corners (no mirrored borders), as upright uploads do (e.g. 0.5) "
                        "(default: 0, every angle of the circle)")
    g.add_argument("--unresampled", type=float, default=0.0, metavar="SHARE",
                   help="leave this share of training images unresampled: a flip and a whole number of quarter turns, "
                        "no zoom, so the network sees their own pixels as it sees an upright upload's (e.g. 0.3) "
                        "(default: 0, nearly every image resampled)")
    g.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mix each training batch with a shuffled copy of itself, images and targets alike, with "
                        "weights drawn from Beta(ALPHA, ALPHA) (Keras MixUp; e.g. 0.2) (default: 0, off)")
    g.add_argument("--cutmix", type=float, default=0.0, metavar="FACTOR",
                   help="paste a rectangle of a shuffled partner into each training image and mix the targets by its "
                        "area (Keras CutMix, Yun et al. 2019: the Beta distribution's alpha drawn from (0, FACTOR] "
                        "per batch; e.g. 1.0) (default: 0, off)")
    g.add_argument("--ema", type=float, default=0.0, metavar="MOMENTUM",
                   help="fine-tune with an exponential moving average of the weights (e.g. 0.99); validation, "
                        "checkpoints and the bundle use the averaged weights (default: 0, off)")
    g.add_argument("--sam", type=float, default=0.0, metavar="RHO",
                   help="sharpness-aware minimisation (Foret et al. 2021), both stages: each step's gradient is "
                        "taken at the weights moved RHO along the normalised gradient and applied at the weights "
                        "themselves, which seeks flat minima (e.g. 0.05); two forward and backward passes per step "
                        "(default: 0, off)")
    g.add_argument("--unfreeze-from", type=int, default=2, help="first backbone block fine-tuned, 0 = stem (default: 2)")
    g.add_argument("--layer-decay", type=float, default=1.0, metavar="FACTOR",
                   help="layer-wise learning rates in fine-tuning: the head and the top convolution get --lr, block 7 "
                        "FACTOR times it, block 6 FACTOR^2 times, and so on down (e.g. 0.7); lower blocks hold more "
                        "general features and move less (default: 1, one rate for all)")
    g.add_argument("--train-batchnorm", action="store_true",
                   help="fine-tune the BatchNormalization layers of those blocks too: scale and offset learnt, "
                        "statistics re-estimated on the training images instead of ImageNet's (default: frozen; "
                        "always trained with --weights none)")
    g.add_argument("--patience", type=int, default=10,
                   help="early stopping patience on val AUC, counted in the second half of the fine-tuning schedule "
                        "(default: 10)")
    g.add_argument("--soup", type=int, default=1, metavar="COPIES",
                   help="fine-tune this many copies from the one trained head, each with its own data order and "
                        "augmentation draws (seeds SEED, SEED+1, ...), and average their weights: a uniform model "
                        "soup (Wortsman et al. 2022), served at one network's cost. Kept when its validation AUC is "
                        "at least the best copy's, else the best copy is. Training time grows with the copies "
                        "(default: 1, no soup)")
    g.add_argument("--swa", type=int, default=0, metavar="EPOCHS",
                   help="stochastic weight averaging (Izmailov et al. 2018): after fine-tuning, this many more "
                        "epochs from the best weights at the constant rate --swa-lr, and the weights at their ends "
                        "averaged; the average is kept when its validation AUC is at least the fine-tuned weights', "
                        "else those are. Training time grows by these epochs (e.g. 6) (default: 0, off)")
    g.add_argument("--swa-lr", type=float, default=None, metavar="RATE",
                   help="the constant learning rate of --swa's epochs (default: a fifth of --lr)")
    g.add_argument("--lookahead", type=int, default=0, metavar="STEPS",
                   help="Lookahead (Zhang et al. 2019) around the fine-tuning's optimizer: every STEPS steps, and at "
                        "each epoch's end, the slow weights move halfway to where the optimizer took the fast ones, "
                        "and these start again from them; validation, checkpoints and the bundle see the slow "
                        "weights (e.g. 5) (default: 0, off)")
    g.add_argument("--seed", type=random_seed, default=42, help="(default: 42)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorFlow's deterministic ops: the same command, seed, data, library versions, kind of "
                        "CPU and number of cores give the same bundle, bit for bit. Without them the augmentation's "
                        "random draws, made by parallel threads, land on other batches from run to run, and so does "
                        "the model. "
                        "--no-deterministic for an accelerator with no deterministic kernel for some op "
                        "(TensorFlow's error names it) (default: on)")
    g = p.add_argument_group("distribution")
    g.add_argument("--distribute", default="none", choices=("none", "mirrored", "multi-worker"),
                   help="tf.distribute strategy: mirrored = all GPUs (or CPU devices) of this host, multi-worker = "
                        "several hosts configured by TF_CONFIG (default: none)")
    g.add_argument("--cpu-devices", type=int, default=0,
                   help="split the CPU into N logical devices for --distribute mirrored without GPUs (default: 0)")
    g = p.add_argument_group("calibration and output")
    g.add_argument("--target-sensitivity", type=float, default=0.90,
                   help="expected sensitivity for malignant on new images; the threshold is fixed on val for it "
                        "(default: 0.90)")
    g.add_argument("--calibration", choices=CALIBRATIONS, default="temperature",
                   help="fitted on val: temperature = one temperature on the log-odds; platt = a temperature and a "
                        "bias, for --auc-loss, whose ranking term leaves the log-odds' offset free (default: "
                        "temperature)")
    g.add_argument("--tta-views", type=int, default=1, choices=(1, 2, 4, 8),
                   help="test-time augmentation views the bundle is calibrated and served with (default: 1)")
    g.add_argument("--view-turns", type=_view_turns, default=(0.0,), metavar="DEGREES",
                   help="views the bundle is calibrated, gated and served with, degrees separated by commas, their "
                        "log-probabilities averaged (model.turn: 45 = the image turned 45 degrees as training turns "
                        "images; 0,45 = that and the upright view; default: 0, the upright view)")
    g.add_argument("--gate-layer", default="auto",
                   help="layer whose pooled features the not-a-lesion gate compares, at the 99.5th percentile; auto = "
                        "chosen by python -m train.gate's rule among block4c_add, block5c_add and block6d_add at "
                        "percentiles 99.5 and 99, on a generated non-lesion set (default: auto)")
    g.add_argument("--run-dir", default=None, help="run folder (default: runs/<time>_<backbone>)")
    g.add_argument("--output", default=None, help="also write the bundle here (e.g. model/shipped/NAME.keras)")
    first = p.parse_known_args(argv)[0]
    if first.like:
        plain = {k: p.get_default(k) for k in vars(first)}
        liked = like_defaults(first.like, p, set(vars(first)))
        p.set_defaults(**liked)
    args = p.parse_args(argv)
    if first.like:  # what the run takes from the card, and what the command line gave instead (it logged the card's)
        taken = {k: v for k, v in liked.items() if v != plain[k] and getattr(args, k) == v}
        given = {k: getattr(args, k) for k, v in liked.items() if getattr(args, k) != v}
        log.info("--like %s: %s%s", first.like, ", ".join(f"{k}={v}" for k, v in taken.items()) or "the default recipe",
                 f"; from the command line instead: {', '.join(f'{k}={v}' for k, v in given.items())}" if given else "")
    if not 32 <= args.image_size <= MOST_IMAGE_SIZE:
        p.error(f"--image-size is the square input's side in pixels, 32 to {MOST_IMAGE_SIZE} (e.g. 256), not "
                f"{args.image_size}")
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--epochs", args.epochs, 0),
                               ("--head-epochs", args.head_epochs, 0), ("--warmup-epochs", args.warmup_epochs, 0),
                               ("--patience", args.patience, 1)):
        if value < least:
            p.error(f"{flag} is a count, {least} or more, not {value}")
    if args.head_epochs + args.epochs < 1:
        p.error("--head-epochs and --epochs are both 0: nothing would train")
    if args.max_train_images is not None and args.max_train_images < 2:
        p.error(f"--max-train-images needs at least 2 images (one of each class), not {args.max_train_images}")
    if not 0 <= args.unfreeze_from <= 7:
        p.error(f"--unfreeze-from is the first backbone block fine-tuned, 0 (stem) to 7, not {args.unfreeze_from}")
    for flag, rate in (("--lr", args.lr), ("--head-lr", args.head_lr)):
        if not rate > 0:
            p.error(f"{flag} is a learning rate above 0 (e.g. 3e-4), not {rate}")
    if args.weight_decay < 0:
        p.error(f"--weight-decay is 0 (off) or more (e.g. 1e-4), not {args.weight_decay}")
    for flag, share in (("--dropout", args.dropout), ("--label-smoothing", args.label_smoothing)):
        if not 0.0 <= share < 1.0:
            p.error(f"{flag} is in [0, 1) (0 = off), not {share}")
    if not 0.0 < args.target_sensitivity < 1.0:
        p.error(f"--target-sensitivity is a share of melanomas between 0 and 1 (e.g. 0.9), not "
                f"{args.target_sensitivity}")
    for flag, rate in (("--ink-augment", args.ink_augment), ("--ring-augment", args.ring_augment),
                       ("--blur-augment", args.blur_augment), ("--jpeg-augment", args.jpeg_augment),
                       ("--cutout", args.cutout), ("--right-angles", args.right_angles),
                       ("--unresampled", args.unresampled), ("--distortion", args.distortion),
                       ("--noise-augment", args.noise_augment), ("--clahe", args.clahe)):
        if not 0.0 <= rate <= 1.0:
            p.error(f"{flag} is a share of training images in [0, 1] (0 = off, e.g. 0.3), not {rate}")
    kinds = tuple(kind.strip() for kind in args.blur_kinds.split(",") if kind.strip())
    if not kinds or any(kind not in BLUR_KINDS for kind in kinds) or len(set(kinds)) < len(kinds):
        p.error(f"--blur-kinds is a comma-separated list of distinct kinds among {', '.join(BLUR_KINDS)} "
                f"(e.g. gaussian,motion,median), not {args.blur_kinds!r}")
    args.blur_kinds = ",".join(kinds)
    if kinds != ("gaussian",) and args.blur_augment == 0:
        p.error(f"--blur-kinds {args.blur_kinds} chooses among the blurs of --blur-augment, which is off; give it a "
                f"share of training images too (e.g. --blur-augment 0.3)")
    if not 0.0 <= args.colour_jitter <= 3.0:
        p.error(f"--colour-jitter scales the colour jitter's ranges, in [0, 3] (0 = off, 1 = the default, e.g. 2), "
                f"not {args.colour_jitter}")
    if not 0.0 <= args.drop_connect < 1.0:
        p.error(f"--drop-connect is the last block's chance of being skipped, in [0, 1) (e.g. 0.2), not "
                f"{args.drop_connect}")
    if not 0.0 <= args.val_from_train < 0.5:
        p.error(f"--val-from-train is a share of the training images in [0, 0.5) (0 = off, e.g. 0.15), "
                f"not {args.val_from_train}")
    if args.dense_units < 0:
        p.error(f"--dense-units is the head's hidden layer width, 0 (no hidden layer) or more, not {args.dense_units}")
    if args.mixup < 0.0:
        p.error(f"--mixup is the Beta distribution's alpha, 0 (off) or more (e.g. 0.2), not {args.mixup}")
    if not 0.0 <= args.cutmix <= 1.0:
        p.error(f"--cutmix is the upper end of the Beta distribution's alpha, in [0, 1] (0 = off, e.g. 1.0), "
                f"not {args.cutmix}")
    if args.cutmix > 0 and args.mixup > 0:
        p.error("--cutmix and --mixup each mix a batch with a shuffled copy of itself; use one of them")
    if not 0.0 <= args.ema < 1.0:
        p.error(f"--ema is a momentum in [0, 1) (0 = off, e.g. 0.99), not {args.ema}")
    if args.clip_norm < 0.0:
        p.error(f"--clip-norm is a gradient norm, 0 (off) or more (e.g. 1.0), not {args.clip_norm}")
    if args.auc_loss < 0.0:
        p.error(f"--auc-loss is the ranking loss's weight, 0 (off) or more (e.g. 0.5), not {args.auc_loss}")
    if not 0.0 <= args.malignant_share < 1.0:
        p.error(f"--malignant-share is a chance in [0, 1) (0 = off, e.g. 0.5), not {args.malignant_share}")
    if not 0.0 < args.layer_decay <= 1.0:
        p.error(f"--layer-decay is a factor per block in (0, 1] (1 = off, e.g. 0.7), not {args.layer_decay}")
    if not 0.0 <= args.momentum < 1.0:
        p.error(f"--momentum is SGD's momentum, 0 (off: AdamW) up to but not 1 (e.g. 0.9), not {args.momentum}")
    if args.focal_gamma < 0.0:
        p.error(f"--focal-gamma is the focal loss's exponent, 0 (off) or more (e.g. 2), not {args.focal_gamma}")
    if args.focal_gamma > 0:
        for flag, on in (("--auc-loss", args.auc_loss > 0), ("--consistency", args.consistency > 0)):
            if on:
                p.error(f"--focal-gamma replaces the cross-entropy that {flag} adds its term to; use one of them")
    if args.consistency < 0.0:
        p.error(f"--consistency is the divergence's weight, 0 (off) or more (e.g. 12), not {args.consistency}")
    if args.consistency > 0:
        for flag, on in (("--mixup", args.mixup > 0), ("--cutmix", args.cutmix > 0),
                         ("--auc-loss", args.auc_loss > 0),
                         ("--aux-diagnosis", bool(args.aux_diagnosis)), ("--distribute", args.distribute != "none")):
            if on:
                p.error(f"--consistency pairs each image with its compressed copy in one batch; it does not combine "
                        f"with {flag}")
    if args.sam < 0.0:
        p.error(f"--sam is the radius of the weights' move, 0 (off) or more (e.g. 0.05), not {args.sam}")
    if args.sam > 0 and args.distribute == "multi-worker":
        p.error("--sam needs Keras's fit, which the multi-worker loop replaces; use --distribute none or mirrored")
    if args.soup < 1:
        p.error(f"--soup is a number of fine-tuned copies, 1 (no soup) or more (e.g. 2), not {args.soup}")
    if args.soup > 1 and args.distribute == "multi-worker":
        p.error("--soup averages copies fine-tuned one after another in this process; use --distribute none or "
                "mirrored")
    if args.swa < 0:
        p.error(f"--swa is a number of epochs, 0 (off) or more (e.g. 6), not {args.swa}")
    if args.swa_lr is not None and not (args.swa_lr > 0 and args.swa > 0):
        p.error("--swa-lr is the rate of --swa's epochs: a positive number, with --swa EPOCHS")
    if args.swa > 0 and (args.epochs < 1 or args.distribute == "multi-worker"):
        p.error("--swa averages the epochs after fine-tuning in this process; it needs --epochs 1 or more and "
                "--distribute none or mirrored")
    if args.lookahead < 0:
        p.error(f"--lookahead is a number of steps between syncs, 0 (off) or more (e.g. 5), not {args.lookahead}")
    if args.lookahead > 0 and (args.ema > 0 or args.distribute == "multi-worker"):
        p.error("--lookahead averages the fine-tuning's weights itself, through Keras's fit; it does not combine "
                "with --ema or --distribute multi-worker")
    if args.auc_loss > 0 and args.distribute == "multi-worker":
        p.error("--auc-loss compares images across a batch, which the multi-worker loop splits; "
                "use --distribute none or mirrored")
    if 0 < args.epochs <= args.warmup_epochs:  # trains, but not as the person may think: said, not refused
        log.warning("--warmup-epochs %d is not below --epochs %d: the learning rate rises through the whole of "
                    "fine-tuning, ends at %.0f%% of --lr and never decays; give fewer warm-up epochs for the usual "
                    "schedule", args.warmup_epochs, args.epochs, 100 * (0.01 + 0.99 * args.epochs / args.warmup_epochs))
    return args


class DivergedError(Exception):
    """Training diverged: the network's validation scores are no longer numbers."""


class ValidationAUC(keras.callbacks.Callback):
    """Adds val_auc (malignant ROC AUC on the validation split) to each epoch's logs; appends to history.csv."""

    def __init__(self, x_val: np.ndarray, y_val: np.ndarray, stage: str, history_csv: Path, batch_size: int = 64):
        super().__init__()
        self.x_val, self.y_val, self.stage, self.batch_size = x_val, y_val, stage, batch_size
        self.history_csv = Path(history_csv)
        self._started = 0.0
        self.forward = None  # the model's inference pass, traced once per stage (see `compiled_forward`)

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.forward is None:
            self.forward = compiled_forward(self.model)
        probs = predict_probs(self.model, self.x_val, self.batch_size, self.forward)
        if not np.isfinite(probs).all():  # was scikit-learn's "Input contains NaN" traceback
            rate = "--head-lr" if self.stage == "head" else "--lr"
            raise DivergedError(f"training diverged in {self.stage} epoch {epoch + 1}: the network's scores on the "
                                f"validation images are not numbers (loss {logs.get('loss', float('nan')):.4g}). "
                                f"Lower the learning rate ({rate}); no bundle was written.")
        logs["val_auc"] = float(roc_auc_score(self.y_val, probs[:, 1]))
        seconds = time.perf_counter() - self._started
        auc = logs.get("auc", next((v for k, v in logs.items() if k.endswith("_auc") and k != "val_auc"), None))
        row = {"epoch": epoch + 1, "stage": self.stage, "loss": logs.get("loss"), "auc": auc,
               "val_auc": logs["val_auc"], "learning_rate": logs.get("learning_rate"), "seconds": round(seconds, 1)}
        new = not self.history_csv.exists()
        with open(self.history_csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        log.info("%s epoch %d: loss %.4f, val_auc %.4f (%.0f s)", self.stage, epoch + 1, logs.get("loss", 0.0),
                 logs["val_auc"], seconds)


def compiled_forward(model: keras.Model):
    """`model(batch, training=False)` as one traced graph. Called eagerly, each of the network's layers is an op
    dispatched from Python; traced, validating 433 images at 256 px takes about 40% less time on 2 cores. It reads
    the model's variables when called, so it follows the weights through training, checkpoints and averaging."""
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)  # one trace for every batch size
    return tf.function(lambda batch: model(batch, training=False), input_signature=[spec], autograph=False)


def predict_probs(model: keras.Model, x: np.ndarray, batch_size: int = 64, forward=None) -> np.ndarray:
    """The benign/malignant softmax (the first output, for a training model with an auxiliary head), through
    `forward` (from `compiled_forward(model)`; one is traced for this call if none is given)."""
    forward = forward or compiled_forward(model)
    out = []
    for i in range(0, len(x), batch_size):
        probs = forward(tf.constant(x[i : i + batch_size], tf.float32))
        out.append((probs[0] if isinstance(probs, (list, tuple)) else probs).numpy())
    return np.concatenate(out)


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, augmenter,
                 y_aux: np.ndarray | None = None, mixup: float = 0.0, shift=None,
                 malignant_share: float = 0.0, cutmix: float = 0.0) -> tf.data.Dataset:
    """The shuffled, augmented training batches. With `shift` (see `ConsistencyLoss`), each batch is the B augmented
    images followed by the same images shifted, and the targets repeated.

    With `malignant_share` (0 < share < 1), each epoch is as many images as `x` drawn with replacement, a malignant
    one with that chance and a benign one otherwise, each class's images in a reshuffled order (class-balanced
    sampling at 0.5); at 0, each image once per epoch.

    `mixup` (Keras MixUp's alpha) or `cutmix` (Keras CutMix's factor) mixes each augmented batch with a shuffled copy
    of itself: one draw of weights and partners for the images and every target.
    """
    onehot = keras.utils.to_categorical(y, len(CLASS_NAMES)).astype(np.float32)
    targets = onehot if y_aux is None else (onehot, y_aux.astype(np.float32))
    if malignant_share > 0:
        counts = np.bincount(y, minlength=2)
        if counts.min() == 0:  # a class with nothing to draw from would never yield an image
            raise data_mod.DataError(f"--malignant-share draws from both classes, but the training images hold "
                                     f"{dict(zip(CLASS_NAMES, counts.tolist()))}")

        def one_class(label: int, offset: int) -> tf.data.Dataset:
            idx = np.flatnonzero(y == label)
            part = tf.data.Dataset.from_tensor_slices((x[idx], tf.nest.map_structure(lambda t: t[idx], targets)))
            return part.shuffle(len(idx), seed=seed + offset, reshuffle_each_iteration=True).repeat()

        ds = tf.data.Dataset.sample_from_datasets(
            [one_class(0, 0), one_class(1, 1)], weights=[1.0 - malignant_share, malignant_share], seed=seed + 2,
            rerandomize_each_iteration=True).take(len(x))
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, targets)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda a, b: (augmenter(tf.cast(a, tf.float32), training=True), b),
                num_parallel_calls=tf.data.AUTOTUNE)
    if mixup > 0 or cutmix > 0:
        mix = (keras.layers.MixUp(alpha=mixup, seed=seed + 10) if mixup > 0
               else keras.layers.CutMix(factor=cutmix, seed=seed + 10))

        def mix_batch(images, targets):
            transformation = mix.get_random_transformation(images, training=True)
            if cutmix > 0:  # weigh the targets by the pixels pasted, not the box's unrounded area (off by up to
                # a row and a column: 12% of a 16-pixel image, 0.8% of 256)
                transformation["mix_weight"] = 1.0 - tf.reduce_mean(
                    tf.cast(transformation["batch_masks"], tf.float32), axis=(1, 2, 3))
            images = mix.transform_images(images, transformation, training=True)
            return images, tf.nest.map_structure(
                lambda t: mix.transform_labels(t, transformation, training=True), targets)

        ds = ds.map(mix_batch, num_parallel_calls=tf.data.AUTOTUNE)
    if shift is not None:
        ds = ds.map(lambda a, b: (tf.concat([a, shift(a, training=True)], 0), tf.concat([b, b], 0)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def batchnorm_frozen(args: argparse.Namespace) -> bool:
    """Whether stage 2 keeps BatchNormalization frozen: yes for pretrained weights (their ImageNet statistics)
    unless --train-batchnorm; a network without pretrained weights has no statistics worth keeping."""
    pretrained = args.weights not in ("none", "None")
    return pretrained and not getattr(args, "train_batchnorm", False)


def fit_stage(model, ds, x_val, y_val, stage, epochs, optimizer, args, run_dir: Path, initial_epoch=0,
              strategy=None, steps=None, early_stop_from=0, checkpoint_name="best.weights.h5", extra_callbacks=()):
    """One stage of `model.fit`; early stopping looks at epochs from `early_stop_from` (0-based, whole run) on.
    The best epoch's weights are written to `run_dir / checkpoint_name`; with `checkpoint_name=None` the stage runs
    all its epochs and keeps none. `extra_callbacks` run before the others, so that one which changes the weights at
    an epoch's end (`Lookahead`) has done so when they are validated and checkpointed."""
    strategy = strategy or tf.distribute.get_strategy()
    loss = training_loss(args)
    callbacks = [*extra_callbacks, ValidationAUC(x_val, y_val, stage, run_dir / "history.csv")]
    if checkpoint_name is not None:
        callbacks += [
            keras.callbacks.ModelCheckpoint(run_dir / checkpoint_name, monitor="val_auc", mode="max",
                                            save_best_only=True, save_weights_only=True),
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=args.patience,
                                          restore_best_weights=True, start_from_epoch=early_stop_from),
        ]
    if getattr(optimizer, "use_ema", False):
        # First in the list: the averaged weights are in the model when the validation AUC, the checkpoint and
        # early stopping look at it at the end of each epoch, and the raw ones are back before the next epoch.
        callbacks.insert(0, keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    with strategy.scope():
        if not optimizer.built:  # its slot variables made in the first trace would make TF trace the step twice
            optimizer.build(model.trainable_variables)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return fit_multi_worker(model, ds, loss, optimizer, strategy, callbacks, initial_epoch, epochs, steps,
                                args.batch_size)
    with strategy.scope():
        if len(model.outputs) == 2:  # with the auxiliary diagnosis head
            model.compile(optimizer=optimizer, loss=[loss, keras.losses.CategoricalCrossentropy()],
                          loss_weights=[1.0, args.aux_weight],
                          metrics=[[keras.metrics.AUC(name="auc", multi_label=False)], []])
        else:
            model.compile(optimizer=optimizer, loss=loss, metrics=[keras.metrics.AUC(name="auc", multi_label=False)])
    verbose = 1 if sys.stdout.isatty() else 2
    # shuffle=False: `ds` shuffles itself; Keras's default True only warned so at each stage of every run
    return model.fit(ds, epochs=initial_epoch + epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                     verbose=verbose, shuffle=False)


def make_soup(model: keras.Model, checkpoints: list[Path], x_val: np.ndarray, y_val: np.ndarray) -> dict:
    """Average the weights of copies fine-tuned from one trained head (a uniform model soup, Wortsman et al.
    2022) and leave in `model` the soup, or the best copy when the soup's validation AUC is below that copy's.

    Every weight is averaged, the frozen ones too (they are the same in every copy). Returns what was measured.
    """
    weights, aucs, forward = [], [], compiled_forward(model)
    for path in checkpoints:
        model.load_weights(path)
        weights.append(model.get_weights())
        aucs.append(float(roc_auc_score(y_val, predict_probs(model, x_val, forward=forward)[:, 1])))
    model.set_weights([np.mean(np.stack(ws), axis=0).astype(ws[0].dtype) for ws in zip(*weights)])
    soup_auc = float(roc_auc_score(y_val, predict_probs(model, x_val, forward=forward)[:, 1]))
    best = int(np.argmax(aucs))
    used = "soup" if soup_auc >= aucs[best] else f"copy {best + 1}"
    if used != "soup":
        model.set_weights(weights[best])
    log.info("soup of %d copies: validation AUC %.4f (copies %s); the bundle keeps the %s", len(checkpoints),
             soup_auc, ", ".join(f"{a:.4f}" for a in aucs), used)
    return {"copies": len(checkpoints), "val_auc_copies": aucs, "val_auc_soup": soup_auc, "used": used}


class Lookahead(keras.callbacks.Callback):
    """Lookahead (Zhang et al. 2019) around whatever optimizer `fit` runs: every `steps` training steps the slow
    weights move `alpha` of the way to the fast ones the optimizer reached, and the fast ones start again from them.
    It syncs at each epoch's end too, so that what is validated, checkpointed and kept are slow weights. Only the
    trainable weights; the optimizer's moments carry on across syncs, as in the paper."""

    def __init__(self, steps: int = 5, alpha: float = 0.5):
        super().__init__()
        self.steps, self.alpha = steps, alpha
        self.slow, self.since_sync = None, 0

    def on_train_begin(self, logs=None):
        self.slow = [keras.ops.convert_to_numpy(v).astype(np.float64) for v in self.model.trainable_variables]
        self.since_sync = 0

    def on_train_batch_end(self, batch, logs=None):
        self.since_sync += 1
        if self.since_sync == self.steps:
            self.sync()

    def on_epoch_end(self, epoch, logs=None):
        if self.since_sync:
            self.sync()

    def sync(self):
        for slow, variable in zip(self.slow, self.model.trainable_variables):
            slow += self.alpha * (keras.ops.convert_to_numpy(variable) - slow)
            variable.assign(slow.astype(variable.dtype))
        self.since_sync = 0


class WeightAverage(keras.callbacks.Callback):
    """The running mean of the model's weights at the end of each epoch, kept in float64."""

    def __init__(self):
        super().__init__()
        self.mean, self.count = None, 0

    def on_epoch_end(self, epoch, logs=None):
        weights = self.model.get_weights()
        self.count += 1
        if self.mean is None:
            self.mean = [w.astype(np.float64) for w in weights]
        else:
            for m, w in zip(self.mean, weights):
                m += (w - m) / self.count

    def averaged(self, like: list[np.ndarray]) -> list[np.ndarray]:
        return [m.astype(w.dtype) for m, w in zip(self.mean, like)]


def stochastic_weight_average(model: keras.Model, ds, x_val, y_val, args, run_dir: Path, first_epoch: int,
                              strategy=None, steps=None) -> dict:
    """Stochastic weight averaging (Izmailov et al. 2018) after fine-tuning: from the weights in `model` (the best
    fine-tuned ones), --swa epochs at the constant rate --swa-lr with the fine-tuning's optimizer otherwise, and the
    weights at the end of each averaged. BatchNormalization needs no new statistics: its layers are frozen with
    ImageNet's, or, with --train-batchnorm, averaged like every other weight (not re-estimated for the average, as
    the paper does). Its epochs are numbered on from `first_epoch` (0-based, the epochs run before). Leaves in
    `model`, and in `run_dir/best.weights.h5`, the average when its validation AUC is at least the starting
    weights', else those. Returns what was measured."""
    strategy = strategy or tf.distribute.get_strategy()
    forward = compiled_forward(model)
    start = model.get_weights()
    start_auc = float(roc_auc_score(y_val, predict_probs(model, x_val, forward=forward)[:, 1]))
    rate = args.swa_lr if args.swa_lr is not None else args.lr / 5
    average = WeightAverage()
    with strategy.scope():
        optimizer = fine_tune_optimizer(argparse.Namespace(**{**vars(args), "ema": 0.0}), steps, schedule=rate)
    history = fit_stage(model, ds, x_val, y_val, "swa", args.swa, optimizer, args, run_dir, initial_epoch=first_epoch,
                        strategy=strategy, steps=steps, checkpoint_name=None, extra_callbacks=(average,))
    model.set_weights(average.averaged(start))
    swa_auc = float(roc_auc_score(y_val, predict_probs(model, x_val, forward=forward)[:, 1]))
    used = "average" if swa_auc >= start_auc else "fine-tuned"
    if used == "average":
        model.save_weights(run_dir / "best.weights.h5")
    else:
        model.set_weights(start)
    log.info("stochastic weight average of %d epochs at rate %.2g: validation AUC %.4f against %.4f for the "
             "fine-tuned weights; the bundle keeps the %s", average.count, rate, swa_auc, start_auc, used)
    return {"epochs": average.count, "learning_rate": rate, "val_auc_fine_tuned": start_auc,
            "val_auc_epochs": [float(a) for a in history.history["val_auc"]], "val_auc_average": swa_auc,
            "used": used}


def best_val_auc(history: list[str], soup: dict | None, swa: dict | None) -> float:
    """The validation AUC of the weights the bundle keeps, from history.csv's lines and what the soup or the
    weight average measured."""
    if swa:
        return float(max(swa["val_auc_average"], swa["val_auc_fine_tuned"]))
    if soup:
        return float(max(soup["val_auc_soup"], *soup["val_auc_copies"]))
    column = history[0].split(",").index("val_auc")
    return float(max(float(r.split(",")[column]) for r in history[1:]))


def early_stop_epoch(args: argparse.Namespace) -> int:
    """First epoch (0-based) early stopping may end fine-tuning on: the second half of the cosine decay.

    Near the peak learning rate, validation AUC on 30 melanomas swings by 0.1 from epoch to epoch, and stopping there
    once ended a run at epoch 14 of 32 with test AUC 0.739 (`--mixup 0.2 --seed 1`).
    """
    return args.head_epochs + args.warmup_epochs + max(0, args.epochs - args.warmup_epochs) // 2


def aux_targets(csv_path: str | Path, paths: list) -> tuple[list[str], np.ndarray]:
    """One-hot finer diagnoses for the training images, from a CSV with `diagnosis` and `image_id` or `path`."""
    diagnoses = data_mod.diagnoses_for(paths, data_mod.read_diagnoses(csv_path), csv_path, "training")
    classes = sorted(set(diagnoses))
    index = np.array([classes.index(d) for d in diagnoses])
    return classes, np.eye(len(classes), dtype=np.float32)[index]


def library_versions() -> dict:
    import PIL
    import sklearn

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__, "scikit-learn": sklearn.__version__}


def code_version(root: str | os.PathLike = Path(__file__).resolve().parent.parent) -> dict | None:
    """The git commit of the code in `root` and whether its tracked files differ from it, so that a bundle can be
    traced to the code that trained it (two runs of one command on different code are different recipes); None
    outside a git checkout or without git."""
    def git(*argv):
        return subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "modified": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def version_hash(data_hash: str, extra_report: dict | None) -> str:
    """The data part of a bundle's version: the hash of --data, and of the --extra-train images where there are any."""
    if not extra_report:
        return data_hash
    return hashlib.sha256(f"{data_hash}\t{extra_report['hash']}".encode()).hexdigest()


_written = {"run_dir": None}  # the run folder this process's training has written into: what Ctrl-C leaves behind


def train(args: argparse.Namespace, argv: list[str] | None = None) -> Bundle | None:
    """Train, calibrate, evaluate and save a bundle; None on a multi-worker run's non-chief workers. `argv`: the
    command line as given, for the card (without it, one is written out from `args`)."""
    started = time.perf_counter()
    _written["run_dir"] = None
    check_weights(args.backbone, args.weights)  # before the run folder and minutes of reading data, not after
    code = code_version()  # now: the tree may move while a long run trains
    strategy = make_strategy(args)
    replicas = strategy.num_replicas_in_sync
    if replicas > 1:
        args.batch_size *= replicas
        args.lr *= replicas
        args.head_lr *= replicas
        log.info("%s on %d replicas: global batch %d, peak learning rate %g", args.distribute, replicas,
                 args.batch_size, args.lr)
    keras.utils.set_random_seed(args.seed)
    if args.deterministic:  # for the whole process, as TensorFlow allows no other scope
        tf_config.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()
    run_dir = Path(args.run_dir or f"runs/{dt.datetime.now():%Y%m%d-%H%M%S}_{args.backbone}")
    if not is_chief():  # every worker trains; only the chief writes the bundle
        run_dir = run_dir / f"worker_{cluster_config()['task']['index']}"
        args.output = None
    writable(run_dir, "--run-dir")
    if args.output:  # where the bundle is copied after training: checked before it, not after 30 minutes
        writable(Path(args.output).parent, "--output", args.output)
    command = "python -m train " + shlex.join(_args_to_argv(args) if argv is None else argv)

    # the data first: a mistake in --data (a typo, an empty folder) stops here, before the run folder is touched; it
    # replaced an earlier run's args.json and deleted its history.csv there
    dataset = data_mod.discover(args.data, args.images, seed=args.seed)
    known = Path(args.data) / "NEAR_DUPLICATES.csv" if Path(args.data).is_dir() else None
    dataset.duplicates = data_mod.find_duplicates(dataset, known=known)
    # what the run folder receives before training, written once nothing but training is left to fail: a mistake
    # found later (an unreadable image, a batch larger than the training split, an unknown --gate-layer) left an
    # earlier run's args.json replaced and its history.csv deleted
    notes = {"args.json": vars(args), "duplicates.json": dataset.duplicates}
    log.info("data %s (%s): %s", args.data, dataset.layout, {k: v.counts() for k, v in dataset.splits.items()})
    conflicts = [d for d in dataset.duplicates if not d["labels_agree"]]
    log.info("%d duplicate pairs across splits (labels agree on %d); %d test images dropped from evaluation",
             len(dataset.duplicates), len(dataset.duplicates) - len(conflicts),
             len(dataset.splits["test"]) - len(dataset.split("test")))
    for d in conflicts:
        log.warning("one image, two labels: %s (%s) and %s (%s); one of them is mislabelled", d["path_a"],
                    d["label_a"], d["path_b"], d["label_b"])
    cues = audit(dataset)
    notes["audit.json"] = cues
    for name, cue in cues["cues"].items():
        if cue["linked_to_malignant_in_training"] and not remedy_applied(cue["remedy"], args):
            log.warning("%s (python -m train.audit)", cue_warning(name, cue))

    spec = PreprocessSpec(args.image_size, args.colour_constancy, frame_fill=args.frame_fill,
                          hair_removal=getattr(args, "hair_removal", False))
    drawn, moved = dataset, np.array([], dtype=int)  # the splits as this run uses them
    if args.val_from_train:
        drawn, moved = data_mod.with_validation_from_train(dataset, args.val_from_train, args.seed)
        notes["val_from_train.json"] = [data_mod.relative_path(dataset.splits["train"].paths[i], dataset.root)
                                        for i in moved]
        log.info("%d training images (%d malignant) moved to validation: %d validation images, %d malignant",
                 len(moved), sum(dataset.splits["train"].labels[i] for i in moved), len(drawn.splits["val"]),
                 drawn.splits["val"].counts()["malignant"])
    extra_report = None
    if getattr(args, "extra_train", None):  # added after the validation draw, which stays that of --data alone
        extra, extra_report = data_mod.extra_training_images(args.extra_train, args.extra_images, drawn)
        notes["extra_train.json"] = extra_report
        log.info("%d extra training images from %s %s; %d left out as copies of validation or test images "
                 "(extra_train.json)", len(extra), args.extra_train, extra.counts(),
                 extra_report["left_out_as_copies_of_val_or_test"])
        drawn = data_mod.with_training_images(drawn, extra)
    train_split = drawn.splits["train"]
    chosen = np.arange(len(train_split))
    if args.max_train_images and args.max_train_images < len(chosen):
        chosen = np.sort(np.random.default_rng(args.seed).permutation(len(chosen))[: args.max_train_images])
    n_train = len(chosen)
    if args.batch_size > n_train:  # batches are whole (drop_remainder): none at all, and training ran on nothing
        given = f"{args.batch_size // replicas} on each of {replicas} replicas" if replicas > 1 else args.batch_size
        raise data_mod.DataError(f"--batch-size {given} is more than the {n_train} training images: not one batch "
                                 f"would be full, so nothing would train. Use a batch of at most {n_train // replicas}.")
    x_train = data_mod.load_images([train_split.paths[i] for i in chosen], spec)
    y_train = np.asarray(train_split.labels)[chosen]
    x_val = data_mod.load_images(drawn.splits["val"].paths, spec)
    y_val = np.asarray(drawn.splits["val"].labels)
    log.info("loaded %d train and %d val images at %d px", len(x_train), len(x_val), args.image_size)

    prior = (np.bincount(y_train, minlength=2) + 1) / (len(y_train) + 2)
    if getattr(args, "malignant_share", 0.0) > 0:  # the untrained head predicts the base rate of what it is shown
        prior = np.array([1.0 - args.malignant_share, args.malignant_share])
    y_aux, aux_classes = None, None
    if args.aux_diagnosis:
        aux_classes, y_aux = aux_targets(args.aux_diagnosis, [train_split.paths[i] for i in chosen])
        log.info("auxiliary head on %s: %s", args.aux_diagnosis,
                 dict(zip(aux_classes, y_aux.sum(axis=0).astype(int).tolist())))
    with strategy.scope():
        model = build_model(args.backbone, args.weights, args.image_size, args.dropout, args.dense_units,
                            class_prior=tuple(prior.tolist()),
                            drop_connect_rate=getattr(args, "drop_connect", DROP_CONNECT),
                            pooling=getattr(args, "pooling", "avg"),
                            circle_mask=getattr(args, "circle_mask", False))
        fitted = model  # what is trained: the model itself, or the model with the auxiliary head beside its own
        if aux_classes:
            aux = keras.layers.Dense(len(aux_classes), activation="softmax", name="aux_diagnosis")(
                model.get_layer("head_dropout_2").output)
            fitted = keras.Model(model.inputs, [model.output, aux], name=f"{model.name}_with_aux")
        if args.sam > 0:
            fitted = SharpnessAware(fitted.inputs, fitted.output, rho=args.sam, name=f"{fitted.name}_sam")
    if args.gate_layer != "auto" and args.gate_layer not in {layer.name for layer in model.layers}:
        raise data_mod.DataError(f"--gate-layer {args.gate_layer} is not a layer of {args.backbone}; use auto or a "
                                 f"block output such as block5c_add")
    if (run_dir / "args.json").exists():
        log.warning("--run-dir %s holds an earlier run: this one replaces its files as it writes them", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "history.csv").unlink(missing_ok=True)
    for name, content in notes.items():
        (run_dir / name).write_text(json.dumps(content, indent=2) + "\n")
    log.info("run folder %s", run_dir)
    _written["run_dir"] = run_dir

    def training_data(seed: int) -> tf.data.Dataset:  # the augmented training pipeline, its draws from `seed`
        augmenter = build_augmenter(seed, args.ink_augment, args.ring_augment, args.blur_augment, args.frame_fill,
                                    args.random_crop, getattr(args, "jpeg_augment", 0.0),
                                    getattr(args, "cutout", 0.0), getattr(args, "right_angles", 0.0),
                                    getattr(args, "unresampled", 0.0), getattr(args, "colour_jitter", 1.0),
                                    getattr(args, "distortion", 0.0), getattr(args, "noise_augment", 0.0),
                                    tuple(getattr(args, "blur_kinds", "gaussian").split(",")),
                                    getattr(args, "clahe", 0.0))
        shift = build_shift(seed) if getattr(args, "consistency", 0.0) > 0 else None
        return make_dataset(x_train, y_train, args.batch_size, seed, augmenter, y_aux, args.mixup, shift,
                            getattr(args, "malignant_share", 0.0), getattr(args, "cutmix", 0.0))

    ds = training_data(args.seed)
    steps = max(1, len(x_train) // args.batch_size)

    freeze_backbone(model)
    with strategy.scope():
        head_optimizer = keras.optimizers.Adam(args.head_lr, global_clipnorm=clip_norm(args))
    fit_stage(fitted, ds, x_val, y_val, "head", args.head_epochs, head_optimizer, args, run_dir, strategy=strategy,
              steps=steps)
    soup = None
    if args.epochs > 0:
        frozen_bn = batchnorm_frozen(args)
        n = unfreeze_top_blocks(model, args.unfreeze_from, freeze_batchnorm=frozen_bn)
        log.info("fine-tuning %d layers from block %d, BatchNormalization %s", n, args.unfreeze_from,
                 "frozen" if frozen_bn else "trained")
        head_weights = fitted.get_weights() if args.soup > 1 else None
        copies = []
        for copy in range(args.soup):
            name, stage = "best.weights.h5", "fine_tune"
            if args.soup > 1:
                name, stage = f"best_copy{copy + 1}.weights.h5", f"fine_tune_copy{copy + 1}"
                log.info("soup: fine-tuning copy %d of %d from the trained head (seed %d)", copy + 1, args.soup,
                         args.seed + copy)
            if copy > 0:  # the same head, its own data order and augmentation draws
                fitted.set_weights(head_weights)
                keras.utils.set_random_seed(args.seed + copy)
                ds = training_data(args.seed + copy)
            with strategy.scope():
                optimizer = fine_tune_optimizer(args, steps)
            fit_stage(fitted, ds, x_val, y_val, stage, args.epochs, optimizer, args, run_dir,
                      initial_epoch=args.head_epochs, strategy=strategy, steps=steps,
                      early_stop_from=early_stop_epoch(args), checkpoint_name=name,
                      extra_callbacks=(Lookahead(args.lookahead),) if args.lookahead else ())
            copies.append(run_dir / name)
        if args.soup > 1:
            soup = make_soup(fitted, copies, x_val, y_val)
            fitted.save_weights(run_dir / "best.weights.h5")
    fitted.load_weights(run_dir / "best.weights.h5")
    swa = None
    if args.swa:  # numbered on from the epochs run, early stopping's too
        epochs_run = len((run_dir / "history.csv").read_text().splitlines()) - 1
        swa = stochastic_weight_average(fitted, ds, x_val, y_val, args, run_dir, epochs_run, strategy, steps)
    training_curves(run_dir / "history.csv", run_dir / "training_curves.png")
    if not is_chief():
        log.info("worker done: the chief calibrates, evaluates and writes the bundle; run folder %s", run_dir)
        return None

    # Calibration and operating point on validation, with the views the bundle will be served with.
    clean = keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    data_hash = dataset.data_hash()  # every file read and hashed: once, for the version and the card
    card = {
        "name": "melanoma_efficientnet",
        "version": f"{args.backbone}-{dt.date.today():%Y%m%d}-{version_hash(data_hash, extra_report)[:8]}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "class_names": list(CLASS_NAMES),
        "positive_class": "malignant",
        "backbone": args.backbone,
        "initial_weights": args.weights,
        "input_size": args.image_size,
        "preprocessing": spec.to_dict(),
        "tta_views": args.tta_views,
        "view_turns": list(args.view_turns),
        "temperature": 1.0,
        "threshold": 0.5,
    }
    bundle = Bundle(clean, card, run_dir / "melanoma_efficientnet.keras")
    predictor = Predictor(bundle)
    point, _ = operating_point(predictor, x_val, y_val, args.target_sensitivity, getattr(args, "calibration",
                                                                                         "temperature"))
    card.update(point)
    log.info("temperature %.3f, logit bias %.3f, threshold %.4f for sensitivity %.2f on val", predictor.temperature,
             predictor.logit_bias, predictor.threshold, args.target_sensitivity)

    test_metrics, p_test, y_test = evaluate_split(predictor, dataset, "test")
    evaluation_figures(p_test, y_test, test_metrics, run_dir / "test")
    (run_dir / "test" / "metrics.json").write_text(json.dumps(test_metrics, indent=2) + "\n")
    write_predictions(run_dir / "test" / "predictions.csv", dataset.split("test").paths, dataset.root, p_test, y_test,
                      predictor.threshold)
    title = f"test split ({test_metrics['duplicates_dropped']} duplicates dropped)"
    print(format_table(test_metrics, title))
    write_report(run_dir / "test", test_metrics, f"{run_dir.name}: {title}", command,
                 about={"model": f"`{bundle.path}`, calibrated and thresholded on {len(y_val)} validation images",
                        "data": f"`{args.data}` (hash {data_hash[:12]}), split test"})
    history = (run_dir / "history.csv").read_text().splitlines()
    card.update({
        "test": _summary(test_metrics),
        "data": {
            "source": str(args.data),
            "layout": dataset.layout,
            "hash": data_hash,
            "counts": {k: v.counts() for k, v in dataset.splits.items()},
            "train_images_used": int(n_train),
            "val_images_used": int(len(y_val)),
            "val_malignant_used": int(y_val.sum()),
            "val_from_train": int(len(moved)),
            **({"extra_train": {k: v for k, v in extra_report.items() if k != "left_out"}} if extra_report else {}),
            "duplicate_pairs_across_splits": len(dataset.duplicates),
            "duplicate_pairs_with_different_labels": len(conflicts),
            "test_images_dropped_as_duplicates": test_metrics["duplicates_dropped"],
            "shortcut_cues": {name: {"train_images_with_cue": cue["splits"]["train"]["with_cue"],
                                     "malignant_with_cue": cue["splits"]["train"]["malignant_with_cue"],
                                     "linked_to_malignant_in_training": cue["linked_to_malignant_in_training"]}
                              for name, cue in cues["cues"].items()},
        },
        "training": {
            "command": command,
            "arguments": vars(args),
            "cwd": os.getcwd(),  # where the arguments' relative paths (--data, --extra-train) lead from
            "epochs_run": len(history) - 1,
            **({"soup": soup} if soup else {}),
            **({"swa": swa} if swa else {}),
            "best_val_auc": best_val_auc(history, soup, swa),
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_count": usable_cores(),
            "cpu": cpu_model(),
            "code": code,
        },
        "libraries": library_versions(),
        "intended_use": "A decision aid for clinicians screening dermoscopic images of single skin lesions for "
                        "melanoma. Not a diagnosis; every suspicious or uncertain result needs a dermatologist.",
    })
    save_bundle(clean, card, bundle.path)
    if args.gate_layer == "auto":
        nonlesion = run_dir / "nonlesion_seed0"
        build_nonlesion(nonlesion, seed=0, with_browser=False)
        fit_selected_gate(bundle.path, drawn, nonlesion, k=10, band_fraction=0.15)
    else:
        fit_gate(bundle.path, drawn, k=10, percentile=99.5, band_fraction=0.15, layer=args.gate_layer)
    if args.output:
        copy_bundle(bundle.path, args.output)
        log.info("bundle written to %s", args.output)
    log.info("run folder %s; %.1f minutes; the test evaluation in words: %s", run_dir,
             (time.perf_counter() - started) / 60, run_dir / "test" / "report.md")
    return bundle


def _view_turns(text: str) -> tuple[float, ...]:
    try:
        return parse_turns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _summary(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "reliability_bins"}


def _args_to_argv(args: argparse.Namespace) -> list[str]:
    out = []
    for key, value in vars(args).items():
        if value is None:
            continue
        text = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)
        out += [f"--{key.replace('_', '-')}", text]
    return out


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # tf.distribute logs a line per collective it builds at INFO: hundreds under --distribute multi-worker
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    args = parse_args(argv)
    try:
        train(args, sys.argv[1:] if argv is None else list(argv))
    except (data_mod.DataError, WeightsError, DivergedError, BundleError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # a person stopping a long run: a sentence on what is left, not TensorFlow's traceback
        if _written["run_dir"] is None:  # reading the data or building the network: nothing is written before
            log.error("stopped (Ctrl-C) before training began: nothing was written.")
        else:
            log.error("stopped (Ctrl-C) before the end: no bundle was written; the run folder %s keeps the arguments "
                      "and the history of the epochs finished.", _written["run_dir"])
        raise SystemExit(130) from None
