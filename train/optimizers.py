"""How `python -m train` steps the weights: the fine-tuning optimizer (AdamW, or SGD with Nesterov momentum) on a
warm-up and cosine schedule, with gradient clipping, layer-wise learning rates and sharpness-aware minimisation as
asked."""
from __future__ import annotations

import weakref

import keras
from keras import ops
import tensorflow as tf

from model.architecture import block_index


class SharpnessAware(keras.Model):
    """A functional model trained by sharpness-aware minimisation (Foret et al. 2021).

    Each step takes the gradient g at the weights w, moves them to w + rho * g / ||g|| (to first order the
    worst point within rho), lets Keras's own step compute the gradient there and apply it, then takes the move
    back: the optimizer's update is that of the gradient at the moved weights, applied at w. Built as
    `SharpnessAware(model.inputs, model.outputs, rho=...)`, it shares the model's layers, so training it trains the
    model. The loss and metrics it reports are those at the moved weights.
    """

    def __init__(self, *args, rho: float = 0.05, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = rho

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        weights = self.trainable_weights
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True), sample_weight=sample_weight,
                                     training=True)
        pairs = [(w, g) for w, g in zip(weights, tape.gradient(loss, weights)) if g is not None]
        scale = self.rho / (tf.linalg.global_norm([g for _, g in pairs]) + 1e-12)
        moves = [(weight, grad * scale) for weight, grad in pairs]
        for weight, move in moves:
            weight.assign_add(move)
        logs = super().train_step(data)  # the gradient at w + move, applied by the optimizer
        for weight, move in moves:
            weight.assign_sub(move)
        return logs


def clip_norm(args) -> float | None:
    """The optimizers' `global_clipnorm`: None (no clipping) unless --clip-norm is above 0."""
    return getattr(args, "clip_norm", 0.0) or None


@keras.saving.register_keras_serializable(package="melanoma")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras's `CosineDecay`, read once per traced step.

    AdamW's weight decay reads the rate once per variable, and each read traces the schedule's warm-up `cond` anew:
    about a hundred `cond`s, 8 s of tracing per training run even for the tiny test models. Within one graph, every
    read at the same step variable gets the first read's tensor: the same value, since the optimizer moves its step
    counter only after every variable is updated and every traced function here (fit's step, the multi-worker
    loop's) takes one optimizer step. Eager reads (callbacks, logs) are Keras's own.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._traced = weakref.WeakKeyDictionary()  # graph -> {id(step variable): rate tensor}

    def __call__(self, step):
        if tf.executing_eagerly():
            return super().__call__(step)
        rates = self._traced.setdefault(tf.compat.v1.get_default_graph(), {})
        if id(step) not in rates:
            rates[id(step)] = super().__call__(step)
        return rates[id(step)]


def layer_rate_scale(variable_path: str, decay: float) -> float:
    """The share of the learning rate a weight gets under --layer-decay: 1 for the head and the top convolution,
    decay for block 7, decay^2 for block 6, ... decay^8 for the stem."""
    layer = variable_path.split("/")[0]
    if not layer.startswith(("block", "stem")):
        return 1.0  # the head and the top convolution
    return decay ** (8 - block_index(layer))


class LayerwiseRates:
    """Mixed into a Keras optimizer: each variable's steps use the learning rate times its own scale, fixed when the
    optimizer is built from the variables' paths (`layer_rate_scale`). Weight decay stays decoupled at the base
    rate."""

    def __init__(self, *args, layer_decay: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_decay = float(layer_decay)

    def build(self, var_list):
        self._rate_scales = [layer_rate_scale(v.path, self.layer_decay) for v in var_list]
        super().build(var_list)

    def update_step(self, gradient, variable, learning_rate):
        scale = self._rate_scales[self._get_variable_index(variable)]
        return super().update_step(gradient, variable, ops.cast(learning_rate, variable.dtype) * scale)

    def get_config(self):
        return {**super().get_config(), "layer_decay": self.layer_decay}


@keras.saving.register_keras_serializable(package="melanoma")
class LayerwiseAdamW(LayerwiseRates, keras.optimizers.AdamW):
    pass


@keras.saving.register_keras_serializable(package="melanoma")
class LayerwiseSGD(LayerwiseRates, keras.optimizers.SGD):
    pass


def fine_tune_optimizer(args, steps: int, schedule=None) -> keras.optimizers.Optimizer:
    """AdamW (or SGD with Nesterov momentum, --momentum) for stage 2: linear warm-up to --lr over --warmup-epochs,
    then cosine decay to 1% of it, unless `schedule` (a rate or a schedule) is given; weight decay, the weights'
    moving average (--ema), gradient clipping (--clip-norm) and layer-wise rates (--layer-decay) as asked."""
    schedule = schedule if schedule is not None else WarmupCosineDecay(
        initial_learning_rate=args.lr * 0.01, decay_steps=max(1, (args.epochs - args.warmup_epochs) * steps),
        warmup_target=args.lr, warmup_steps=args.warmup_epochs * steps, alpha=0.01)
    shared = dict(weight_decay=args.weight_decay, use_ema=args.ema > 0, ema_momentum=args.ema or 0.99,
                  global_clipnorm=clip_norm(args))
    sgd, adamw = keras.optimizers.SGD, keras.optimizers.AdamW
    if getattr(args, "layer_decay", 1.0) < 1.0:
        sgd, adamw = LayerwiseSGD, LayerwiseAdamW
        shared["layer_decay"] = args.layer_decay
    if getattr(args, "momentum", 0.0) > 0:
        return sgd(schedule, momentum=args.momentum, nesterov=True, **shared)
    return adamw(schedule, **shared)
