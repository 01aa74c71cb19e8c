"""Time one fine-tuning step of the shipped architecture with TensorFlow's oneDNN CPU kernels on and off.

    python -m bench.train_step            # about 2 minutes on 2 cores; writes runs/bench_train_step/train_step.json

TensorFlow turns oneDNN on by itself only on CPUs with AVX-512 VNNI or BF16 or AMX; this project turns it on
everywhere (model/__init__.py). Each setting runs in its own process, since the setting only counts before
TensorFlow loads: EfficientNet-Lite0 at 256 px without pretrained weights (the timing does not depend on them), blocks
2-7 trainable with BatchNormalization frozen, AdamW and the label-smoothed cross-entropy, as `python -m train`'s
second stage; one batch of random pixels, the first step (tracing) left out of the median.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def time_steps(batch_size: int, steps: int) -> dict:
    """Run in a child process: the setting of TF_ENABLE_ONEDNN_OPTS is the parent's choice."""
    import keras
    import numpy as np
    from tensorflow.python.util import _pywrap_util_port

    from model.architecture import build_model, unfreeze_top_blocks
    from model.machine import cpu_model

    keras.utils.set_random_seed(0)
    model = build_model("efficientnet_lite0", weights="none", image_size=256)
    unfreeze_top_blocks(model, from_block=2, freeze_batchnorm=True)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=False,
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, 256, 256, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(batch_size) % 2, 2)
    model.train_on_batch(x, y)  # traces the step
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        seconds.append(time.perf_counter() - start)
    return {"onednn": bool(_pywrap_util_port.IsMklEnabled()), "cpu": cpu_model(), "batch_size": batch_size,
            "step_seconds": seconds, "median_step_seconds": statistics.median(seconds)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32, as training)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting (default: 6)")
    parser.add_argument("--out", default="runs/bench_train_step", help="output folder (default: runs/bench_train_step)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1:
        parser.error(f"--batch-size and --steps must be at least 1. Received: {args.batch_size}, {args.steps}")
    from train.cli import writable_or_exit
    writable_or_exit(parser, args.out)
    if args.child:
        print(json.dumps(time_steps(args.batch_size, args.steps)))
        return {}
    results = {}
    for setting in ("0", "1"):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_CPP_MIN_LOG_LEVEL": "3"}
        child = subprocess.run([sys.executable, "-m", "bench.train_step", "--child", "--batch-size",
                                str(args.batch_size), "--steps", str(args.steps)],
                               env=env, capture_output=True, text=True, check=True)
        results["on" if setting == "1" else "off"] = json.loads(child.stdout.strip().splitlines()[-1])
    on, off = results["on"]["median_step_seconds"], results["off"]["median_step_seconds"]
    report = {"cpu": results["on"]["cpu"], "cpus": os.cpu_count(), "batch_size": args.batch_size, **results,
              "speedup": off / on}
    print(f"on {report['cpu']}, {report['cpus']} cores: one fine-tuning step of {args.batch_size} images, median of "
          f"{args.steps}")
    for name in ("off", "on"):
        r = results[name]
        print(f"oneDNN {name:<3} (IsMklEnabled {r['onednn']!s:<5}) {r['median_step_seconds']:.2f} s")
    print(f"oneDNN on is {report['speedup']:.2f} times as fast")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out / 'train_step.json'}")
    return report


if __name__ == "__main__":
    main()
