"""Augmentation, on the training path only: Keras layers, inactive at inference.

The paper's four (rotation, flips, zoom, brightness) plus contrast, saturation and hue jitter,
which make the model less dependent on one clinic's camera and lighting. Lesions have no
canonical orientation, so rotations cover the full circle. The flip, turn and zoom are one resampling
(`RandomGeometry`), saturation and hue one layer on TensorFlow's fused kernels (`RandomSaturationHue`): the
augmentation runs on the same CPU cores as the training step, and as five separate Keras layers these took
most of its time. `--colour-jitter SCALE` widens (or narrows) the colour jitter's ranges.

Optionally (`--ink-augment RATE`), surgical skin-marker ink: purple strokes, dots and rings around
the lesion painted on a share of the training images of both classes, so that ink tells the network
nothing about the label (several confidently missed melanomas on the test split carry ink).

Optionally, what other cameras do to an image: `--ring-augment RATE` paints the dark circular field
of view that contact dermoscopes leave around the image, `--blur-augment RATE` blurs a little, as an
image slightly out of focus or of lower resolution looks, `--jpeg-augment RATE` compresses as a camera or
a browser upload does (JPEG quality 30-90). `python -m train.robustness` measures what each costs a bundle.
`--blur-kinds gaussian,motion,median` gives each blurred image one of these kinds (`RandomBlurs`).

Optionally (`--distortion RATE`), a smooth random warp of a share of the images, each pixel moved up to 6% of the side,
after the grid and elastic distortions of the winning ISIC 2020 solution.

Optionally (`--noise-augment RATE`), a camera sensor's Gaussian noise on a share of the images.

Optionally (`--clahe RATE`), contrast-limited adaptive histogram equalisation of the luminance of a share of the images.

Optionally (`--cutout RATE`), occlusion: one random square covered with the image's mean colour (Cutout, DeVries and
Taylor 2017, which the winning ISIC 2020 solution used), so that no one patch of skin or lesion decides the answer.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers
from PIL import Image, ImageDraw, ImageFilter

INK_RGB = (95.0, 45.0, 125.0)  # gentian-violet skin marker, roughly, as it looks on dermoscopy


def ink_masks(size: int, count: int = 64, seed: int = 0) -> np.ndarray:
    """`count` random ink masks in [0, 1], shape (count, size, size, 1): rings, arcs, dots, lines."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, size, size, 1), np.float32)
    for i in range(count):
        canvas = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(canvas)
        width = max(1, int(size * rng.uniform(0.008, 0.03)))
        kind = rng.choice(["ring", "dots", "lines"])
        c = size / 2 + rng.normal(0, size * 0.05, 2)
        r = size * rng.uniform(0.3, 0.5, 2)
        if kind == "ring":  # a circle drawn around the lesion, often only partly in view
            start = rng.uniform(0, 360)
            draw.arc([c[0] - r[0], c[1] - r[1], c[0] + r[0], c[1] + r[1]], start, start + rng.uniform(90, 360),
                     fill=255, width=width)
        elif kind == "dots":  # dots marking the margin
            for angle in rng.uniform(0, 2 * np.pi, rng.integers(3, 9)):
                x, y = c[0] + r[0] * np.cos(angle), c[1] + r[1] * np.sin(angle)
                d = width * rng.uniform(1, 2.5)
                draw.ellipse([x - d, y - d, x + d, y + d], fill=255)
        else:  # short strokes and letters near the edge
            for _ in range(rng.integers(1, 4)):
                points = [tuple(rng.uniform(0, size, 2))]
                for _ in range(rng.integers(1, 4)):
                    step = rng.normal(0, size * 0.15, 2)
                    points.append((points[-1][0] + step[0], points[-1][1] + step[1]))
                draw.line(points, fill=255, width=width, joint="curve")
        canvas = canvas.filter(ImageFilter.GaussianBlur(max(0.5, width / 4)))
        masks[i, ..., 0] = np.asarray(canvas, np.float32) / 255.0
    return masks


