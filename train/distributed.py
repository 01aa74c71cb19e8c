"""Training on several devices or machines: the distribution strategy for --distribute, which process is the chief,
and the custom training loop that stands in for `Model.fit` under MultiWorkerMirroredStrategy."""
from __future__ import annotations

import argparse
import json
import os

import keras
import tensorflow as tf


def fit_multi_worker(model, ds, loss, optimizer, strategy, callbacks, initial_epoch: int, epochs: int,
                     steps: int, global_batch: int) -> None:
    """What `fit` does, as a custom loop under MultiWorkerMirroredStrategy.

    Keras 3's `fit` cannot run under that strategy (keras-team/keras#20585: the batches arrive as
    PerReplica values it cannot convert), but a `strategy.run` step with a gradient tape can: the
    gradients are all-reduced across the workers by the optimizer, so every worker holds the same
    weights after each step. BatchNorm layers that train compute their batch statistics over the
    global batch (`synchronized`), so their moving statistics stay in step too; without that each
    worker's moving mean drifts with its own batches and the workers' validation AUCs part. The same
    callbacks (validation AUC, checkpoint, early stopping) run on every worker, which see the same
    weights and so take the same decisions.
    """
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    local = [layer.synchronized for layer in norms]
    for layer in norms:
        layer.synchronized = True
    try:
        _multi_worker_loop(model, ds, loss, optimizer, strategy, callbacks, initial_epoch, epochs, steps,
                           global_batch)
    finally:  # the saved bundle keeps plain BatchNorm: it is served on one device
        for layer, value in zip(norms, local):
            layer.synchronized = value


def _multi_worker_loop(model, ds, loss, optimizer, strategy, callbacks, initial_epoch, epochs, steps,
                       global_batch) -> None:
    per_example = loss.__class__.from_config({**loss.get_config(), "reduction": None})
    with strategy.scope():  # the optimizer is built by fit_stage
        auc = keras.metrics.AUC(name="auc", multi_label=False)
    batches = iter(strategy.experimental_distribute_dataset(ds.repeat()))

    @tf.function
    def train_step(iterator):
        def step(x, y):
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                value = tf.nn.compute_average_loss(per_example(y, probs), global_batch_size=global_batch)
            grads = tape.gradient(value, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            auc.update_state(y, probs)
            return value

        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step, args=next(iterator)), axis=None)

    hooks = keras.callbacks.CallbackList(callbacks, model=model)
    model.stop_training = False
    hooks.on_train_begin()
    for epoch in range(initial_epoch, initial_epoch + epochs):
        hooks.on_epoch_begin(epoch)
        auc.reset_state()
        total = 0.0
        for _ in range(steps):
            total += float(train_step(batches))
        logs = {"loss": total / steps, "auc": float(auc.result()),
                "learning_rate": float(tf.convert_to_tensor(optimizer.learning_rate).numpy())}
        hooks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    hooks.on_train_end()


def make_strategy(args: argparse.Namespace) -> tf.distribute.Strategy:
    """The distribution strategy; --batch-size and the learning rates are per replica and scaled by the count."""
    if args.aux_diagnosis and args.distribute == "multi-worker":
        raise SystemExit("--aux-diagnosis is not supported with --distribute multi-worker yet.")
    if args.ema and args.distribute == "multi-worker":
        raise SystemExit("--ema is not supported with --distribute multi-worker yet.")
    if args.distribute == "multi-worker":
        if not os.environ.get("TF_CONFIG"):
            raise SystemExit("--distribute multi-worker needs TF_CONFIG naming the workers and this process's "
                             "index (README, 'Several machines').")
        cluster_config()  # a mistake in it is one sentence here, not a traceback from TensorFlow's reader
        return tf.distribute.MultiWorkerMirroredStrategy()
    if args.distribute == "mirrored":
        if args.cpu_devices > 1 and not tf.config.list_physical_devices("GPU"):
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(args.cpu_devices)])
            return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.cpu_devices)])
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                     '"index": 0}}')


def cluster_config() -> dict:
    """TF_CONFIG, read and checked: a JSON object whose `cluster` lists each kind of task's "host:port" addresses and
    whose `task` names this process's kind and its index among them; else SystemExit with a sentence and an example.
    Empty or unset: {} (one process)."""
    text = os.environ.get("TF_CONFIG") or "{}"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"TF_CONFIG is not JSON ({exc}); it is a JSON object, for example "
                         f"{TF_CONFIG_EXAMPLE}") from None
    if not isinstance(config, dict):
        raise SystemExit(f"TF_CONFIG is a JSON object, for example {TF_CONFIG_EXAMPLE}; received {text[:80]!r}")
    if not config:
        return config
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(v, list) and v and all(isinstance(a, str) for a in v) for v in cluster.values()):
        raise SystemExit(f"TF_CONFIG's cluster lists each kind of task's \"host:port\" addresses, for example "
                         f"{TF_CONFIG_EXAMPLE}; received {json.dumps(cluster)[:80]}")
    kind = task.get("type") if isinstance(task, dict) else None
    index = task.get("index", 0) if isinstance(task, dict) else None
    if not (isinstance(kind, str) and kind in cluster and isinstance(index, int) and 0 <= index < len(cluster[kind])):
        raise SystemExit(f"TF_CONFIG's task names this process: a type among its cluster's ({', '.join(cluster)}) "
                         f"and an index among that type's addresses, for example {TF_CONFIG_EXAMPLE}; received "
                         f"{json.dumps(task)[:80]}")
    return config


def is_chief() -> bool:
    """True unless TF_CONFIG names this process as a worker other than the first (or as a non-chief)."""
    config = cluster_config()
    task = config.get("task") or {}
    if not task:
        return True
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0
