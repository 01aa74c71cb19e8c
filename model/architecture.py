"""The network: a pretrained EfficientNet backbone, a small fully connected head, a 2-way softmax.

Two backbones, chosen by name:
- ``efficientnet_lite0``: defined here (EfficientNet-B0 without squeeze-and-excitation and with
  ReLU6, Google's EfficientNet-Lite), loading layer-name keyed ``.npz`` weights such as
  ``../shared/weights/efficientnet_lite0_imagenet_notop.npz``.
- ``efficientnet_b0``: ``keras.applications.EfficientNetB0``; ``weights="imagenet"`` downloads
  Keras' own ImageNet weights where the internet is reachable.

Both take raw RGB in [0, 255]; normalisation is the first layer of the network.
The model is flat (one functional graph), so the last convolutional feature map
(``top_activation``) is reachable for Grad-CAM.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import keras
import numpy as np
from keras import layers

BACKBONES = ("efficientnet_lite0", "efficientnet_b0")
# --pooling -> the name of the layer that starts the head
POOLINGS = {"avg": "avg_pool", "gem": "gem_pool", "attention": "attention_pool"}
LAST_CONV_LAYER = "top_activation"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS_DIR = Path(os.environ.get("MELANOMA_WEIGHTS_DIR", REPO_ROOT.parent / "shared" / "weights"))

# EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, filters in, filters out).
_B0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPSILON = 1e-3


def _correct_pad(x, kernel_size: int):
    """TensorFlow's 'same' padding for a stride-2 convolution, as Keras' EfficientNet does it."""
    height, width = x.shape[1], x.shape[2]
    adjust = (1 - height % 2, 1 - width % 2)
    half = kernel_size // 2
    return ((half - adjust[0], half), (half - adjust[1], half))


def _conv_bn(x, filters, name, activation=True):
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    if activation:
        x = layers.Activation("relu6", name=f"{name}_activation")(x)
    return x


def _mbconv(x, name, kernel, stride, expand, filters_in, filters_out, drop_rate):
    inputs = x
    if expand != 1:
        x = _conv_bn(x, filters_in * expand, f"{name}expand")
    if stride == 2:
        x = layers.ZeroPadding2D(_correct_pad(x, kernel), name=f"{name}dwconv_pad")(x)
    x = layers.DepthwiseConv2D(
        kernel, strides=stride, padding="valid" if stride == 2 else "same", use_bias=False, name=f"{name}dwconv"
    )(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}bn")(x)
    x = layers.Activation("relu6", name=f"{name}activation")(x)
    x = _conv_bn(x, filters_out, f"{name}project", activation=False)
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}drop")(x)
        x = layers.Add(name=f"{name}add")([x, inputs])
    return x


# Stochastic depth at the last block as EfficientNet was pretrained, the default here and the rate
# keras.applications.EfficientNetB0 fixes.
DROP_CONNECT = 0.2


def lite0_features(inputs, drop_connect_rate: float = DROP_CONNECT):
    """EfficientNet-Lite0 up to its last feature map; layer names follow keras.applications.EfficientNetB0."""
    # (x - 127) / 128, the normalisation the Lite0 ImageNet weights were trained with.
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(inputs)
    x = layers.ZeroPadding2D(_correct_pad(x, 3), name="stem_conv_pad")(x)
    x = layers.Conv2D(32, 3, strides=2, padding="valid", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="stem_bn")(x)
    x = layers.Activation("relu6", name="stem_activation")(x)
    total = sum(stage[0] for stage in _B0_STAGES)
    index = 0
    for stage, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(_B0_STAGES, start=1):
        for r in range(repeats):
            name = f"block{stage}{chr(97 + r)}_"
            x = _mbconv(
                x, name, kernel, stride if r == 0 else 1, expand, f_in if r == 0 else f_out, f_out,
                drop_connect_rate * index / total,
            )
            index += 1
    x = layers.Conv2D(1280, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="top_bn")(x)
    return layers.Activation("relu6", name=LAST_CONV_LAYER)(x)


def load_npz_weights(model: keras.Model, path: str | os.PathLike) -> int:
    """Set every layer whose name appears in a `<layer>/<variable>` keyed .npz file; return how many."""
    arrays = np.load(path)
    names = {key.split("/")[0] for key in arrays.files}
    loaded = 0
    for layer in model.layers:
        if layer.name in names and layer.weights:
            try:
                layer.set_weights([arrays[f"{layer.name}/{v.name}"] for v in layer.weights])
            except KeyError as exc:
                raise ValueError(f"{path} has layer {layer.name!r} but not variable {exc}") from None
            loaded += 1
    if loaded == 0:
        raise ValueError(f"No layer of the model matched the weights in {path}.")
    return loaded


class WeightsError(ValueError):
    """Pretrained weights that cannot be found, fetched or loaded; the message says what to do."""


# Keras' own ImageNet weights for EfficientNetB0 without its top, as `keras.applications.EfficientNetB0` fetches them
# (`keras/src/applications/efficientnet.py`: the URL and the file's MD5).
KERAS_B0_FILE = "efficientnetb0_notop.h5"
KERAS_B0_URL = "https://storage.googleapis.com/keras-applications/" + KERAS_B0_FILE
KERAS_B0_MD5 = "50bc09e76180e00e4465e1a485ddc09d"
# With weights="imagenet" Keras adds a Rescaling by 1/sqrt(std) after its Normalization layer (the stddev it stores
# is used as a variance; tensorflow/tensorflow#49930); built from a file path it does not.
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def keras_cache_path() -> Path:
    """Where `keras.utils.get_file` keeps (and first looks for) EfficientNetB0's ImageNet weights."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models" / KERAS_B0_FILE


