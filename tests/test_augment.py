"""Training-time augmentation: active only in training, shapes kept, ink and dermoscope rings painted where asked."""
import numpy as np
import pytest
import tensorflow as tf

import keras

from train.augment import (INK_RGB, RandomBlurs, RandomClahe, RandomCutout, RandomDermoscopeRing, RandomDistortion,
                           RandomGeometry, RandomInk, RandomJpeg, RandomNoise, RandomSaturationHue, build_augmenter,
                           ink_masks)


def _images(n=8, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(150, 230, (n, size, size, 3)).astype(np.float32)  # pale skin-like, no purple


def test_ink_masks_are_seeded_and_cover_a_small_part_of_the_image():
    a, b = ink_masks(64, count=16, seed=3), ink_masks(64, count=16, seed=3)
    assert a.shape == (16, 64, 64, 1) and np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    coverage = (a > 0.5).mean(axis=(1, 2, 3))
    assert (coverage > 0).all() and (coverage < 0.2).all()  # every mask paints something, none hides the lesion


def test_ink_is_painted_in_training_only():
    x = _images()
    layer = RandomInk(1.0, bank_size=16, seed=1)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    out = next(iter(tf.data.Dataset.from_tensor_slices(x).batch(8).map(lambda a: layer(a, training=True)))).numpy()
    assert out.shape == x.shape
    changed = np.abs(out - x).max(axis=-1) > 1.0
    assert changed.any(axis=(1, 2)).all()  # rate 1: every image gets ink
    # where it is painted, the colour moves towards the ink's purple (blue above green)
    painted = out[changed]
    assert (painted[:, 2] - painted[:, 1]).mean() > (x[changed][:, 2] - x[changed][:, 1]).mean() + 10
    assert abs(painted[:, 2].mean() - INK_RGB[2]) < abs(x[changed][:, 2].mean() - INK_RGB[2])


def test_ink_rate_zero_leaves_images_alone_and_the_augmenter_keeps_shapes():
    x = _images()
    assert np.array_equal(np.asarray(RandomInk(0.0, seed=1)(x, training=True)), x)
    augmenter = build_augmenter(seed=5, ink_rate=0.5)
    assert augmenter.layers[0].name.startswith("random_ink")
    out = np.asarray(augmenter(x, training=True))
    assert out.shape == x.shape and np.isfinite(out).all()
    assert not any(layer.name.startswith("random_ink") for layer in build_augmenter(seed=5).layers)


def test_dermoscope_ring_darkens_the_corners_and_keeps_the_centre_in_training_only():
    x = _images()
    layer = RandomDermoscopeRing(1.0, seed=2)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    assert np.array_equal(np.asarray(RandomDermoscopeRing(0.0, seed=2)(x, training=True)), x)
    out = next(iter(tf.data.Dataset.from_tensor_slices(x).batch(8).map(lambda a: layer(a, training=True)))).numpy()
    assert out.shape == x.shape
    corners = out[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # (8, 4, 3): outside any radius up to 0.58 of the side
    assert corners.max() < 0.5 * x.min() and corners.mean() < 40  # near-black, less a soft edge's bleed
    centre = slice(24, 40)  # inside any radius from 0.40 of the side, whatever the centre shift
    np.testing.assert_allclose(out[:, centre, centre], x[:, centre, centre], atol=0.5)


def test_augmenter_adds_blur_then_the_ring_last_only_when_asked():
    augmenter = build_augmenter(seed=5, ring_rate=0.3, blur_rate=0.3)
    names = [layer.name for layer in augmenter.layers]
    assert names[-1].startswith("random_dermoscope_ring") and names[-2].startswith("random_gaussian_blur")
    out = np.asarray(augmenter(_images(), training=True))
    assert out.shape == (8, 64, 64, 3) and np.isfinite(out).all()
    plain = [layer.name for layer in build_augmenter(seed=5).layers]
    assert not any(n.startswith(("random_dermoscope_ring", "random_gaussian_blur")) for n in plain)


def test_blur_softens_edges_in_training_only():
    x = np.zeros((4, 32, 32, 3), np.float32)
    x[:, :, 16:] = 255.0  # a hard vertical edge
    layer = build_augmenter(seed=3, blur_rate=1.0).layers[-1]
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    out = next(iter(tf.data.Dataset.from_tensor_slices(x).batch(4).map(lambda a: layer(a, training=True)))).numpy()
    edge = out[:, 16, 14:18, 0]
    assert ((edge > 1.0) & (edge < 254.0)).any(axis=1).all()  # every image: grey values appear across the edge


def test_filled_dermoscope_ring_takes_the_colour_of_the_skin_inside_it():
    x = np.full((8, 64, 64, 3), (210.0, 160.0, 140.0), np.float32)
    x[:, 28:36, 28:36] = 40.0  # a dark lesion in the middle
    layer = RandomDermoscopeRing(1.0, seed=2, fill=True)
    assert layer.get_config()["fill"] is True
    out = next(iter(tf.data.Dataset.from_tensor_slices(x).batch(8).map(lambda a: layer(a, training=True)))).numpy()
    corners = out[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    np.testing.assert_allclose(corners, np.broadcast_to([210.0, 160.0, 140.0], corners.shape), atol=1.0)
    np.testing.assert_allclose(out[:, 28:36, 28:36], 40.0, atol=0.5)
    augmenter = build_augmenter(seed=5, ring_rate=0.3, ring_fill=True)
    assert augmenter.layers[-1].fill


def _disk_aspects(zoom, count=16):
    """Width over height of a centred disk after `zoom` (training mode), one per image."""
    yy, xx = np.mgrid[:64, :64]
    disk = np.where(((yy - 31.5) ** 2 + (xx - 31.5) ** 2) < 12 ** 2, 255.0, 0.0).astype(np.float32)
    x = np.repeat(disk[None, ..., None], count, axis=0).repeat(3, axis=-1)
    out = np.asarray(zoom(x, training=True))[..., 0] > 127
    return out.any(axis=1).sum(axis=1) / out.any(axis=2).sum(axis=1)


def test_random_crop_changes_the_aspect_ratio_the_plain_zoom_keeps_it():
    crop, plain = build_augmenter(seed=5, random_crop=True).layers[0], build_augmenter(seed=5).layers[0]
    assert crop.name.startswith("random_geometry") and plain.name.startswith("random_geometry")
    assert np.allclose(_disk_aspects(plain), 1.0, atol=0.1)
    aspects = _disk_aspects(crop)
    assert (np.abs(aspects - 1.0) > 0.15).sum() >= 4  # most crops stretch one axis more than the other


def test_jpeg_compresses_the_chosen_share_with_the_real_codec_in_training_only():
    rng = np.random.default_rng(4)
    x = np.round(rng.uniform(0, 255, (16, 32, 32, 3))).astype(np.float32)  # noise: JPEG at quality 30 changes it
    layer = RandomJpeg(1.0, quality=(30, 30), seed=1)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    assert np.array_equal(np.asarray(RandomJpeg(0.0, seed=1)(x, training=True)), x)
    batches = tf.data.Dataset.from_tensor_slices(x).batch(16)
    out = next(iter(batches.map(lambda a: layer(a, training=True)))).numpy()
    expected = np.stack([tf.image.adjust_jpeg_quality(tf.constant(i.astype(np.uint8)), 30).numpy() for i in x])
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    some = RandomJpeg(0.5, seed=1)
    half = next(iter(batches.map(lambda a: some(a, training=True)))).numpy()
    same = (half == x).all(axis=(1, 2, 3))
    assert 0 < same.sum() < 16  # a share of the images is compressed, the rest passes untouched
    assert build_augmenter(seed=5, ring_rate=0.3, jpeg_rate=0.3).layers[-1].name.startswith("random_jpeg")
    assert not any(layer.name.startswith("random_jpeg") for layer in build_augmenter(seed=5).layers)


def test_cutout_covers_one_square_with_the_mean_colour_in_training_only():
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 255, (12, 40, 40, 3)).astype(np.float32)
    layer = RandomCutout(1.0, seed=3)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    assert np.array_equal(np.asarray(RandomCutout(0.0, seed=3)(x, training=True)), x)
    out = np.asarray(layer(x, training=True))
    for image, before in zip(out, x):
        changed = (image != before).any(axis=-1)
        rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
        assert rows.size and cols.size
        box = changed[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.all()  # one filled rectangle, nothing changed outside it
        assert box.sum() == changed.sum()
        assert max(rows.size, cols.size) <= np.ceil(0.375 * 40) + 1  # no side longer than 37.5% of the image
        inside = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        np.testing.assert_allclose(inside, np.broadcast_to(before.mean(axis=(0, 1)), inside.shape), rtol=1e-5)
    half = np.asarray(RandomCutout(0.5, seed=3)(x, training=True))
    untouched = (half == x).all(axis=(1, 2, 3))
    assert 0 < untouched.sum() < 12  # a share of the images is covered, the rest passes untouched
    names = [layer.name for layer in build_augmenter(seed=5, ring_rate=0.3, cutout_rate=0.5).layers]
    assert names[-2].startswith("random_cutout") and names[-1].startswith("random_dermoscope_ring")
    assert not any(name.startswith("random_cutout") for name in (l.name for l in build_augmenter(seed=5).layers))


def _smooth(n=4, size=48):
    """Smooth colour ramps and waves: bilinear resampling of them is close to exact."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    image = np.stack([100 + 80 * np.sin(2 * xx + yy), 120 + 60 * np.cos(3 * yy), 90 + 50 * xx * yy], -1)
    return np.repeat(image[None], n, axis=0).astype(np.float32)


def _warp(images, flip, angle, zoom_y, zoom_x):
    matrix = RandomGeometry.transforms(*(keras.ops.convert_to_tensor(np.asarray(v, np.float32))
                                         for v in (flip, angle, zoom_y, zoom_x)), images.shape[1], images.shape[2])
    return np.asarray(keras.ops.image.affine_transform(images, matrix, interpolation="bilinear", fill_mode="reflect"))


def test_geometry_transforms_flip_turn_and_zoom_exactly_where_the_pixel_grid_allows():
    x = _images(n=3, size=16, seed=1)
    ones, zeros = np.ones(3), np.zeros(3)
    np.testing.assert_allclose(_warp(x, zeros, zeros, ones, ones), x, atol=1e-3)  # the identity
    np.testing.assert_allclose(_warp(x, ones, zeros, ones, ones), x[:, :, ::-1], atol=1e-3)  # the flip
    quarter = _warp(x, zeros, np.full(3, np.pi / 2), ones, ones)  # a quarter turn maps the grid onto itself
    assert any(np.allclose(quarter, np.rot90(x, k, axes=(1, 2)), atol=1e-3) for k in (1, 3))
    x = _images(n=3, size=15, seed=1)  # an odd side: zoom 0.5 about the centre pixel (7, 7) maps odd rows to rows
    half = _warp(x, zeros, zeros, np.full(3, 0.5), np.full(3, 0.5))
    np.testing.assert_allclose(half[:, 1::2, 1::2], x[:, 4:11, 4:11], atol=1e-3)  # the middle, twice as large


def test_geometry_is_the_flip_then_the_turn_then_the_zoom_in_one_resampling():
    x = _smooth()
    rng = np.random.default_rng(2)
    flip, angle = np.array([0.0, 1.0, 1.0, 0.0]), rng.uniform(-np.pi, np.pi, 4)
    zoom_y, zoom_x = rng.uniform(0.7, 1.05, 4), rng.uniform(0.7, 1.05, 4)
    ones, zeros = np.ones(4), np.zeros(4)
    one_by_one = _warp(_warp(_warp(x, flip, zeros, ones, ones), zeros, angle, ones, ones), zeros, zeros, zoom_y, zoom_x)
    fused = _warp(x, flip, angle, zoom_y, zoom_x)
    middle = slice(12, 36)  # away from the mirrored border, which the two orders fill differently
    np.testing.assert_allclose(fused[:, middle, middle], one_by_one[:, middle, middle], atol=2.0)
    assert np.abs(fused[:, middle, middle] - _warp(x, zeros, angle, zoom_y, zoom_x)[:, middle, middle]).max() > 20
    other_order = _warp(_warp(x, zeros, zeros, zoom_y, zoom_x), zeros, angle, ones, ones)
    assert np.abs(fused[:, middle, middle] - other_order[:, middle, middle]).max() > 5  # the order is seen


def test_geometry_draws_every_flip_and_turn_and_zooms_in_its_range_in_training_only():
    x = _images(n=4, size=16)
    layer = RandomGeometry((-0.25, 0.1), seed=3)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    flip, angle, zoom_y, zoom_x = (np.asarray(v) for v in layer.draw(4000))
    assert set(np.unique(flip)) == {0.0, 1.0} and abs(flip.mean() - 0.5) < 0.03
    assert angle.min() < -3.0 and angle.max() > 3.0 and abs(np.histogram(angle, 8)[0] / 4000 - 1 / 8).max() < 0.02
    assert 0.75 <= zoom_y.min() and zoom_y.max() <= 1.1 and np.array_equal(zoom_y, zoom_x)
    crop = RandomGeometry((-0.35, 0.05), (-0.35, 0.05), seed=3)
    _, _, crop_y, crop_x = (np.asarray(v) for v in crop.draw(4000))
    assert 0.65 <= min(crop_y.min(), crop_x.min()) and max(crop_y.max(), crop_x.max()) <= 1.05
    assert abs(np.corrcoef(crop_y, crop_x)[0, 1]) < 0.05  # height and width zoomed apart
    out = next(iter(tf.data.Dataset.from_tensor_slices(x).batch(4).map(lambda a: layer(a, training=True)))).numpy()
    assert out.shape == x.shape and np.isfinite(out).all()
    assert RandomGeometry.from_config(crop.get_config()).width_zoom == (-0.35, 0.05)


def test_right_angles_snap_that_share_of_turns_to_quarter_turns_and_leave_the_other_draws_alone():
    plain, snapped = RandomGeometry((-0.25, 0.1), seed=3), RandomGeometry((-0.25, 0.1), seed=3, right_angle_share=0.5)
    flip, angle, zoom_y, _ = (np.asarray(v) for v in plain.draw(4000))
    s_flip, s_angle, s_zoom_y, _ = (np.asarray(v) for v in snapped.draw(4000))
    np.testing.assert_array_equal(s_flip, flip)
    np.testing.assert_array_equal(s_zoom_y, zoom_y)
    quarter = np.isclose(np.remainder(s_angle, np.pi / 2), 0, atol=1e-5) | np.isclose(
        np.remainder(s_angle, np.pi / 2), np.pi / 2, atol=1e-5)
    kept = np.isclose(s_angle, angle)
    assert abs(quarter.mean() - 0.5) < 0.03 and (quarter | kept).all()
    assert np.abs(s_angle[quarter] - angle[quarter]).max() <= np.pi / 4 + 1e-5  # the nearest quarter turn
    assert len(np.unique(np.round(s_angle[quarter], 4))) == 5  # -pi, -pi/2, 0, pi/2, pi
    # a quarter turn keeps the image's own corners: no mirrored border, unlike a turn of 45 degrees
    x = _images(n=1, size=16, seed=1)
    ones, zeros = np.ones(1), np.zeros(1)
    turned = _warp(x, zeros, np.full(1, np.pi / 2), ones, ones)
    assert any(np.allclose(turned, np.rot90(x, k, axes=(1, 2)), atol=1e-3) for k in (1, 3))
    assert RandomGeometry.from_config(snapped.get_config()).right_angle_share == 0.5
    assert build_augmenter(seed=5, right_angles=0.5).layers[0].right_angle_share == 0.5
    assert build_augmenter(seed=5).layers[0].right_angle_share == 0.0
    with pytest.raises(ValueError, match="right_angle_share"):
        RandomGeometry(right_angle_share=1.5)


def test_unresampled_images_keep_their_own_pixels_and_the_others_their_draws():
    plain = RandomGeometry((-0.25, 0.1), seed=3)
    native = RandomGeometry((-0.25, 0.1), seed=3, unresampled_share=0.3)
    flip, angle, zoom_y, zoom_x = (np.asarray(v) for v in plain.draw(4000))
    n_flip, n_angle, n_zoom_y, n_zoom_x = (np.asarray(v) for v in native.draw(4000))
    np.testing.assert_array_equal(n_flip, flip)
    left = (n_zoom_y == 1.0) & (n_zoom_x == 1.0)
    assert abs(left.mean() - 0.3) < 0.03
    quarter = np.abs(n_angle - np.round(n_angle / (np.pi / 2)) * (np.pi / 2)) < 1e-6  # whole quarter turns
    assert quarter[left].all() and not quarter[~left].any()
    np.testing.assert_array_equal(n_angle[~left], angle[~left])
    np.testing.assert_array_equal(n_zoom_y[~left], zoom_y[~left])
    # every unresampled image is its own pixels moved: one of the square's eight symmetries, exactly
    x = _images(n=12, size=16, seed=2)
    every = RandomGeometry((-0.25, 0.1), seed=4, unresampled_share=1.0)
    def own_pixels(image, moved):
        options = [np.rot90(f, k, axes=(0, 1)) for f in (image, image[:, ::-1]) for k in range(4)]
        return min(np.abs(moved - o).max() for o in options) < 1e-2
    assert all(own_pixels(i, m) for i, m in zip(x, np.asarray(every(x, training=True))))
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(x).batch(12).map(lambda a: every(a, training=True))))
    assert all(own_pixels(i, m) for i, m in zip(x, mapped.numpy()))  # as the training pipeline runs it, in a graph
    resampled = np.asarray(RandomGeometry((-0.25, 0.1), seed=4)(x, training=True))
    assert not any(own_pixels(i, m) for i, m in zip(x, resampled))  # without it, none is
    assert RandomGeometry.from_config(native.get_config()).unresampled_share == 0.3
    assert build_augmenter(seed=5, unresampled=0.3).layers[0].unresampled_share == 0.3
    assert build_augmenter(seed=5).layers[0].unresampled_share == 0.0
    with pytest.raises(ValueError, match="unresampled_share"):
        RandomGeometry(unresampled_share=-0.1)


def test_saturation_and_hue_give_each_image_its_own_adjustment():
    x = _smooth(n=3)
    saturation, turn = np.array([0.6, 1.0, 1.8], np.float32), np.array([-0.02, 0.0, 0.015], np.float32)
    out = np.asarray(RandomSaturationHue.adjust(x, keras.ops.convert_to_tensor(saturation),
                                                keras.ops.convert_to_tensor(turn)))
    for image, got, s, t in zip(x, out, saturation, turn):
        expected = tf.image.adjust_hue(tf.image.adjust_saturation(image / 255.0, s), t).numpy() * 255.0
        np.testing.assert_allclose(got, np.clip(expected, 0, 255), atol=0.5)
    np.testing.assert_allclose(out[1], x[1], atol=0.05)  # saturation 1, no turn: the image itself


def test_saturation_and_hue_draw_keras_ranges_in_training_only():
    x = _smooth(n=64, size=8)
    layer = RandomSaturationHue((0.35, 0.65), 0.04, seed=4)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 255.0
    hsv_in, hsv_out = tf.image.rgb_to_hsv(x / 255.0).numpy(), tf.image.rgb_to_hsv(out / 255.0).numpy()
    ratio = (hsv_out[..., 1] / hsv_in[..., 1]).mean(axis=(1, 2))  # no pixel here is near full saturation
    assert ratio.min() < 0.7 and ratio.max() > 1.5 and 0.35 / 0.65 - 0.01 <= ratio.min() and ratio.max() <= 0.65 / 0.35 + 0.01
    turn = ((hsv_out[..., 0] - hsv_in[..., 0] + 0.5) % 1.0 - 0.5).mean(axis=(1, 2))
    assert np.abs(turn).max() <= 0.02 + 1e-3 and turn.min() < -0.01 and turn.max() > 0.01
    np.testing.assert_allclose(hsv_out[..., 2], hsv_in[..., 2], atol=1e-3)  # brightness is not theirs to change


def _centre_colours(augmenter, n=128, size=16):
    """The centre pixel of `n` copies of one skin-coloured image after `augmenter`: the flip, turn and zoom move no
    colour there, so what changed it is the colour jitter."""
    x = np.broadcast_to(np.array([150.0, 110.0, 90.0], np.float32), (n, size, size, 3)).copy()
    return np.asarray(augmenter(x, training=True))[:, size // 2, size // 2, :].astype(np.float64)


def test_colour_jitter_scales_the_spread_of_brightness_and_saturation_and_zero_turns_it_off():
    plain = build_augmenter(seed=5)
    jitter = next(layer for layer in plain.layers if isinstance(layer, RandomSaturationHue))
    assert jitter.saturation == (0.35, 0.65) and jitter.hue == 0.04  # the default is the recipe shipped so far
    off = _centre_colours(build_augmenter(seed=5, colour=0.0))
    np.testing.assert_allclose(off, np.broadcast_to([150.0, 110.0, 90.0], off.shape), atol=1e-3)
    assert not any(isinstance(layer, RandomSaturationHue) for layer in build_augmenter(seed=5, colour=0.0).layers)
    once, twice = _centre_colours(plain), _centre_colours(build_augmenter(seed=5, colour=2.0))
    # the value (the brightest channel) moves only with brightness, which adds one offset to every channel: the same
    # draws, twice the range, twice the spread; saturation's multiplier f / (1 - f) spreads further too, short of
    # twice only where it reaches full saturation
    value = lambda c: c.max(axis=1)  # noqa: E731
    saturation = lambda c: (c.max(axis=1) - c.min(axis=1)) / c.max(axis=1)  # noqa: E731
    assert value(once).std() > 10
    assert value(twice).std() / value(once).std() == pytest.approx(2.0, rel=0.02)
    assert saturation(twice).std() > 1.6 * saturation(once).std()


def test_distortion_warps_by_a_smooth_field_within_its_bound_in_training_only():
    x = np.random.default_rng(7).uniform(0, 255, (6, 48, 48, 3)).astype(np.float32)
    zero = np.zeros((6, 48, 48), np.float32)
    assert np.array_equal(np.asarray(RandomDistortion.warp(x, zero, zero)), x)  # a zero field is no resampling
    right = np.asarray(RandomDistortion.warp(x, zero, zero + 1.0))  # every pixel takes its right neighbour's colour
    np.testing.assert_allclose(right[:, :, :-1], x[:, :, 1:], rtol=1e-6)
    np.testing.assert_allclose(right[:, :, -1], x[:, :, -2], rtol=1e-6)  # mirrored at the border
    layer = RandomDistortion(1.0, seed=3)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    assert np.array_equal(np.asarray(RandomDistortion(0.0, seed=3)(x, training=True)), x)
    # each pixel of a ramp holds its own coordinates, so the warped ramp shows where each pixel was taken from
    size = 96
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    ramp = np.repeat(np.stack([yy, xx, np.zeros_like(yy)], -1)[None], 8, axis=0)
    moved = (np.asarray(layer(ramp, training=True)) - ramp)[:, 8:-8, 8:-8, :2]  # away from the mirrored border
    bound = 0.06 * size
    assert np.abs(moved).max() <= bound + 1e-3
    assert (np.abs(moved).max(axis=(1, 2, 3)) > bound / 3).all()  # every image is warped, not only nudged
    # smooth enough never to fold: a pixel's source moves less than a pixel from its neighbour's, so no two swap
    assert np.abs(np.diff(moved, axis=1)).max() < 1.0 and np.abs(np.diff(moved, axis=2)).max() < 1.0
    half = np.asarray(RandomDistortion(0.5, seed=3)(np.repeat(x, 3, axis=0), training=True))
    untouched = (half == np.repeat(x, 3, axis=0)).all(axis=(1, 2, 3))
    assert 0 < untouched.sum() < 18  # a share of the images is warped, the rest passes untouched
    names = [layer.name for layer in build_augmenter(seed=5, distortion=0.7).layers]
    assert names[0].startswith("random_geometry") and names[1].startswith("random_distortion")
    assert not any(name.startswith("random_distortion") for name in (l.name for l in build_augmenter(seed=5).layers))


def test_noise_is_gaussian_within_its_range_on_a_share_of_the_images_in_training_only():
    x = np.full((40, 64, 64, 3), 128.0, np.float32)  # mid-grey: no clipping, so the added noise is all that moves
    layer = RandomNoise(1.0, seed=2)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    assert np.array_equal(np.asarray(RandomNoise(0.0, seed=2)(x, training=True)), x)
    noise = np.asarray(layer(x, training=True)) - x
    sigma = noise.std(axis=(1, 2, 3))
    assert (sigma > 2.0 * 0.95).all() and (sigma < 10.0 * 1.05).all()
    assert sigma.max() - sigma.min() > 4  # each image draws its own strength
    assert np.abs(noise.mean(axis=(1, 2, 3))).max() < 0.3  # centred: no brightness shift
    assert np.abs(np.corrcoef(noise[0, ..., 0].ravel(), noise[0, ..., 1].ravel())[0, 1]) < 0.05  # channels apart
    clipped = np.asarray(layer(np.full((4, 32, 32, 3), 254.0, np.float32), training=True))
    assert clipped.max() <= 255.0 and clipped.min() >= 0.0
    half = np.asarray(RandomNoise(0.5, seed=2)(x, training=True))
    untouched = (half == x).all(axis=(1, 2, 3))
    assert 0 < untouched.sum() < 40  # a share of the images gets noise, the rest passes untouched
    names = [layer.name for layer in build_augmenter(seed=5, ring_rate=0.3, jpeg_rate=0.3, noise_rate=0.5).layers]
    assert names[-3].startswith("random_dermoscope_ring") and names[-2].startswith("random_noise")
    assert names[-1].startswith("random_jpeg")
    assert not any(name.startswith("random_noise") for name in (l.name for l in build_augmenter(seed=5).layers))


def test_median_blur_is_the_3x3_median_with_mirrored_borders():
    from scipy.ndimage import median_filter

    x = np.random.default_rng(1).integers(0, 256, (2, 20, 24, 3)).astype(np.float32)
    expected = median_filter(x, size=(1, 3, 3, 1), mode="mirror")  # scipy's "mirror" is TensorFlow's REFLECT
    assert np.array_equal(np.asarray(RandomBlurs.median(x)), expected)


def test_motion_blur_draws_a_straight_streak_and_keeps_the_light():
    x = np.zeros((6, 256, 256, 3), np.float32)  # the size the lengths are given at
    x[:, 128, 128, :] = 900.0  # one bright dot in the middle of each image
    streaks = np.asarray(RandomBlurs(1.0, ("motion",), seed=3).motion(x)) / 900.0
    assert np.allclose(streaks.sum(axis=(1, 2)), 1.0, atol=1e-5)  # the kernel sums to 1: no light gained or lost
    for streak in streaks[..., 0]:
        ys, xs = np.nonzero(streak > 1e-6)
        assert 3 <= max(np.ptp(ys), np.ptp(xs)) + 1 <= 10  # 3-9 px long, plus a tap of spread at each end
        weights = streak[ys, xs]
        spread = np.linalg.eigvalsh(np.cov(np.stack([ys, xs]), aweights=weights))
        assert spread[0] < 0.25 * spread[1]  # a line, not a disc
    assert len({tuple(np.round(s[..., 0].ravel(), 3)) for s in streaks}) == len(streaks)  # each image its own streak


def test_random_blurs_give_each_of_a_share_of_the_images_one_kind_in_training_only():
    x = np.random.default_rng(2).uniform(0, 255, (60, 16, 16, 3)).astype(np.float32)
    layer = RandomBlurs(1.0, seed=4)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    median = np.asarray(RandomBlurs.median(x))
    is_median = np.isclose(out, median, atol=1e-4).all(axis=(1, 2, 3))
    assert not (out == x).all(axis=(1, 2, 3)).any()  # at rate 1 every image is blurred
    assert 5 < is_median.sum() < 40  # about a third took the median, the rest Gaussian or motion
    half = np.asarray(RandomBlurs(0.5, ("median",), seed=4)(x, training=True))
    untouched = (half == x).all(axis=(1, 2, 3))
    assert 10 < untouched.sum() < 50
    assert np.allclose(half[~untouched], median[~untouched], atol=1e-4)  # the others are exactly the median
    with pytest.raises(ValueError, match="blur kinds are some of gaussian, motion, median, not sharpen"):
        RandomBlurs(0.3, ("sharpen",))
    names = [layer.name for layer in build_augmenter(seed=5, blur_rate=0.3, blur_kinds=("gaussian", "motion")).layers]
    assert any(name.startswith("random_blurs") for name in names)
    assert not any(name.startswith("random_blurs") for name in
                   (l.name for l in build_augmenter(seed=5, blur_rate=0.3).layers))  # the Gaussian alone: as before


def _clahe_reference(tile_pixels, clip_limit):
    """CLAHE's mapping of one tile in NumPy, the excess spread evenly: levels 0-255 to [0, 1]."""
    hist = np.bincount(tile_pixels.ravel(), minlength=256).astype(np.float64)
    clipped = np.minimum(hist, max(clip_limit * tile_pixels.size / 256, 1.0))
    clipped += (hist - clipped).sum() / 256
    return np.cumsum(clipped) / tile_pixels.size


def test_clahe_maps_each_tile_by_its_clipped_cumulative_histogram():
    rng = np.random.default_rng(3)
    patch = np.clip(rng.normal(110, 12, (16, 16)), 0, 255).astype(np.int64)  # a low-contrast tile, 256 pixels
    tiled = np.tile(patch, (8, 8))  # 128 x 128, eight tiles each way, all alike: no blend between them
    luma = ((tiled + 0.5) / 256.0)[None].astype(np.float32)
    for limit in (1.0, 4.0):
        out = np.asarray(RandomClahe(1.0).equalize(tf.constant(luma), tf.constant([limit])))[0]
        np.testing.assert_allclose(out, _clahe_reference(patch, limit)[tiled], atol=1e-5)
    equalized = RandomClahe(1.0).equalize
    low, high = (np.asarray(equalized(tf.constant(luma), tf.constant([c])))[0].std() for c in (1.0, 4.0))
    assert luma.std() < low < high  # contrast grows, and grows with the clip limit


def test_clahe_blends_the_tiles_between_their_centres():
    halves = np.zeros((1, 64, 64), np.int64)  # 2 x 2 tiles: the two on the left alike and darker, the right two alike
    halves[:, :, :32] = np.tile(np.random.default_rng(4).integers(60, 100, (1, 32, 32)), (1, 2, 1))
    halves[:, :, 32:] = np.tile(np.random.default_rng(5).integers(140, 200, (1, 32, 32)), (1, 2, 1))
    luma = tf.constant(((halves + 0.5) / 256.0).astype(np.float32))
    out = np.asarray(RandomClahe(1.0, tiles=2).equalize(luma, tf.constant([2.0])))[0]
    left, right = (_clahe_reference(halves[0][:, cols], 2.0) for cols in (slice(0, 32), slice(32, 64)))
    level = halves[0]
    # at and beyond a tile centre (column 15.5 and 47.5 of 64) a pixel takes its own tile's mapping alone
    np.testing.assert_allclose(out[:, :16], left[level[:, :16]], atol=1e-5)
    np.testing.assert_allclose(out[:, 48:], right[level[:, 48:]], atol=1e-5)
    # between the centres, the two mappings mixed by distance: at column 31, 15.5 of the 32 columns to the right
    weight = (31 - 15.5) / 32
    np.testing.assert_allclose(out[:, 31], (1 - weight) * left[level[:, 31]] + weight * right[level[:, 31]], atol=1e-5)


def test_clahe_changes_the_luminance_of_a_share_of_the_images_in_training_only():
    rng = np.random.default_rng(6)
    x = np.clip(rng.normal([150, 100, 90], 10, (24, 32, 32, 3)), 0, 255).astype(np.float32)  # skin-like, no clipping
    layer = RandomClahe(1.0, seed=2)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    yuv_in, yuv_out = (np.asarray(tf.image.rgb_to_yuv(a / 255.0)) for a in (x, out))
    assert (out >= 0).all() and (out <= 255).all()
    assert yuv_out[..., 0].std() > 1.5 * yuv_in[..., 0].std()  # more contrast in the luminance
    inside = ((out > 0) & (out < 255)).all(axis=-1)  # where equalising pushed no channel past black or white
    assert inside.mean() > 0.9
    np.testing.assert_allclose(yuv_out[inside][:, 1:], yuv_in[inside][:, 1:], atol=2e-3)  # the colour stays
    half = np.asarray(RandomClahe(0.5, seed=2)(x, training=True))
    untouched = (half == x).all(axis=(1, 2, 3))
    assert 0 < untouched.sum() < 24
    names = [layer.name for layer in build_augmenter(seed=5, clahe_rate=0.7).layers]
    assert names.index(next(n for n in names if n.startswith("random_clahe"))) == \
        names.index(next(n for n in names if n.startswith("random_saturation_hue"))) + 1  # right after the colours
    assert not any(name.startswith("random_clahe") for name in (l.name for l in build_augmenter(seed=5).layers))
