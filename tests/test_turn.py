"""Turned views: NumPy resampling equal to training's, and a bundle that averages the upright and a turned view."""
import keras
import numpy as np
import pytest

from conftest import lesion_fixtures
from model.bundle import DEFAULT_BUNDLE, load_bundle
from model.explain import GradCAM
from model.inference import Predictor, average_views, calibrated_malignant_probability
from model.preprocessing import PreprocessSpec, preprocess
from model.turn import parse_turns, turn
from train.augment import RandomGeometry


@pytest.mark.parametrize("degrees, zoom, fill", [(45.0, 1.0, "reflect"), (22.5, 1.0, "reflect"),
                                                 (-30.0, 0.925, "reflect"), (200.0, 1.1, "reflect"),
                                                 (45.0, 1.0, "constant")])
def test_turn_resamples_exactly_as_the_training_augmentation(degrees, zoom, fill):
    x = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3)).astype(np.uint8)
    n = np.zeros(3, np.float32)
    matrix = RandomGeometry.transforms(n, n + np.deg2rad(degrees), n + zoom, n + zoom, 40, 40)
    expected = keras.ops.image.affine_transform(x.astype(np.float32), matrix, interpolation="bilinear",
                                                fill_mode=fill)
    got = turn(x, degrees, fill=fill, zoom=zoom)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, np.asarray(expected), atol=5e-3)  # float32 rounding on a 0-255 scale
    assert not np.allclose(got, x, atol=1.0)


def test_turn_is_the_identity_at_0_and_a_grid_rotation_at_90_and_refuses_a_non_square_batch():
    x = np.random.default_rng(1).integers(0, 255, (2, 9, 9, 3)).astype(np.uint8)
    np.testing.assert_array_equal(turn(x, 0.0), x.astype(np.float32))
    assert any(np.allclose(turn(x, 90.0), np.rot90(x, k, axes=(1, 2)), atol=1e-3) for k in (1, 3))
    np.testing.assert_allclose(turn(turn(x, 90.0), -90.0), x, atol=1e-3)
    with pytest.raises(ValueError, match="square"):
        turn(np.zeros((1, 8, 9, 3)), 45.0)


def test_view_turns_are_distinct_finite_angles():
    assert parse_turns("0,45") == (0.0, 45.0) and parse_turns([0, 22.5]) == (0.0, 22.5) and parse_turns("45") == (45.0,)
    for bad in ("0,45,45", "0,x", "", "0,inf", None):
        with pytest.raises(ValueError):
            parse_turns(bad)


@pytest.fixture(scope="module")
def lesions() -> tuple[Predictor, np.ndarray]:
    predictor = Predictor(load_bundle(DEFAULT_BUNDLE))
    paths = lesion_fixtures("benign") + lesion_fixtures("malignant")
    return predictor, np.stack([predictor.preprocess(p.read_bytes()) for p in paths])


def test_a_bundle_with_two_view_turns_serves_the_mean_log_probability_of_both_views(lesions):
    upright, x = lesions
    bundle = load_bundle(DEFAULT_BUNDLE)
    bundle.card["view_turns"] = [0, 45]
    both = Predictor(bundle)
    assert both.turns == (0.0, 45.0)
    probs, features = both.raw_outputs(x)
    alone = [upright.raw_probabilities(x, turns=(0.0,)), upright.raw_probabilities(turn(x, 45.0), turns=(0.0,))]
    np.testing.assert_allclose(probs, average_views(np.concatenate(alone), 2), atol=1e-5)
    assert not np.allclose(probs, alone[0], atol=1e-3)  # the turned view changes the verdict's scores
    np.testing.assert_allclose(features, upright.raw_outputs(x)[1], atol=1e-4)  # the gate reads the upright view
    np.testing.assert_allclose(both.probability(x),
                               calibrated_malignant_probability(probs, both.temperature, both.logit_bias), atol=1e-6)
    # chunked forward passes give the same answer as one
    np.testing.assert_allclose(both.raw_probabilities(x[:1]), probs[:1], atol=1e-5)


def test_grad_cam_over_two_views_is_the_mean_of_both_maps_turned_back_upright(lesions):
    _, x = lesions
    cam = GradCAM(load_bundle(DEFAULT_BUNDLE).model)
    single = cam.heatmaps(x[:2])
    both = cam.heatmaps(x[:2], (0.0, 45.0))
    size = x.shape[1]
    assert single.shape[1] < size and both.shape == (2, size, size)
    assert both.min() >= 0.0 and np.isclose(both.max(axis=(1, 2)), 1.0).all()
    # where the 45-degree view looked differs from the upright view's map, upsampled alone
    import tensorflow as tf
    upright = tf.image.resize(single[..., None], (size, size), method="bilinear").numpy()[..., 0]
    assert np.corrcoef(upright.ravel(), both.ravel())[0, 1] > 0.5  # both views look at broadly the same places
    assert not np.allclose(upright / upright.max(), both, atol=0.05)


def test_grad_cam_of_a_turned_view_is_turned_back_to_where_the_lesion_is():
    """Six melanomas moved towards the lower right (np.roll by 64 px each way): the hottest tenth of the 45-degree
    view's map, turned back upright, lies where the upright map's does (median distance 17 px when written; turned
    the wrong way, 90 px; not turned back, 54)."""
    import tensorflow as tf

    bundle = load_bundle(DEFAULT_BUNDLE)
    spec = PreprocessSpec.from_dict(bundle.card["preprocessing"])
    x = np.stack([preprocess(p.read_bytes(), spec) for p in lesion_fixtures("malignant") + lesion_fixtures("cam")])
    x = np.roll(x, (64, 64), axis=(1, 2))
    cam, size = GradCAM(bundle.model), x.shape[1]
    upright = tf.image.resize(cam.heatmaps(x)[..., None], (size, size), method="bilinear").numpy()[..., 0]
    turned_back = cam.heatmaps(x, (45.0,))

    def hottest_centre(m):
        m = np.where(m >= np.quantile(m, 0.9), m, 0.0)
        yy, xx = np.mgrid[: m.shape[0], : m.shape[1]]
        return np.array([(m * yy).sum(), (m * xx).sum()]) / m.sum()

    distances = [np.linalg.norm(hottest_centre(a) - hottest_centre(b)) for a, b in zip(upright, turned_back)]
    assert np.median(distances) < 30, distances


def test_a_bundle_served_through_one_turned_view_scores_and_gates_that_view(lesions):
    upright, x = lesions
    bundle = load_bundle(DEFAULT_BUNDLE)
    bundle.card["view_turns"] = [45]
    turned = Predictor(bundle)
    probs, features = turned.raw_outputs(x)
    expected_probs, expected_features = upright.raw_outputs(turn(x, 45.0))
    np.testing.assert_allclose(probs, expected_probs, atol=1e-5)
    np.testing.assert_allclose(features, expected_features, atol=1e-4)
    assert not np.allclose(probs, upright.raw_probabilities(x), atol=1e-3)
