import json

import keras
import numpy as np
import pytest
from PIL import Image

from model import architecture
from model.architecture import (LAST_CONV_LAYER, AttentionPooling, CircleMask, GeMPooling, WeightsError, backbone_layers,
                                build_model, freeze_backbone, load_npz_weights, unfreeze_top_blocks)
from tests.conftest import SHARED_WEIGHTS


def test_classifier_shape_and_softmax():
    model = build_model("efficientnet_lite0", weights="none", image_size=64)
    out = model(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")).numpy()
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer(LAST_CONV_LAYER).output.shape[-1] == 1280


def test_output_bias_starts_at_the_class_prior():
    model = build_model("efficientnet_lite0", weights="none", image_size=64, class_prior=(0.8, 0.2))
    bias = model.get_layer("predictions").get_weights()[1]
    np.testing.assert_allclose(np.exp(bias) / np.exp(bias).sum(), [0.8, 0.2], rtol=1e-5)


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.0])
def test_stochastic_depth_rises_to_the_rate_alike_in_both_backbones(rate):
    def rates(backbone):
        model = build_model(backbone, weights="none", image_size=64, drop_connect_rate=rate)
        drops = [l for l in model.layers if l.name.startswith("block") and l.name.endswith("_drop")]
        return {l.name: l.rate for l in drops if l.rate > 0}  # a block with rate 0 may have no layer

    lite0, b0 = rates("efficientnet_lite0"), rates("efficientnet_b0")
    assert lite0.keys() == b0.keys()
    for name in lite0:
        assert lite0[name] == pytest.approx(b0[name])
    assert lite0.get("block6d_drop", 0.0) == pytest.approx(rate * 14 / 16)  # the 15th of 16 blocks, from 0


def test_unfreeze_keeps_batchnorm_frozen_and_lower_blocks_fixed():
    model = build_model("efficientnet_lite0", weights="none", image_size=64)
    freeze_backbone(model)
    assert not model.get_layer("block6a_expand_conv").trainable
    assert model.get_layer("predictions").trainable
    unfreeze_top_blocks(model, from_block=5)
    assert model.get_layer("block6a_expand_conv").trainable
    assert model.get_layer("top_conv").trainable
    assert not model.get_layer("block4a_expand_conv").trainable
    assert not any(l.trainable for l in model.layers if isinstance(l, keras.layers.BatchNormalization))


def test_train_batchnorm_fine_tunes_the_statistics_of_the_unfrozen_blocks_only():
    import argparse

    from train.train import batchnorm_frozen, parse_args

    assert batchnorm_frozen(argparse.Namespace(weights="imagenet", train_batchnorm=False))
    assert not batchnorm_frozen(argparse.Namespace(weights="imagenet", train_batchnorm=True))
    assert not batchnorm_frozen(argparse.Namespace(weights="none", train_batchnorm=False))
    assert parse_args(["--data", "d", "--train-batchnorm"]).train_batchnorm
    assert not parse_args(["--data", "d"]).train_batchnorm

    keras.utils.set_random_seed(0)
    model = build_model("efficientnet_lite0", weights="none", image_size=32, dense_units=8)
    freeze_backbone(model)
    unfreeze_top_blocks(model, from_block=6, freeze_batchnorm=False)
    upper, lower = model.get_layer("block6a_expand_bn"), model.get_layer("block5a_expand_bn")
    assert upper.trainable and not lower.trainable
    before = [np.array(layer.moving_variance) for layer in (upper, lower)]
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    model.train_on_batch(x, keras.utils.to_categorical(np.arange(8) % 2, 2))
    assert not np.allclose(np.array(upper.moving_variance), before[0])  # statistics re-estimated from the batch
    np.testing.assert_array_equal(np.array(lower.moving_variance), before[1])  # a frozen block keeps its own


