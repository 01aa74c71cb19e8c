"""Training beyond one device: tf.distribute's mirrored strategy on two logical CPU devices. The run is
a subprocess because logical devices must be set before TensorFlow starts."""
import os
import subprocess
import sys

import pytest

from model.bundle import load_bundle
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TINY = ["--weights", "none", "--image-size", "64", "--batch-size", "4", "--head-epochs", "1", "--epochs", "1",
        "--warmup-epochs", "0", "--dense-units", "16"]


def run_train(args, env=None, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_mirrored_on_two_cpu_devices_trains_and_saves_a_bundle(tiny_data, tmp_path):
    out = tmp_path / "bundle" / "mirrored.keras"
    proc = run_train(["--data", str(tiny_data), *TINY, "--distribute", "mirrored", "--cpu-devices", "2",
                      "--run-dir", str(tmp_path / "run"), "--output", str(out)])
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    assert "mirrored on 2 replicas: global batch 8" in log
    bundle = load_bundle(out)
    assert bundle.card["training"]["arguments"]["distribute"] == "mirrored"
    assert bundle.card["training"]["arguments"]["batch_size"] == 8


def test_multi_worker_fails_with_a_clear_message(tiny_data, tmp_path):
    proc = run_train(["--data", str(tiny_data), *TINY, "--distribute", "multi-worker", "--run-dir", str(tmp_path)])
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "keras-team/keras#20585" in log and "Traceback" not in log
