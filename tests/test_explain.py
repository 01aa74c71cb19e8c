"""Grad-CAM sanity checks on the shipped model (Adebayo et al. 2018)."""
import base64
import io
import re

import keras
import numpy as np
import pytest
from PIL import Image

from model.bundle import DEFAULT_BUNDLE, load_bundle
from model.explain import GradCAM, overlay
from model.preprocessing import PreprocessSpec, preprocess
from tests.conftest import lesion_fixtures


@pytest.fixture(scope="module")
def shipped():
    bundle = load_bundle(DEFAULT_BUNDLE)
    spec = PreprocessSpec.from_dict(bundle.card["preprocessing"])
    images = np.stack([preprocess(p.read_bytes(), spec) for p in lesion_fixtures("malignant") + lesion_fixtures("benign")])
    return bundle, images


@pytest.fixture(scope="module")
def melanomas(shipped) -> np.ndarray:
    """The six fixture melanomas (malignant and cam), preprocessed by the one path."""
    spec = PreprocessSpec.from_dict(shipped[0].card["preprocessing"])
    return np.stack([preprocess(p.read_bytes(), spec) for p in lesion_fixtures("malignant") + lesion_fixtures("cam")])


def correlation(a, b):
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_heatmap_is_not_constant_and_in_range(shipped):
    bundle, images = shipped
    maps = GradCAM(bundle.model).heatmaps(images)
    assert maps.shape[0] == len(images) and maps.shape[1] == maps.shape[2] == 8  # 256 px / 32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    n_malignant = len(lesion_fixtures("malignant"))
    for m in maps[:n_malignant]:  # melanomas: evidence for melanoma somewhere, not everywhere
        assert m.std() > 0.05


def test_heatmap_changes_when_the_image_changes(shipped):
    bundle, images = shipped
    cam = GradCAM(bundle.model)
    a = cam.heatmaps(images[:1])[0]
    moved = cam.heatmaps(np.roll(images[:1], 96, axis=2))[0]  # lesion shifted to the right
    other = cam.heatmaps(images[2:3])[0]
    assert correlation(a, moved) < 0.9
    assert correlation(a, other) < 0.9


def test_heatmap_follows_a_mirrored_image(shipped, melanomas):
    """The map of a mirrored melanoma is the mirrored map: it follows the lesion, not a fixed pattern or noise. The
    network trained on flipped images, so it is nearly equivariant (each fixture's correlation measured 0.81-0.98)."""
    cam = GradCAM(shipped[0].model)
    upright = cam.heatmaps(melanomas)
    mirrored = cam.heatmaps(np.ascontiguousarray(melanomas[:, :, ::-1]))[:, :, ::-1]
    similarities = [correlation(a, b) for a, b in zip(upright, mirrored)]
    assert min(similarities) > 0.6 and np.mean(similarities) > 0.8, similarities


def served_map_matches_grad_cam(png: bytes, jpeg: bytes, bundle) -> None:
    """The PNG the app serves is the shipped model's Grad-CAM of that upload over the upload, not just any PNG."""
    spec = PreprocessSpec.from_dict(bundle.card["preprocessing"])
    image = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    heat = GradCAM(bundle.model).heatmaps(preprocess(jpeg, spec)[None])[0]
    served = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.int16)
    expected = np.asarray(overlay(image, heat), np.int16)
    assert served.shape == expected.shape
    assert np.abs(served - expected).max() <= 3
    assert np.abs(served - np.asarray(overlay(image, np.zeros_like(heat)), np.int16)).mean() > 5  # a map is drawn


def test_heatmap_collapses_when_the_head_is_randomised(shipped, melanomas):
    """Model randomisation: with the trained head replaced by random weights, the map no longer
    resembles the trained model's map."""
    from model.inference import dihedral_views

    bundle, _ = shipped
    views = dihedral_views(melanomas, 4)  # 24 melanoma views
    trained = GradCAM(bundle.model).heatmaps(views)
    similarities = []
    for seed in range(2):
        random_model = keras.models.clone_model(bundle.model)
        random_model.set_weights(bundle.model.get_weights())
        rng = np.random.default_rng(seed)
        for name in ("head_dense", "predictions"):
            layer = random_model.get_layer(name)
            layer.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in layer.get_weights()])
        randomised = GradCAM(random_model).heatmaps(views)
        similarities += [correlation(t, r) for t, r in zip(trained, randomised)]
    assert np.mean(similarities) < 0.5, similarities


def test_overlay_has_the_image_size():
    img = np.full((90, 120, 3), 128, np.uint8)
    heat = np.zeros((8, 8))
    heat[2:4, 2:4] = 1
    out = overlay(img, heat)
    assert out.size == (120, 90)
    arr = np.asarray(out, float)
    assert arr[25:35, 35:45].mean() != pytest.approx(arr[80:, 100:].mean(), abs=5)


def test_api_returns_heatmaps_on_request(client, malignant_jpeg, shipped):
    data = {"image": [(io.BytesIO(malignant_jpeg), "m.jpg")]}
    plain = client.post("/api/v1/predict", data=data, content_type="multipart/form-data").get_json()
    assert "heatmap" not in plain["predictions"][0]
    data = {"image": [(io.BytesIO(malignant_jpeg), "m.jpg")]}
    res = client.post("/api/v1/predict?explain=1", data=data, content_type="multipart/form-data").get_json()
    raw = base64.b64decode(res["predictions"][0]["heatmap"])
    png = Image.open(io.BytesIO(raw))
    assert png.format == "PNG" and png.size == Image.open(io.BytesIO(malignant_jpeg)).size
    served_map_matches_grad_cam(raw, malignant_jpeg, shipped[0])


def test_result_page_shows_the_heatmap(client, malignant_jpeg, shipped):
    data = {"image": [(io.BytesIO(malignant_jpeg), "m.jpg")]}
    html = client.post("/predict", data=data, content_type="multipart/form-data").get_data(as_text=True)
    assert 'id="heatmap"' in html and "Grad-CAM" in html
    found = re.search(r'id="heatmap" src="data:image/png;base64,([^"]+)"', html)
    assert found, "the result page has no heatmap image"
    served_map_matches_grad_cam(base64.b64decode(found.group(1)), malignant_jpeg, shipped[0])
