"""The losses `python -m train` can fine-tune with: label-smoothed cross-entropy by default, or the focal loss
(--focal-gamma), or the cross-entropy plus a pairwise ranking term (--auc-loss) or AugMix's consistency term
(--consistency)."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="melanoma")  # `clone_model` rebuilds the compiled loss from its config
class RankingLoss(keras.losses.Loss):
    """Cross-entropy plus `weight` times a pairwise ranking loss over the batch.

    The ranking term is the mean over every (malignant, benign) pair in the batch of
    max(0, margin - (s_malignant - s_benign))^2, where s is a network's log-odds of malignancy: a smooth
    surrogate of 1 - AUC, which is the share of such pairs ranked the wrong way. A batch without both
    classes adds nothing. Each image's loss carries the batch's ranking term, so the mean over the batch
    is the mean cross-entropy plus `weight` times the ranking term.
    """

    def __init__(self, weight: float, margin: float = 1.0, label_smoothing: float = 0.0, name="ranking_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.weight, self.margin, self.label_smoothing = weight, margin, label_smoothing

    def call(self, y_true, y_pred):
        cross_entropy = keras.losses.categorical_crossentropy(y_true, y_pred, label_smoothing=self.label_smoothing)
        probs = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        score = ops.log(probs[:, 1]) - ops.log(probs[:, 0])
        malignant = ops.cast(y_true[:, 1] > 0.5, score.dtype)
        pairs = malignant[:, None] * (1.0 - malignant)[None, :]
        hinge = ops.square(ops.relu(self.margin - (score[:, None] - score[None, :])))
        ranking = ops.sum(hinge * pairs) / ops.maximum(ops.sum(pairs), 1.0)
        return cross_entropy + self.weight * ranking

    def get_config(self):
        return {**super().get_config(), "weight": self.weight, "margin": self.margin,
                "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="melanoma")
class ConsistencyLoss(keras.losses.Loss):
    """Cross-entropy on the first half of the batch plus `weight` times the Jensen-Shannon divergence between
    each image's prediction and that of its shifted copy in the second half (Hendrycks et al. 2020, AugMix).

    `make_dataset(..., shift=...)` lays a batch out that way: B augmented images, then the same B shifted, the
    labels repeated. The shifted copies teach the network to answer as it does on the clean image, without being
    a training target themselves. Returns one value per pair.
    """

    def __init__(self, weight: float, label_smoothing: float = 0.0, name="consistency_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weight, self.label_smoothing = weight, label_smoothing

    def call(self, y_true, y_pred):
        half = ops.shape(y_pred)[0] // 2
        clean, shifted = y_pred[:half], y_pred[half:]
        cross_entropy = keras.losses.categorical_crossentropy(y_true[:half], clean,
                                                              label_smoothing=self.label_smoothing)
        p, q = ops.clip(clean, 1e-7, 1.0), ops.clip(shifted, 1e-7, 1.0)
        m = (p + q) / 2.0
        divergence = 0.5 * ops.sum(p * ops.log(p / m), axis=-1) + 0.5 * ops.sum(q * ops.log(q / m), axis=-1)
        return cross_entropy + self.weight * divergence

    def get_config(self):
        return {**super().get_config(), "weight": self.weight, "label_smoothing": self.label_smoothing}


def training_loss(args) -> keras.losses.Loss:
    """The malignant/benign head's loss: label-smoothed cross-entropy, or focal loss (--focal-gamma), or the
    cross-entropy plus the ranking (--auc-loss) or consistency (--consistency) term."""
    if getattr(args, "focal_gamma", 0.0) > 0:  # alpha 1: the output bias, not a weight, handles the imbalance
        return keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=args.focal_gamma,
                                                         label_smoothing=args.label_smoothing)
    if getattr(args, "auc_loss", 0.0) > 0:
        return RankingLoss(args.auc_loss, label_smoothing=args.label_smoothing)
    if getattr(args, "consistency", 0.0) > 0:
        return ConsistencyLoss(args.consistency, label_smoothing=args.label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing)
