"""Training-time augmentation: active only in training, shapes kept, ink and dermoscope rings painted where asked."""
import numpy as np
import tensorflow as tf

from train.augment import (INK_RGB, RandomCutout, RandomDermoscopeRing, RandomInk, RandomJpeg, build_augmenter,
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
    crop, plain = build_augmenter(seed=5, random_crop=True).layers[2], build_augmenter(seed=5).layers[2]
    assert crop.name.startswith("random_zoom") and plain.name.startswith("random_zoom")
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