class _OnAShare(layers.Layer):
    """Base of the augmentation layers below: active in training only, on a share (`rate`) of the images, its draws
    from its own seed. `augment` does the work; `options` names what `get_config` stores beside rate and seed."""

    options: tuple[str, ...] = ()

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or self.rate <= 0:
            return images
        return self.augment(images)

    def augment(self, images):
        raise NotImplementedError

    def per_image(self, n, low: float = 0.0, high: float = 1.0):
        """One uniform draw per image of a batch of `n`, shaped to broadcast over height, width and channels."""
        return keras.random.uniform((n, 1, 1, 1), low, high, seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        options = {name: list(value) if isinstance(value := getattr(self, name), tuple) else value
                   for name in self.options}
        return {**super().get_config(), "rate": self.rate, "seed": self.seed, **options}


class RandomInk(_OnAShare):
    """Paints a random ink mask from a fixed bank on each image with probability `rate` (training only)."""

    options = ("bank_size",)

    def __init__(self, rate: float = 0.3, bank_size: int = 64, seed: int | None = None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.bank_size = bank_size
        self._bank = None

    def build(self, input_shape):
        self._bank = keras.ops.convert_to_tensor(ink_masks(int(input_shape[1]), self.bank_size, self.seed or 0))

    def augment(self, images):
        n = keras.ops.shape(images)[0]
        index = keras.random.randint((n,), 0, self.bank_size, seed=self.seed_generator)
        masks = keras.ops.take(self._bank, index, axis=0)
        if masks.shape[1] != images.shape[1] or masks.shape[2] != images.shape[2]:
            masks = keras.ops.image.resize(masks, images.shape[1:3])
        apply = keras.ops.cast(self.per_image(n) < self.rate, "float32")
        alpha = self.per_image(n, 0.5, 0.9) * apply
        colour = keras.ops.convert_to_tensor(INK_RGB) + keras.random.uniform((n, 1, 1, 3), -25, 25,
                                                                           seed=self.seed_generator)
        weight = masks * alpha
        return images * (1.0 - weight) + colour * weight


# A contact dermoscope's field of view as drawn here and in the gate's ringed view (`train.gate.random_ring`): radius
# as a share of the side, largest move of the centre as a share of the side, and the outside's top value per channel.
RING_RADIUS = (0.40, 0.58)
RING_SHIFT = 0.04
RING_BLACK = 25.0


class RandomDermoscopeRing(_OnAShare):
    """Darkens everything outside a random centred circle with probability `rate` (training only).

    The radius is 0.40-0.58 of the side (from a circle that cuts deep into the corners to one that only
    clips them), the centre moves a little, the edge is soft over 1-4% of the side, and the outside is
    near-black (0-25 per channel), as a contact dermoscope's field of view looks. With `fill=True` the outside
    takes the mean colour of the skin just inside the circle instead, as the preprocessing's frame fill
    (`model.preprocessing.fill_dark_frame`) paints a real frame, so that a filled frame is seen on both classes.
    """

    options = ("fill",)

    def __init__(self, rate: float = 0.3, seed: int | None = None, fill: bool = False, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.fill = fill

    def augment(self, images):
        n = keras.ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        side = float(min(height, width))
        ys = (keras.ops.arange(height, dtype="float32") + 0.5 - height / 2)[None, :, None, None]
        xs = (keras.ops.arange(width, dtype="float32") + 0.5 - width / 2)[None, None, :, None]
        cy, cx = self.per_image(n, -RING_SHIFT, RING_SHIFT) * side, self.per_image(n, -RING_SHIFT, RING_SHIFT) * side
        radius, softness = self.per_image(n, *RING_RADIUS) * side, self.per_image(n, 0.01, 0.04) * side
        distance = keras.ops.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
        inside = keras.ops.sigmoid((radius - distance) / softness)
        apply = keras.ops.cast(self.per_image(n) < self.rate, "float32")
        outside = (1.0 - inside) * apply
        black = keras.random.uniform((n, 1, 1, 3), 0.0, RING_BLACK, seed=self.seed_generator)
        if self.fill:  # the mean colour of a band 1/32 of the side wide just inside the circle
            band = keras.ops.cast((distance <= radius) & (distance > radius - side / 32), "float32")
            black = keras.ops.sum(images * band, axis=(1, 2), keepdims=True) / keras.ops.maximum(
                keras.ops.sum(band, axis=(1, 2), keepdims=True), 1.0)
        return images * (1.0 - outside) + black * outside


class RandomJpeg(_OnAShare):
    """Compress a share (`rate`) of the images of a batch as JPEG, at a quality drawn uniformly from `quality`.

    Runs in the tf.data training pipeline (TensorFlow's JPEG codec, `tf.image.adjust_jpeg_quality`, one image at a
    time); the pixel range stays 0-255. The default range ends at quality 30, the harshest compression
    `python -m train.robustness` measures.
    """

    options = ("quality",)

    def __init__(self, rate: float = 0.3, quality: tuple[int, int] = (30, 90), seed: int | None = None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.quality = tuple(quality)

    def augment(self, images):
        import tensorflow as tf  # the training pipeline is tf.data; the codec has no backend-neutral op

        n = keras.ops.shape(images)[0]
        apply = keras.random.uniform((n,), 0.0, 1.0, seed=self.seed_generator) < self.rate
        quality = keras.ops.cast(keras.random.uniform((n,), float(self.quality[0]), float(self.quality[1]) + 1.0,
                                                      seed=self.seed_generator), "int32")
        pixels = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)

        def one(args):
            image, q, on = args
            return tf.cond(on, lambda: tf.image.adjust_jpeg_quality(image, q), lambda: image)

        out = tf.map_fn(one, (pixels, quality, apply), fn_output_signature=tf.TensorSpec(images.shape[1:], tf.uint8))
        return tf.where(apply[:, None, None, None], tf.cast(out, images.dtype), images)


class RandomNoise(_OnAShare):
    """Add Gaussian noise to a share (`rate`) of the images (training only), its standard deviation drawn per image
    from `sigma` (0-255 levels; the default 2-10 covers the winning ISIC 2020 solution's 2.2-5.5 and goes on to what
    a small sensor shows in dim light). Every pixel and channel draws its own value; the result is clipped to
    0-255. Gaussian noise in training made ImageNet classifiers more robust to the other common corruptions of
    ImageNet-C, JPEG compression among them (Rusak et al. 2020); `python -m train.robustness` has no noise shift, so
    what it measures of this is transfer."""

    options = ("sigma",)

    def __init__(self, rate: float = 0.5, sigma: tuple[float, float] = (2.0, 10.0), seed: int | None = None,
                 **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.sigma = tuple(sigma)

    def augment(self, images):
        n = keras.ops.shape(images)[0]
        sigma = self.per_image(n, *self.sigma) * keras.ops.cast(self.per_image(n) < self.rate, "float32")
        noise = keras.random.normal(keras.ops.shape(images), seed=self.seed_generator)
        return keras.ops.where(sigma > 0, keras.ops.clip(images + sigma * noise, 0.0, 255.0), images)


class RandomCutout(_OnAShare):
    """Cover one square of each of a share (`rate`) of the images with that image's mean colour (training only).

    The square's side is drawn uniformly from `size` (shares of the image's shorter side; the default ends at 0.375,
    as in the winning ISIC 2020 solution) and its centre anywhere in the image, so the border may clip it (Cutout,
    DeVries and Taylor 2017). The mean colour rather than black: black is what a dermoscope's frame looks like,
    which the ring augmentation and the preprocessing's frame fill deal with.
    """

    options = ("size",)

    def __init__(self, rate: float = 0.5, size: tuple[float, float] = (0.1, 0.375), seed: int | None = None,
                 **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.size = tuple(size)

    def augment(self, images):
        n = keras.ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        half = self.per_image(n, *self.size) * float(min(height, width)) / 2.0
        cy, cx = self.per_image(n, 0.0, float(height)), self.per_image(n, 0.0, float(width))
        ys = (keras.ops.arange(height, dtype="float32") + 0.5)[None, :, None, None]
        xs = (keras.ops.arange(width, dtype="float32") + 0.5)[None, None, :, None]
        inside = keras.ops.cast((keras.ops.abs(ys - cy) <= half) & (keras.ops.abs(xs - cx) <= half), "float32")
        hole = inside * keras.ops.cast(self.per_image(n) < self.rate, "float32")
        mean = keras.ops.mean(images, axis=(1, 2), keepdims=True)
        return images * (1.0 - hole) + mean * hole


class RandomDistortion(_OnAShare):
    """Warp a share (`rate`) of the images by a smooth random displacement field (training only).

    Each pixel moves by up to `magnitude` of the image's shorter side (0.06: about 15 px at 256 px), the field
    interpolated bicubically from `grid` x `grid` random control displacements, so that neighbouring pixels move
    together: a lesion's outline bends while its colours and texture stay. The winning ISIC 2020 solution warped 70%
    of its training images with one of albumentations' optical, grid (5 steps) and elastic distortions, the one
    family of its augmentations this project had not tried; this is a milder grid distortion (a control point moves
    up to about a third of the 5-step grid's cell, where theirs moved up to a whole cell). Bilinear sampling,
    mirrored at the border; an image left alone (or a zero field) comes back unchanged to the bit.
    """

    options = ("grid", "magnitude")

    def __init__(self, rate: float = 0.5, grid: int = 5, magnitude: float = 0.06, seed: int | None = None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.grid, self.magnitude = int(grid), float(magnitude)

    def augment(self, images):
        n = keras.ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        most = self.magnitude * float(min(height, width))
        control = keras.random.uniform((n, self.grid, self.grid, 2), -most, most, seed=self.seed_generator)
        field = keras.ops.image.resize(control, (height, width), interpolation="bicubic")
        field = keras.ops.clip(field, -most, most) * keras.ops.cast(self.per_image(n) < self.rate, "float32")
        return self.warp(images, field[..., 0], field[..., 1])

    @staticmethod
    def warp(images, dy, dx):
        """`images` (n, h, w, c) sampled bilinearly at (y + dy, x + dx) for each pixel (y, x), `dy` and `dx` (n, h, w)
        in pixels of at most the image's side, coordinates past the border mirrored back into it."""
        import tensorflow as tf  # the training pipeline is tf.data; a per-pixel gather has no backend-neutral op

        images = tf.convert_to_tensor(images, tf.float32)
        height, width = images.shape[1], images.shape[2]

        def corners(t, size):  # mirrored into [0, size - 1], then the two neighbours and the weight of the second
            t = (size - 1) - tf.abs((size - 1) - tf.abs(t))
            low = tf.floor(t)
            first = tf.cast(low, tf.int32)
            return first, tf.minimum(first + 1, size - 1), (t - low)[..., None]

        y0, y1, wy = corners(tf.range(height, dtype=tf.float32)[None, :, None] + tf.cast(dy, tf.float32), height)
        x0, x1, wx = corners(tf.range(width, dtype=tf.float32)[None, None, :] + tf.cast(dx, tf.float32), width)

        def at(y, x):
            return tf.gather_nd(images, tf.stack([y, x], axis=-1), batch_dims=1)

        top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx
        bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx
        return top * (1.0 - wy) + bottom * wy


class RandomClahe(_OnAShare):
    """Contrast-limited adaptive histogram equalisation (CLAHE, Zuiderveld 1994) of a share (`rate`) of the images'
    luminance (training only): the image cut into `tiles` x `tiles` tiles, each tile's 256-bin histogram clipped at
    `clip_limit` times its mean bin (drawn per image from the range), the excess spread evenly over the bins, each
    pixel mapped by the cumulative histograms of the four nearest tile centres, mixed bilinearly. OpenCV's
    `createCLAHE`, which albumentations calls, does the same in integers and adds the remainder of the excess to the
    lowest bins, which lifts the darker levels a little where much is clipped. The
    luminance is YUV's Y; U and V stay, so hue and saturation barely move. The winning ISIC 2020 solution applied
    albumentations' CLAHE (clip limit 1-4, 8 x 8 tiles) to 70% of its training images: local contrast that changes
    from one camera, light and skin to the next."""

    options = ("clip_limit", "tiles")

    def __init__(self, rate: float = 0.7, clip_limit: tuple[float, float] = (1.0, 4.0), tiles: int = 8,
                 seed: int | None = None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.clip_limit, self.tiles = tuple(clip_limit), int(tiles)

    def augment(self, images):
        import tensorflow as tf  # a histogram per tile has no backend-neutral op

        images = tf.convert_to_tensor(images, tf.float32)
        n = tf.shape(images)[0]
        yuv = tf.image.rgb_to_yuv(tf.clip_by_value(images, 0.0, 255.0) / 255.0)
        luma = self.equalize(yuv[..., 0], self.per_image(n, *self.clip_limit)[:, 0, 0, 0])
        rgb = tf.image.yuv_to_rgb(tf.concat([luma[..., None], yuv[..., 1:]], axis=-1))
        out = tf.clip_by_value(rgb * 255.0, 0.0, 255.0)
        return tf.where(self.per_image(n) < self.rate, out, images)

    def equalize(self, luma, clip_limit):
        """`luma` (n, h, w) in [0, 1] equalised tile by tile with each image's `clip_limit` (n,); in [0, 1]."""
        import tensorflow as tf

        t, bins = self.tiles, 256
        n, height, width = tf.shape(luma)[0], luma.shape[1], luma.shape[2]
        level = tf.clip_by_value(tf.cast(tf.floor(luma * bins), tf.int32), 0, bins - 1)
        row_tile = tf.range(height) * t // height
        col_tile = tf.range(width) * t // width
        tile = row_tile[:, None] * t + col_tile[None, :]  # (h, w)
        image = tf.range(n)[:, None, None]
        slot = ((image * t * t + tile[None]) * bins + level)  # one bin of one tile of one image
        hist = tf.reshape(tf.math.bincount(tf.reshape(slot, [-1]), minlength=n * t * t * bins,
                                           maxlength=n * t * t * bins, dtype=tf.float32), [n, t * t, bins])
        pixels = tf.reduce_sum(hist, axis=-1, keepdims=True)
        limit = tf.maximum(clip_limit[:, None, None] * pixels / bins, 1.0)
        clipped = tf.minimum(hist, limit)
        clipped += tf.reduce_sum(hist - clipped, axis=-1, keepdims=True) / bins
        lut = tf.reshape(tf.cumsum(clipped, axis=-1) / pixels, [-1])  # each tile's mapping, flattened

        def neighbours(size):  # the two nearest tile centres along one axis, and the second one's weight
            position = (tf.range(size, dtype=tf.float32) + 0.5) * t / size - 0.5
            low = tf.floor(position)
            first = tf.cast(tf.clip_by_value(low, 0, t - 1), tf.int32)
            second = tf.cast(tf.clip_by_value(low + 1, 0, t - 1), tf.int32)
            return first, second, position - low

        y0, y1, wy = neighbours(height)
        x0, x1, wx = neighbours(width)

        def mapped(ty, tx):
            return tf.gather(lut, (image * t * t + (ty[:, None] * t + tx[None, :])[None]) * bins + level)

        wy, wx = wy[None, :, None], wx[None, None, :]
        top = mapped(y0, x0) * (1.0 - wx) + mapped(y0, x1) * wx
        bottom = mapped(y1, x0) * (1.0 - wx) + mapped(y1, x1) * wx
        return top * (1.0 - wy) + bottom * wy


class RandomGeometry(layers.Layer):
    """A random flip, turn and zoom of each image as one resampling (training only).

    Horizontal flip with probability 1/2, a turn through an angle drawn uniformly from the full circle, and a zoom
    drawn uniformly from `zoom` (a share of the side added to 1: negative zooms in), the same for height and width
    unless `width_zoom` gives the width its own range. Applied in that order, as Keras's `RandomFlip`,
    `RandomRotation` and `RandomZoom` layers one after the other would, but composed into a single affine map and
    sampled once (bilinear, mirrored at the border): three passes over every pixel become one, and the image is
    interpolated once instead of twice.
    """

    def __init__(self, zoom: tuple[float, float] = (-0.25, 0.1), width_zoom: tuple[float, float] | None = None,
                 seed: int | None = None, right_angle_share: float = 0.0, unresampled_share: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= right_angle_share <= 1.0:
            raise ValueError(f"right_angle_share must be in [0, 1], not {right_angle_share}")
        if not 0.0 <= unresampled_share <= 1.0:
            raise ValueError(f"unresampled_share must be in [0, 1], not {unresampled_share}")
        self.zoom, self.width_zoom, self.seed = tuple(zoom), tuple(width_zoom) if width_zoom else None, seed
        self.right_angle_share, self.unresampled_share = float(right_angle_share), float(unresampled_share)
        self.seed_generator = keras.random.SeedGenerator(seed)
        # their own streams, so the flips, angles and zooms are those drawn without them
        self.right_angle_seed = keras.random.SeedGenerator(None if seed is None else seed + 1000)
        self.unresampled_seed = keras.random.SeedGenerator(None if seed is None else seed + 2000)

    def draw(self, n):
        """Per image: whether it is flipped (1.0) or not, the angle in radians, and the height and width zooms. With
        `right_angle_share`, that share of the angles is rounded to the nearest quarter turn, which maps the pixel grid
        onto itself: those images keep their own corners instead of mirrored borders, as an upright upload does. With
        `unresampled_share`, that share is also snapped and left unzoomed: a flip and a quarter turn move whole pixels,
        so those images keep their own pixels, unresampled, as an upright upload reaches the network."""
        flip = keras.ops.cast(keras.random.uniform((n,), seed=self.seed_generator) < 0.5, "float32")
        angle = keras.random.uniform((n,), -np.pi, np.pi, seed=self.seed_generator)
        zoom_y = keras.random.uniform((n,), 1.0 + self.zoom[0], 1.0 + self.zoom[1], seed=self.seed_generator)
        zoom_x = zoom_y if self.width_zoom is None else keras.random.uniform(
            (n,), 1.0 + self.width_zoom[0], 1.0 + self.width_zoom[1], seed=self.seed_generator)
        snap = None
        if self.right_angle_share > 0:
            snap = keras.random.uniform((n,), seed=self.right_angle_seed) < self.right_angle_share
        if self.unresampled_share > 0:
            native = keras.random.uniform((n,), seed=self.unresampled_seed) < self.unresampled_share
            zoom_y, zoom_x = keras.ops.where(native, 1.0, zoom_y), keras.ops.where(native, 1.0, zoom_x)
            snap = native if snap is None else keras.ops.logical_or(snap, native)
        if snap is not None:
            angle = keras.ops.where(snap, keras.ops.round(angle / (np.pi / 2)) * (np.pi / 2), angle)
        return flip, angle, zoom_y, zoom_x

    @staticmethod
    def transforms(flip, angle, zoom_y, zoom_x, height: int, width: int):
        """The (n, 8) transforms of `keras.ops.image.affine_transform`: for each output pixel p, the source pixel
        c + F R Z (p - c), with c the image's centre, Z the zoom, R the turn and F the flip (x -> -x about c)."""
        sign = 1.0 - 2.0 * flip  # -1 where flipped
        cos, sin = keras.ops.cos(angle), keras.ops.sin(angle)
        a00, a01 = sign * cos * zoom_x, -sign * sin * zoom_y
        a10, a11 = sin * zoom_x, cos * zoom_y
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        zero = keras.ops.zeros_like(angle)
        return keras.ops.stack([a00, a01, cx - a00 * cx - a01 * cy, a10, a11, cy - a10 * cx - a11 * cy, zero, zero],
                               axis=1)

    def call(self, images, training=None):
        if not training:
            return images
        matrix = self.transforms(*self.draw(keras.ops.shape(images)[0]), images.shape[1], images.shape[2])
        return keras.ops.image.affine_transform(images, matrix, interpolation="bilinear", fill_mode="reflect")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "zoom": list(self.zoom),
                "width_zoom": list(self.width_zoom) if self.width_zoom else None, "seed": self.seed,
                "right_angle_share": self.right_angle_share, "unresampled_share": self.unresampled_share}


class RandomSaturationHue(layers.Layer):
    """Saturation and hue jitter of 0-255 images in one layer (training only).

    Saturation is multiplied by f / (1 - f) with f drawn uniformly from `saturation` (0.5 leaves it alone) and capped
    at full; hue turns by a share of the circle drawn uniformly from +-`hue` / 2. These are the draws of Keras's
    `RandomSaturation(saturation)` and `RandomHue(hue)`, which convert the batch to HSV and back once each (and let
    saturation run past full, into negative channel values, before the hue layer clips them).
    """

    def __init__(self, saturation: tuple[float, float] = (0.35, 0.65), hue: float = 0.04, seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.saturation, self.hue, self.seed = tuple(saturation), hue, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        n = keras.ops.shape(images)[0]
        f = keras.random.uniform((n,), *self.saturation, seed=self.seed_generator)
        turn = keras.random.uniform((n,), -self.hue / 2, self.hue / 2, seed=self.seed_generator)
        return self.adjust(images, f / (1.0 - f), turn)

    @staticmethod
    def adjust(images, saturation, turn):
        """0-255 `images` with each one's saturation multiplied by `saturation` (capped at full) and its hue turned
        by `turn` (a share of the circle), one value of each per image: TensorFlow's fused kernels, image by image,
        half the time of converting the batch to HSV and back."""
        import tensorflow as tf  # the training pipeline is tf.data; the fused kernels have no backend-neutral op

        def one(args):
            image, s, t = args
            return tf.image.adjust_hue(tf.image.adjust_saturation(image, s), t)

        images = tf.clip_by_value(tf.convert_to_tensor(images, tf.float32), 0.0, 255.0) / 255.0
        out = tf.map_fn(one, (images, tf.cast(saturation, tf.float32), tf.cast(turn, tf.float32)),
                        fn_output_signature=tf.float32)
        return tf.clip_by_value(out, 0.0, 1.0) * 255.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "saturation": list(self.saturation), "hue": self.hue, "seed": self.seed}


def slight_blur(rate: float, seed: int) -> layers.Layer:
    """Gaussian blur on a share (`rate`) of the images, sigma 0.3-2 px at 256 px: from barely soft to the robustness
    check's blur and half resolution."""
    return layers.RandomGaussianBlur((rate, rate), kernel_size=7, sigma=(0.3, 2.0), value_range=(0, 255), seed=seed)


BLUR_KINDS = ("gaussian", "motion", "median")


class RandomBlurs(_OnAShare):
    """Blur a share (`rate`) of the images, each with one of `kinds` drawn with equal chances (training only), after
    the winning ISIC 2020 solution's one-of motion, median and Gaussian blurs:

    - gaussian: sigma 0.3-2 px at 256 px, as `slight_blur`;
    - motion: a straight streak 3-9 px long (at 256 px) at any angle, what a hand-held camera that moved draws;
    - median: a 3 x 3 median filter, which flattens the finest texture and keeps edges.

    Borders are mirrored, so no dark frame creeps in. Each kind is computed for the whole batch and each image takes
    its own: simpler than gathering the chosen images, and cheap next to the network's step."""

    options = ("kinds",)

    def __init__(self, rate: float = 0.3, kinds: tuple[str, ...] = BLUR_KINDS, seed: int | None = None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        unknown = [kind for kind in kinds if kind not in BLUR_KINDS]
        if unknown or not kinds:
            raise ValueError(f"blur kinds are some of {', '.join(BLUR_KINDS)}, not {', '.join(unknown) or 'none'}")
        self.kinds = tuple(kinds)
        self.gaussian = slight_blur(1.0, None if seed is None else seed + 1)

    def build(self, input_shape):
        self.gaussian.build(input_shape)
        super().build(input_shape)

    def augment(self, images):
        import tensorflow as tf  # per-image kernels and a median have no backend-neutral ops

        images = tf.convert_to_tensor(images, tf.float32)
        n = tf.shape(images)[0]
        blurred = {"gaussian": lambda: tf.convert_to_tensor(self.gaussian(images, training=True), tf.float32),
                   "motion": lambda: self.motion(images), "median": lambda: self.median(images)}
        kind = tf.cast(tf.floor(self.per_image(n) * len(self.kinds)), tf.int32)
        out = tf.identity(images)
        on = self.per_image(n) < self.rate
        for i, name in enumerate(self.kinds):
            out = tf.where(on & (kind == i), blurred[name](), out)
        return out

    def motion(self, images, size: int = 9):
        """Each image convolved with its own line kernel: `size` x `size` taps, a segment 3-9 px long at 256 px (scaled
        with the image, at most `size`) at a uniform angle, drawn as 15 points spread bilinearly over the taps."""
        import tensorflow as tf

        n, channels = tf.shape(images)[0], images.shape[-1]
        scale = float(min(images.shape[1], images.shape[2])) / 256.0
        length = tf.minimum(self.per_image(n, 3.0, 9.0)[:, 0, 0, 0] * scale, float(size - 1))
        angle = self.per_image(n, 0.0, np.pi)[:, 0, 0, 0]
        t = tf.linspace(-0.5, 0.5, 15)[None, :] * length[:, None]  # (n, 15) along the segment
        ys, xs = t * tf.sin(angle)[:, None], t * tf.cos(angle)[:, None]
        taps = tf.range(size, dtype=tf.float32) - (size - 1) / 2.0
        tent_y = tf.nn.relu(1.0 - tf.abs(taps[None, None, :] - ys[..., None]))  # (n, 15, size)
        tent_x = tf.nn.relu(1.0 - tf.abs(taps[None, None, :] - xs[..., None]))
        kernels = tf.einsum("npi,npj->nij", tent_y, tent_x)
        kernels /= tf.reduce_sum(kernels, axis=(1, 2), keepdims=True)
        pad = size // 2
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")

        def one(args):
            image, kernel = args
            kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
            return tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]

        return tf.map_fn(one, (padded, kernels), fn_output_signature=tf.TensorSpec(images.shape[1:], tf.float32))

    # the 19 compare-exchanges after which the middle of nine values sits in place 4 (Paeth's median-of-9 network)
    MEDIAN_OF_9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
                   (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))

    @classmethod
    def median(cls, images):
        """The 3 x 3 median of each pixel and channel, borders mirrored: a network of minima and maxima over the nine
        shifted images, much faster on a CPU than sorting each pixel's nine values."""
        import tensorflow as tf

        height, width = images.shape[1], images.shape[2]
        padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        p = [padded[:, dy:dy + height, dx:dx + width, :] for dy in range(3) for dx in range(3)]
        for a, b in cls.MEDIAN_OF_9:
            p[a], p[b] = tf.minimum(p[a], p[b]), tf.maximum(p[a], p[b])
        return p[4]


def build_consistency_shift(seed: int) -> keras.Sequential:
    """The camera shift `python -m train --consistency` pairs each training image with: a slight blur on half of
    them, then JPEG compression at quality 30-90 on all; its own seeds, so the clean images' augmentation draws are
    those of a run without it."""
    return keras.Sequential([slight_blur(0.5, seed + 21), RandomJpeg(1.0, seed=seed + 22)], name="consistency_shift")


def colour_jitter(scale: float, seed: int) -> list[layers.Layer]:
    """Brightness, contrast, saturation and hue jitter, their ranges `scale` times these (none at 0): brightness
    +-15%, contrast +-20%, saturation times 0.54-1.86 (f / (1 - f), f in 0.5 +- 0.15) and hue +-0.02 of the circle."""
    if scale == 0:
        return []
    return [layers.RandomBrightness(0.15 * scale, value_range=(0, 255), seed=seed + 3),
            layers.RandomContrast(0.2 * scale, seed=seed + 4),
            RandomSaturationHue((0.5 - 0.15 * scale, 0.5 + 0.15 * scale), 0.04 * scale, seed=seed + 5)]


def build_augmenter(seed: int = 42, ink_rate: float = 0.0, ring_rate: float = 0.0,
                    blur_rate: float = 0.0, ring_fill: bool = False, random_crop: bool = False,
                    jpeg_rate: float = 0.0, cutout_rate: float = 0.0, right_angles: float = 0.0,
                    unresampled: float = 0.0, colour: float = 1.0, distortion: float = 0.0,
                    noise_rate: float = 0.0, blur_kinds: tuple[str, ...] = ("gaussian",),
                    clahe_rate: float = 0.0) -> keras.Sequential:
    """The training images' augmentation; `colour` scales the colour jitter's ranges (`colour_jitter`), `distortion`
    is the share of images warped by `RandomDistortion` and `noise_rate` the share given `RandomNoise`. `blur_kinds`:
    the Gaussian blur alone (`slight_blur`, the default) or one of several kinds per blurred image (`RandomBlurs`);
    `clahe_rate` the share given `RandomClahe`, after the colour jitter."""
    ink = [RandomInk(ink_rate, seed=seed + 7)] if ink_rate > 0 else []
    blur = [] if blur_rate <= 0 else [slight_blur(blur_rate, seed + 9) if tuple(blur_kinds) == ("gaussian",)
                                      else RandomBlurs(blur_rate, tuple(blur_kinds), seed=seed + 9)]
    ring = [RandomDermoscopeRing(ring_rate, seed=seed + 8, fill=ring_fill)] if ring_rate > 0 else []
    jpeg = [RandomJpeg(jpeg_rate, seed=seed + 10)] if jpeg_rate > 0 else []
    cutout = [RandomCutout(cutout_rate, seed=seed + 11)] if cutout_rate > 0 else []
    distort = [RandomDistortion(distortion, seed=seed + 12)] if distortion > 0 else []
    noise = [RandomNoise(noise_rate, seed=seed + 13)] if noise_rate > 0 else []
    clahe = [RandomClahe(clahe_rate, seed=seed + 14)] if clahe_rate > 0 else []
    return keras.Sequential(
        ink + [
            # every flip and turn, and a zoom: one resampling. random_crop: height and width zoomed apart, crops of
            # about 40-100% of the area with the aspect ratio changed (Perez et al. 2018's strongest augmentation on
            # ISIC 2017); else one zoom for both. right_angles: that share of the turns is a quarter turn;
            # unresampled: that share a quarter turn and no zoom, the image's own pixels
            RandomGeometry((-0.35, 0.05), (-0.35, 0.05), seed=seed + 1, right_angle_share=right_angles,
                           unresampled_share=unresampled) if random_crop
            else RandomGeometry((-0.25, 0.1), seed=seed + 1, right_angle_share=right_angles,
                                unresampled_share=unresampled),
        ] + distort + colour_jitter(colour, seed) + clahe + cutout + blur + ring + noise + jpeg,  # CLAHE, like the
        # jitter, is the light and the skin's contrast; the occlusion covers skin, before what the camera does; the ring
        # belongs to the camera's frame, not to the rotated and zoomed skin; the sensor's noise comes on what the optics
        # let through, frame included, and the camera or the upload compresses what it captured
        name="augmentation",
    )
