"""Training beyond one device: tf.distribute's mirrored strategy on two logical CPU devices. The run is
a subprocess because logical devices must be set before TensorFlow starts."""
import json
import os
import socket
import subprocess
import sys

import pytest

from model.bundle import load_bundle
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TINY = ["--weights", "none", "--image-size", "64", "--batch-size", "4", "--head-epochs", "1", "--epochs", "1",
        "--warmup-epochs", "0", "--dense-units", "16", "--unfreeze-from", "6", "--gate-layer", "block5c_add"]


def run_train(args, env=None, log_file=None):
    """`python -m train ARGS` in the background; its output goes to LOG_FILE when given, else to a pipe.

    Runs that wait on each other (multi-worker) need the file: a worker blocks once it fills an unread pipe,
    and its peer then waits on it in a collective for ever.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    out = open(log_file, "w") if log_file else subprocess.PIPE
    try:
        return subprocess.Popen([sys.executable, "-m", "train", *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    finally:
        if log_file:
            out.close()


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


def test_two_workers_on_loopback_train_in_step_and_the_chief_saves_a_bundle(tiny_data, tiny_backbone, tmp_path):
    """--distribute multi-worker: two processes on loopback ports, configured by TF_CONFIG, as on two hosts. From the
    tiny backbone (tests/conftest.py), whose scores spread out, so equal validation AUCs mean equal weights."""
    ports = [free_port(), free_port()]
    out = tmp_path / "bundle" / "multi.keras"
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        procs.append(run_train(["--data", str(tiny_data), *TINY, "--weights", str(tiny_backbone),
                                "--distribute", "multi-worker",
                                "--run-dir", str(tmp_path / "run"), "--output", str(out)],
                               env={"TF_CONFIG": json.dumps(config)}, log_file=tmp_path / f"worker_{index}.log"))
    try:
        for proc in procs:
            proc.wait(timeout=600)
    finally:  # a worker left waiting on its peer would outlive the test
        for proc in procs:
            proc.kill()
    logs = [(tmp_path / f"worker_{index}.log").read_text() for index in range(2)]
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
        assert "multi-worker on 2 replicas: global batch 8" in log
    assert "worker done" in logs[1]
    bundle = load_bundle(out)
    assert bundle.card["training"]["arguments"]["distribute"] == "multi-worker"
    # both workers saw the same validation AUC after every epoch: the weights stayed in step
    chief = (tmp_path / "run" / "history.csv").read_text().splitlines()
    worker = (tmp_path / "run" / "worker_1" / "history.csv").read_text().splitlines()
    column = chief[0].split(",").index("val_auc")
    assert len(chief) == len(worker) == 3
    assert [r.split(",")[column] for r in chief[1:]] == [r.split(",")[column] for r in worker[1:]]


def test_multi_worker_without_tf_config_fails_with_a_clear_message(tiny_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "train", "--data", str(tiny_data), *TINY, "--distribute",
                             "multi-worker", "--run-dir", str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "needs TF_CONFIG" in log and "Traceback" not in log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_stops_training_with_a_sentence_and_status_130(tiny_data, tmp_path):
    """A person stopping a long run with Ctrl-C got TensorFlow's traceback; now one sentence on what is left."""
    import signal

    run = tmp_path / "run"
    proc = run_train(["--data", str(tiny_data), *TINY, "--epochs", "500", "--patience", "500", "--run-dir", str(run)])
    seen = []
    for line in proc.stdout:  # until it is training
        seen.append(line)
        if "head epoch 1:" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    log = "".join(seen) + rest
    assert proc.returncode == 130, log[-3000:]
    assert f"run folder {run}" in log and "Traceback" not in log
    assert (f"stopped (Ctrl-C) before the end: no bundle was written; the run folder {run} keeps the "
            "arguments and the history of the epochs finished.") in log
    assert (run / "args.json").is_file() and sorted(p.name for p in run.iterdir() if p.suffix == ".keras") == []


@pytest.mark.parametrize("value, words", [
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}', "TF_CONFIG is not JSON ("),
    ('["a:1", "b:2"]', "TF_CONFIG is a JSON object, for example"),
    ('{"cluster": {"worker": "a:1,b:2"}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG's cluster lists each kind of task's \"host:port\" addresses"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "TF_CONFIG's task names this process: a type among its cluster's (worker) and an index among"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "chief", "index": 0}}', "TF_CONFIG's task names"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": ["worker"], "index": 0}}', "TF_CONFIG's task names"),
], ids=["not JSON", "a list", "addresses in one string", "index past the workers", "a type not in the cluster",
        "a type in a list"])
def test_a_mistake_in_tf_config_is_one_sentence_before_tensorflow_reads_it(monkeypatch, value, words):
    """Each was a traceback from the JSON reader, TensorFlow's cluster resolver or train.train's worker folder."""
    import argparse

    from train.distributed import is_chief, make_strategy

    monkeypatch.setenv("TF_CONFIG", value)
    args = argparse.Namespace(distribute="multi-worker", aux_diagnosis=None, ema=0.0)
    for call in (lambda: make_strategy(args), is_chief):
        with pytest.raises(SystemExit) as stopped:
            call()
        assert words in str(stopped.value) and "for example {" in str(stopped.value)