def _resolve_weights(backbone: str, weights: str | None) -> str | None:
    """Map 'imagenet' / 'none' / a path to what the builder needs (None, 'imagenet' or a file)."""
    if weights in (None, "none", "None"):
        return None
    if weights == "imagenet" and backbone == "efficientnet_lite0":
        path = DEFAULT_WEIGHTS_DIR / "efficientnet_lite0_imagenet_notop.npz"
        if not path.exists():
            raise WeightsError(
                f"ImageNet weights for EfficientNet-Lite0 were not found at {path}. "
                "Pass --weights PATH to an .npz keyed by Keras layer names, or set MELANOMA_WEIGHTS_DIR."
            )
        return str(path)
    if weights != "imagenet" and not Path(weights).is_file():
        raise WeightsError(f"Weights file not found. Received: weights={weights!r}")
    return weights


def _keras_b0(pixels, imagenet: bool) -> keras.Model:
    """`keras.applications.EfficientNetB0` without its top on `pixels`; with `imagenet`, Keras' ImageNet weights,
    from its cache or downloaded, and a sentence saying what to do when neither works."""
    try:
        return keras.applications.EfficientNetB0(include_top=False, weights="imagenet" if imagenet else None,
                                                 input_tensor=pixels)
    except Exception as exc:  # keras.utils.get_file raises a bare Exception when the download fails
        if not imagenet or "URL fetch failure" not in str(exc):
            raise
        cache = keras_cache_path()
        raise WeightsError(
            f"EfficientNetB0's ImageNet weights are not in Keras' cache ({cache}) and could not be downloaded "
            f"({exc}). Where the internet is reachable, download {KERAS_B0_URL} and put it at {cache} (or under "
            f"$KERAS_HOME/models/), or pass --weights PATH to that file; or train --backbone efficientnet_lite0, "
            f"whose ImageNet weights load from {DEFAULT_WEIGHTS_DIR}."
        ) from None