def test_gem_pooling_is_the_generalised_mean_with_a_learned_exponent():
    x = np.random.default_rng(0).uniform(0, 6, (2, 4, 5, 3)).astype("float32")
    x[0, 0, 0, 0] = -1.0  # clamped to eps, as a swish map's small negatives would be
    clamped = np.maximum(x.astype("float64"), 1e-6)
    for p in (1.0, 3.0):
        out = GeMPooling(p=p)(x).numpy()
        np.testing.assert_allclose(out, np.mean(clamped ** p, axis=(1, 2)) ** (1 / p), rtol=1e-5)
    np.testing.assert_allclose(GeMPooling(p=1.0)(np.abs(x)).numpy(), np.abs(x).mean(axis=(1, 2)), rtol=1e-5)
    layer = GeMPooling(p=3.0)
    layer(x)
    assert [w.name for w in layer.trainable_weights] == ["p"]  # one exponent, learned with the head


def test_attention_pooling_starts_as_the_average_and_learns_where_to_look():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 6, (2, 4, 5, 3)).astype("float32")
    layer = AttentionPooling(units=8)
    np.testing.assert_allclose(layer(x).numpy(), x.mean(axis=(1, 2)), rtol=1e-5)  # w = 0: every position alike
    assert sorted(w.name for w in layer.trainable_weights) == ["u", "v", "w"]
    layer.w.assign(rng.normal(0, 3, 8).astype("float32"))
    weights = layer.weights_map(x).numpy().astype("float64")
    assert weights.shape == (2, 4, 5) and weights.min() > 0
    np.testing.assert_allclose(weights.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    gated = np.tanh(x @ layer.v.numpy()) / (1 + np.exp(-(x @ layer.u.numpy())))
    scores = gated @ layer.w.numpy()
    expected = np.exp(scores) / np.exp(scores).sum(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(weights, expected, rtol=1e-4)
    np.testing.assert_allclose(layer(x).numpy(), np.einsum("bhwc,bhw->bc", x, expected), rtol=1e-4)
    assert not np.allclose(layer(x).numpy(), x.mean(axis=(1, 2)), rtol=1e-3)  # no longer the average


def test_attention_head_saves_and_loads_with_identical_outputs(tmp_path):
    avg = build_model("efficientnet_lite0", weights="none", image_size=64)
    model = build_model("efficientnet_lite0", weights="none", image_size=64, pooling="attention")
    assert [l.name for l in backbone_layers(model)] == [l.name for l in backbone_layers(avg)]
    assert model.get_layer("attention_pool").output.shape == (None, 1280)
    pool = model.get_layer("attention_pool")
    pool.w.assign(np.random.default_rng(2).normal(0, 1, pool.units).astype("float32"))
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    model.save(tmp_path / "attention.keras")
    loaded = keras.models.load_model(tmp_path / "attention.keras", compile=False)
    assert isinstance(loaded.get_layer("attention_pool"), AttentionPooling)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_gem_head_saves_loads_and_leaves_the_backbone_split_alone(tmp_path):
    avg = build_model("efficientnet_lite0", weights="none", image_size=64)
    gem = build_model("efficientnet_lite0", weights="none", image_size=64, pooling="gem")
    assert [l.name for l in backbone_layers(gem)] == [l.name for l in backbone_layers(avg)]
    assert gem.get_layer("gem_pool").output.shape == (None, 1280)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    gem.save(tmp_path / "gem.keras")
    loaded = keras.models.load_model(tmp_path / "gem.keras", compile=False)
    assert isinstance(loaded.get_layer("gem_pool"), GeMPooling)
    np.testing.assert_allclose(loaded(x).numpy(), gem(x).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Received: pooling='max'"):
        build_model("efficientnet_lite0", weights="none", image_size=64, pooling="max")


def test_bad_arguments_say_what_was_received():
    with pytest.raises(ValueError, match="Received: backbone='resnet'"):
        build_model("resnet", weights="none")
    with pytest.raises(WeightsError, match="Received: weights="):
        build_model("efficientnet_lite0", weights="/nonexistent/weights.npz", image_size=64)
    with pytest.raises(WeightsError, match="do not fit the efficientnet_lite0 backbone"):
        build_model("efficientnet_lite0", weights=__file__, image_size=64)  # a file, but not weights


def test_a_weights_file_this_user_may_not_read_is_said_so(monkeypatch):
    """A weights file of mode 600 owned by another user was weights that "do not fit" the backbone. The operating
    system's refusal is stood in for at the one `open` model.architecture calls to find it out (root reads all)."""
    def open_as_another_user(file, *args, **kwargs):
        if str(file) == __file__:
            raise PermissionError(13, "Permission denied", str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(architecture, "open", open_as_another_user, raising=False)
    for attempt in (lambda: build_model("efficientnet_lite0", weights=__file__, image_size=64),
                    lambda: architecture.check_weights("efficientnet_lite0", __file__)):  # python -m train, at once
        with pytest.raises(WeightsError) as refused:
            attempt()
        assert str(refused.value) == (f"The weights file {__file__} cannot be read by this user (Permission denied): "
                                      f"give the user who runs this read access to it.")


def test_b0_imagenet_weights_out_of_reach_give_a_sentence_that_says_where_to_put_them(keras_offline, monkeypatch,
                                                                                         tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for attempt in (lambda: build_model("efficientnet_b0", weights="imagenet", image_size=64),
                    lambda: architecture.check_weights("efficientnet_b0", "imagenet")):
        with pytest.raises(WeightsError) as refused:
            attempt()
        message = str(refused.value)
        assert "could not be downloaded (URL fetch failure" in message
        assert f"put it at {tmp_path / 'keras' / 'models' / 'efficientnetb0_notop.h5'}" in message
        assert architecture.KERAS_B0_URL in message and "--backbone efficientnet_lite0" in message
    architecture.check_weights("efficientnet_b0", "none")  # nothing to fetch
    with pytest.raises(WeightsError, match="Weights file not found"):
        architecture.check_weights("efficientnet_lite0", str(tmp_path / "missing.npz"))


def test_keras_b0_imagenet_file_given_as_a_path_builds_the_network_weights_imagenet_builds(monkeypatch, tmp_path):
    """Keras adds a Rescaling layer for weights="imagenet" only: the same file given as a path must give the same
    network (the folded variance), and another B0 weights file must load as it is."""
    import h5py
    from keras.src.applications import efficientnet
    from keras.src.legacy.saving import legacy_h5_format

    source = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(64, 64, 3))
    rng = np.random.default_rng(0)
    for w in source.weights:  # weights with a scale, and the stored "variance" near Keras' ImageNet stddev
        w.assign((rng.uniform(0.2, 0.3, w.shape) if "variance" in w.path else rng.normal(0, 0.05, w.shape))
                 .astype("float32"))
    path = tmp_path / "efficientnetb0_notop.h5"
    with h5py.File(path, "w") as f:  # the legacy H5 layout of Keras' own file
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    monkeypatch.setattr(efficientnet.file_utils, "get_file", lambda *args, **kwargs: str(path))
    stored = source.get_layer(next(l.name for l in source.layers if isinstance(l, keras.layers.Normalization)))
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")

    def features(model):  # what the first convolution sees (with random weights, deeper layers barely see the input)
        return keras.Model(model.inputs, model.get_layer("stem_conv").output)(x).numpy()

    imagenet = features(build_model("efficientnet_b0", weights="imagenet", image_size=64))
    as_is = build_model("efficientnet_b0", weights=str(path), image_size=64)  # not Keras' file: loaded as it is
    norm = next(l for l in as_is.layers if isinstance(l, keras.layers.Normalization))
    np.testing.assert_array_equal(norm.get_weights()[1], stored.get_weights()[1])
    assert not np.allclose(features(as_is), imagenet, atol=1e-3)
    monkeypatch.setattr(architecture, "KERAS_B0_MD5", __import__("hashlib").md5(path.read_bytes()).hexdigest())
    assert architecture.is_keras_b0_imagenet_file(path)
    np.testing.assert_allclose(features(build_model("efficientnet_b0", weights=str(path), image_size=64)), imagenet,
                               rtol=1e-4, atol=1e-4)


def test_b0_backbone_builds_without_download():
    model = build_model("efficientnet_b0", weights="none", image_size=64)
    assert model.get_layer("block7a_project_conv") is not None
    assert model(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 2)


@pytest.mark.skipif(not (SHARED_WEIGHTS / "efficientnet_lite0_imagenet.npz").exists(), reason="needs ../shared/weights")
def test_lite0_imagenet_weights_recognise_a_cat():
    """The in-project Lite0 definition with the shared weights is a real ImageNet classifier."""
    import skimage.data

    from model.architecture import lite0_features

    inputs = keras.Input((224, 224, 3))
    x = keras.layers.GlobalAveragePooling2D()(lite0_features(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1000, name="predictions")(x))
    assert load_npz_weights(model, SHARED_WEIGHTS / "efficientnet_lite0_imagenet.npz") == 99
    cat = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((224, 224), Image.Resampling.BILINEAR), "float32")
    top3 = np.argsort(-model(cat[None]).numpy()[0])[:3]
    names = json.loads((SHARED_WEIGHTS / "imagenet_class_index.json").read_text())
    assert {names[str(i)][1] for i in top3} & {"tiger_cat", "Egyptian_cat", "tabby"}


def test_dense_units_0_gives_a_linear_head_on_the_pooled_features():
    model = build_model("efficientnet_lite0", weights="none", image_size=32, dense_units=0)
    names = {layer.name for layer in model.layers}
    assert "head_dense" not in names and "head_dropout_2" in names
    pooled = model.get_layer("head_dropout_2").input
    assert model.get_layer("predictions").kernel.shape == (pooled.shape[-1], 2)
    with_hidden = build_model("efficientnet_lite0", weights="none", image_size=32, dense_units=8)
    assert with_hidden.get_layer("head_dense").kernel.shape[-1] == 8
    assert model.count_params() < with_hidden.count_params()


def test_circle_mask_hides_the_corners_and_keeps_the_disc():
    model = build_model("efficientnet_lite0", weights="none", image_size=32, circle_mask=True)
    mask = CircleMask.disc(32, 32)[0, :, :, 0]
    assert mask[16, 16] == 1.0 and mask[0, 0] == 0.0 and mask[0, 16] > 0.9 and 0.7 < mask.mean() < 0.85
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    masked = model.get_layer("circle_mask")(x).numpy()
    np.testing.assert_array_equal(masked[0, 16, 16], x[0, 16, 16])
    np.testing.assert_array_equal(masked[0, 0, 0], [0.0, 0.0, 0.0])
    # the whole network reads the image through its stem: a stem blind to the corners is a network blind to them
    stem = keras.Model(model.input, model.get_layer("stem_conv").output)
    corners = x.copy()
    corners[:, mask == 0] = rng.uniform(0, 255, (int((mask == 0).sum()), 3))  # only what the disc leaves out
    np.testing.assert_array_equal(stem(corners).numpy(), stem(x).numpy())
    inside = x.copy()
    inside[:, mask > 0] = 255.0 - inside[:, mask > 0]
    assert np.abs(stem(inside).numpy() - stem(x).numpy()).max() > 0.1
    assert "circle_mask" not in {layer.name for layer in build_model("efficientnet_lite0", weights="none",
                                                                      image_size=32).layers}


def test_circle_mask_before_either_backbone_survives_save_and_load(tmp_path):
    for backbone in ("efficientnet_lite0", "efficientnet_b0"):
        model = build_model(backbone, weights="none", image_size=32, circle_mask=True)
        assert model.layers[1].name == "circle_mask"
        x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
        model.save(tmp_path / f"{backbone}.keras")
        loaded = keras.saving.load_model(tmp_path / f"{backbone}.keras")
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
