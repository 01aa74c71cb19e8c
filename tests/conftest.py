import io
import os
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import model  # noqa: E402,F401  (sets TensorFlow's CPU options before keras loads it)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from model.bundle import DEFAULT_BUNDLE  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ISIC_FIXTURES = FIXTURES / "isic"
SHARED_DATA = ROOT.parent / "shared" / "data" / "isic2017"
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights"

requires_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data/isic2017")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


def lesion_fixtures(label: str) -> list[Path]:
    return sorted((ISIC_FIXTURES / label).glob("*.jpg"))


@pytest.fixture(scope="session")
def malignant_jpeg() -> bytes:
    return lesion_fixtures("malignant")[0].read_bytes()


@pytest.fixture(scope="session")
def benign_jpeg() -> bytes:
    return lesion_fixtures("benign")[0].read_bytes()


@pytest.fixture(scope="session")
def app():
    from app import create_app

    return create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, "MODEL_PATH": str(DEFAULT_BUNDLE)})


@pytest.fixture
def client(app):
    return app.test_client()


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def synthetic_lesion(size: int = 96, seed: int = 0, dark: float = 0.5) -> Image.Image:
    """A skin-coloured square with a dark, irregular blob: enough for plumbing tests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    r = np.hypot(yy - 0.5 - rng.uniform(-0.1, 0.1), xx - 0.5 - rng.uniform(-0.1, 0.1))
    blob = (r < 0.25 + 0.05 * np.sin(8 * np.arctan2(yy - 0.5, xx - 0.5) + seed)).astype(np.float32)
    skin = np.array([225, 180, 160], np.float32)
    lesion = np.array([110, 70, 50], np.float32) * (1.0 - dark) + 20 * dark
    arr = skin * (1 - blob[..., None]) + lesion * blob[..., None] + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def lite0_with_batch_statistics(image_size: int = 64, seed: int = 7) -> keras.Model:
    """An untrained EfficientNet-Lite0 whose outputs differ from image to image. Freshly built, every image scores
    alike (BatchNormalization's initial statistics let the signal die out through the blocks), so no calibration,
    threshold or ranking check could tell a right formula from a wrong one; here each BatchNormalization's
    statistics are one batch of synthetic lesions', set by one training-mode pass at momentum 0."""
    from model.architecture import build_model

    keras.utils.set_random_seed(seed)
    net = build_model("efficientnet_lite0", weights="none", image_size=image_size)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable, layer.momentum = True, 0.0
    batch = np.stack([np.asarray(synthetic_lesion(image_size, 1000 + i, dark=0.1 + 0.8 * (i % 2))) for i in range(16)])
    net(batch.astype("float32"), training=True)
    return net


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """`--weights` for the 64-px training runs of the tests: lite0_with_batch_statistics's backbone, keyed
    `<layer>/<variable>` as ../shared/weights is. Training then keeps these statistics (BatchNormalization frozen
    for pretrained weights), so the trained network's validation and test scores spread out."""
    from model.architecture import backbone_layers

    net = lite0_with_batch_statistics()
    path = tmp_path_factory.mktemp("weights") / "tiny_lite0_backbone.npz"
    np.savez(path, **{f"{layer.name}/{v.name}": np.asarray(v) for layer in backbone_layers(net)
                      for v in layer.weights})
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """DIR/{train,val,test}/{benign,malignant}/*.png with synthetic images; malignant blobs are darker."""
    root = tmp_path_factory.mktemp("tiny_data")
    seed = 0
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        for label, dark in (("benign", 0.1), ("malignant", 0.9)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for _ in range(n):
                synthetic_lesion(64, seed, dark).save(folder / f"img_{seed:03d}.png")
                seed += 1
    return root


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (its data would not fill them)."""
    import struct
    import zlib

    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def with_a_mistyped_exif_tag(img: Image.Image, orientation: int = 6) -> bytes:
    """A JPEG of img whose EXIF says "turn me" (Orientation) and also holds a text where a number belongs (ImageLength
    tagged ASCII, as one flipped byte makes of a camera's Make tag): the pixels and the orientation read fine; Pillow's
    `exif_transpose` fails on writing such a block back (struct.error)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Cam"  # Make, ASCII
    raw = exif.tobytes()  # big-endian: tag 0x010F, type 2 (ASCII)
    assert raw.count(b"\x01\x0f\x00\x02") == 1
    return encode(img, "JPEG", quality=95, exif=raw.replace(b"\x01\x0f\x00\x02", b"\x01\x01\x00\x02"))


def tiff_with_a_fractional_strip_offset(img: Image.Image) -> bytes:
    """A TIFF of img whose StripOffsets tag is typed as a fraction: Pillow raises TypeError loading it."""
    data = encode(img, "TIFF")  # little-endian: tag 273 (StripOffsets), type 4 (LONG)
    assert data.count(b"\x11\x01\x04\x00") == 1
    return data.replace(b"\x11\x01\x04\x00", b"\x11\x01\x0b\x00")  # type 11: FLOAT


@pytest.fixture(scope="session")
def bomb_png() -> bytes:
    """A tiny PNG whose header claims 40000 x 40000 pixels (Pillow's own bomb check refuses it too)."""
    return png_claiming(40000, 40000)


@pytest.fixture
def keras_offline(monkeypatch):
    """Keras' download of EfficientNetB0's ImageNet weights fails as it does without internet (and nothing is fetched,
    whatever this machine's Keras cache holds)."""
    from keras.src.applications import efficientnet

    def no_internet(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")
    monkeypatch.setattr(efficientnet.file_utils, "get_file", no_internet)


# Module-scoped tiny training runs that several tests share. pytest.ini's `--dist loadgroup` sends the tests of each to
# one pytest-xdist worker, which trains it once; plain `load` would train it once on each worker.
SHARED_RUNS = ("trained", "ranking_run", "focal_run", "consistency_run")


@pytest.hookimpl(wrapper=True)  # marks before pytest-xdist's own hook reads them, the check after
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in SHARED_RUNS:
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))
    result = yield
    # pytest-xdist writes each test's group into its id ("...@trained"); where it cannot (pytest 9.2 with xdist
    # 3.8.0, pytest-xdist#1386) the tests pass, but each worker trains every shared run
    if config.getoption("loadgroup", False) and any(
            item.get_closest_marker("xdist_group") and "@" not in item.nodeid for item in items):
        warnings.warn(pytest.PytestWarning("--dist loadgroup did not group the tests that share a training run "
                                           "(pytest-xdist#1386?): each worker trains them; the suite takes longer"))
    return result


def full_images_alive_when_judged(monkeypatch, predictor) -> tuple[list, list]:
    """Watch `predictor`: every image its `decode` returns (weakly), and at each `assess` how many of them are still
    alive. Returns (the decoded images' weak references, the counts at each assess)."""
    import gc
    import weakref

    decoded, alive_at_assess = [], []
    decode, assess = predictor.decode, predictor.assess

    def tracked_decode(data):
        image = decode(data)
        decoded.append(weakref.ref(image))
        return image

    def watched_assess(images):
        gc.collect()
        alive_at_assess.append(sum(ref() is not None for ref in decoded))
        return assess(images)

    monkeypatch.setattr(predictor, "decode", tracked_decode)
    monkeypatch.setattr(predictor, "assess", watched_assess)
    return decoded, alive_at_assess