def is_keras_b0_imagenet_file(path: str | os.PathLike) -> bool:
    """Whether `path` is Keras' own EfficientNetB0 ImageNet file (by its MD5, as Keras checks it)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == KERAS_B0_MD5


def _readable_weights(path: str) -> None:
    """A WeightsError where this user may not read the weights file `path`: it was weights that "do not fit"."""
    try:
        open(path, "rb").close()
    except PermissionError as exc:
        raise WeightsError(f"The weights file {path} cannot be read by this user ({exc.strerror}): give the user who "
                           f"runs this read access to it.") from None


def _load_backbone_file(model: keras.Model, inputs, features, backbone: str, path: str) -> None:
    _readable_weights(path)
    try:
        if path.endswith(".npz"):
            load_npz_weights(model, path)
            return
        keras.Model(inputs, features).load_weights(path)
    except (ValueError, OSError, KeyError) as exc:
        raise WeightsError(f"The weights in {path} do not fit the {backbone} backbone ({exc}). Pass --weights an "
                           f".npz keyed by Keras layer names, or a Keras weights file of this backbone.") from None
    if backbone == "efficientnet_b0" and is_keras_b0_imagenet_file(path):
        # Keras' ImageNet file given as a path: fold the Rescaling Keras adds for weights="imagenet" into the
        # Normalization layer's variance, (x - m) / sqrt(v) / sqrt(s) = (x - m) / sqrt(v * s), so the network is the
        # one `weights="imagenet"` builds.
        norm = next(layer for layer in model.layers if isinstance(layer, layers.Normalization))
        mean, variance, count = norm.get_weights()
        norm.set_weights([mean, variance * np.asarray(_IMAGENET_STDDEV_RGB, variance.dtype), count])
        norm.finalize_state()  # the layer computes with copies of its variables, refreshed here (as loading does)


@keras.saving.register_keras_serializable(package="melanoma")
class GeMPooling(layers.Layer):
    """Generalised-mean pooling (Radenovic et al. 2018): (mean over the map of x^p)^(1/p), per channel, with one
    learned exponent p for all channels. p = 1 is average pooling and p -> infinity max pooling, so the network
    can learn how much a small, strong patch (a lesion's local structure) should outweigh the rest of the image.
    Inputs are clamped at `eps` first, which the non-negative ReLU6 maps of Lite0 do not notice."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.initial_p, self.eps = float(p), float(eps)

    def build(self, input_shape):
        self.p = self.add_weight(name="p", shape=(), initializer=keras.initializers.Constant(self.initial_p))

    def call(self, x):
        p = keras.ops.cast(self.p, x.dtype)
        pooled = keras.ops.mean(keras.ops.power(keras.ops.maximum(x, self.eps), p), axis=(1, 2))
        return keras.ops.power(pooled, 1.0 / p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "p": self.initial_p, "eps": self.eps}


@keras.saving.register_keras_serializable(package="melanoma")
class AttentionPooling(layers.Layer):
    """Attention pooling: a weighted average of the last feature map, with weights learned per position.
    Each position's vector scores itself through a small gated network (Ilse et al. 2018,
    score = w . (tanh(V x) * sigmoid(U x))), and a softmax over the map turns the scores into weights.
    `w` starts at zero, so every position starts with the same weight and the layer starts as global average pooling:
    training moves it away from the average only as far as that helps."""

    def __init__(self, units: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        glorot = keras.initializers.GlorotUniform(seed=0)
        self.v = self.add_weight(name="v", shape=(channels, self.units), initializer=glorot)
        self.u = self.add_weight(name="u", shape=(channels, self.units), initializer=glorot)
        self.w = self.add_weight(name="w", shape=(self.units,), initializer="zeros")

    def weights_map(self, x):
        """The softmax weights over the map, shape (batch, height, width); they sum to 1 per image."""
        gated = keras.ops.tanh(keras.ops.matmul(x, self.v)) * keras.ops.sigmoid(keras.ops.matmul(x, self.u))
        scores = keras.ops.tensordot(gated, self.w, axes=1)
        shape = keras.ops.shape(scores)
        flat = keras.ops.softmax(keras.ops.reshape(scores, (shape[0], -1)), axis=-1)
        return keras.ops.reshape(flat, shape)

    def call(self, x):
        weights = keras.ops.cast(self.weights_map(x), x.dtype)
        return keras.ops.sum(x * weights[..., None], axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="melanoma")
class CircleMask(layers.Layer):
    """Fills everything outside the disc inscribed in the square image with one constant (black by default).

    Training turns its images through any angle and fills the corners that turn uncovers with the mirrored border, so
    almost every training image has mirrored corners and no served upright image has them. Masked to the disc, a
    turned image and an upright one look alike outside it, and what a dermoscope's rim or the mirroring leaves in the
    corners no longer reaches the network. Inside the model, so training (after its augmentation) and every serving
    runtime apply the same mask. No weights; the edge is one pixel of antialiasing.
    """

    def __init__(self, fill: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.fill = float(fill)

    @staticmethod
    def disc(height: int, width: int) -> np.ndarray:
        """The (1, H, W, 1) mask: 1 inside the inscribed disc, 0 outside, a one-pixel ramp between."""
        y, x = np.mgrid[0:height, 0:width].astype(np.float64)
        r = np.hypot(y - (height - 1) / 2.0, x - (width - 1) / 2.0)
        return np.clip(min(height, width) / 2.0 - r + 0.5, 0.0, 1.0)[None, :, :, None].astype("float32")

    def build(self, input_shape):
        self._mask = self.disc(int(input_shape[1]), int(input_shape[2]))  # once, not at every eager call

    def call(self, x):
        return x * self._mask + self.fill * (1.0 - self._mask)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "fill": self.fill}


POOLING_LAYERS = {"avg": layers.GlobalAveragePooling2D, "gem": GeMPooling, "attention": AttentionPooling}


def build_model(
    backbone: str = "efficientnet_lite0",
    weights: str | None = "imagenet",
    image_size: int = 256,
    dropout: float = 0.3,
    dense_units: int = 256,
    class_prior: tuple[float, float] | None = None,
    drop_connect_rate: float = DROP_CONNECT,
    pooling: str = "avg",
    circle_mask: bool = False,
) -> keras.Model:
    """Backbone + head (dropout, dense, dropout, 2-way softmax; with `dense_units` 0, dropout and the softmax layer
    alone: a linear head on the pooled features) as one flat functional model.

    `drop_connect_rate` is stochastic depth: each residual block of the backbone is skipped in training with a
    chance rising linearly from 0 at the first block to this rate at the last.
    `pooling` is how the last feature map becomes one vector: "avg" (global average), "gem" (`GeMPooling`) or
    "attention" (`AttentionPooling`).
    `circle_mask` puts a `CircleMask` between the input and the backbone (training's augmentation comes before it).
    `class_prior` (benign, malignant) initialises the output bias to the log prior, so the
    untrained head already predicts the base rate (the imbalance is handled there, not by
    reweighting, which would distort calibration).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone; choose one of {BACKBONES}. Received: backbone={backbone!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling; choose one of {tuple(POOLINGS)}. Received: pooling={pooling!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32. Received: image_size={image_size}")
    resolved = _resolve_weights(backbone, weights)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    pixels = CircleMask(name="circle_mask")(inputs) if circle_mask else inputs
    if backbone == "efficientnet_lite0":
        features = lite0_features(pixels, drop_connect_rate)
    else:
        base = _keras_b0(pixels, imagenet=resolved == "imagenet")
        features = base.output
        if drop_connect_rate != DROP_CONNECT:  # keras.applications fixes DROP_CONNECT; the rates scale with it
            for layer in base.layers:
                if layer.name.endswith("_drop") and layer.name.startswith("block"):
                    layer.rate = layer.rate * drop_connect_rate / DROP_CONNECT
    x = POOLING_LAYERS[pooling](name=POOLINGS[pooling])(features)
    if dense_units > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
        x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout_2")(x)  # what the auxiliary head, when there is one, reads
    bias = "zeros"
    if class_prior is not None:
        bias = keras.initializers.Constant(np.log(np.asarray(class_prior, dtype="float64")).tolist())
    outputs = layers.Dense(2, activation="softmax", bias_initializer=bias, name="predictions")(x)
    model = keras.Model(inputs, outputs, name=f"melanoma_{backbone}")
    if resolved not in (None, "imagenet"):
        _load_backbone_file(model, inputs, features, backbone, str(resolved))
    return model


def check_weights(backbone: str, weights: str | None) -> None:
    """Fail early, with `WeightsError`'s sentence, when `build_model` could not get these weights: a file that is not
    there or this user may not read, or EfficientNetB0's ImageNet weights neither cached nor downloadable (fetched now
    if they can be)."""
    resolved = _resolve_weights(backbone, weights)
    if resolved == "imagenet":
        _keras_b0(keras.Input((32, 32, 3)), imagenet=True)
    elif resolved:
        _readable_weights(resolved)


def backbone_layers(model: keras.Model) -> list:
    """Every layer of the backbone: everything before the pooling that starts the head."""
    start = next(i for i, layer in enumerate(model.layers) if layer.name in POOLINGS.values())
    return model.layers[1:start]


def block_index(layer_name: str) -> float:
    """The backbone block a layer belongs to, from its name: 1-7, infinity for the top convolution, 0 for the stem."""
    if layer_name.startswith("block"):
        return int(layer_name[5])
    if layer_name.startswith("top"):
        return math.inf
    return 0  # stem and normalisation


def freeze_backbone(model: keras.Model) -> None:
    for layer in backbone_layers(model):
        layer.trainable = False


def unfreeze_top_blocks(model: keras.Model, from_block: int = 1, freeze_batchnorm: bool = True) -> int:
    """Make blocks `from_block`..7 and the top convolution trainable, keeping every BatchNormalization
    frozen (in inference mode) unless `freeze_batchnorm` is False (a network trained from scratch has no
    statistics worth keeping). Returns the number of layers made trainable. Recompile afterwards."""
    if not 0 <= from_block <= 7:
        raise ValueError(f"from_block must be between 0 (stem) and 7. Received: from_block={from_block}")
    count = 0
    for layer in backbone_layers(model):
        is_bn = isinstance(layer, layers.BatchNormalization)
        trainable = block_index(layer.name) >= from_block and not (is_bn and freeze_batchnorm)
        layer.trainable = trainable
        count += bool(trainable and layer.weights)
    return count
