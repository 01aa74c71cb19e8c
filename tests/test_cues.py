"""Cautions beside a verdict: dark corners and skin-marker ink, with the card's training counts."""
import numpy as np
from PIL import Image, ImageDraw
from skimage import color

from conftest import synthetic_lesion
from model import cues
from test_audit import _ink_ring, _purple_pigment
from train.robustness import dermoscope_ring

CARD = {"data": {"counts": {"train": {"benign": 1626, "malignant": 374}},
                 "shortcut_cues": {"dark_corners": {"train_images_with_cue": 59},
                                   "skin_marker_ink": {"train_images_with_cue": 66}}}}


def test_purple_pixels_match_the_hue_saturation_and_value_of_rgb2hsv_exactly():
    """purple_pixels skips rgb2hsv for speed: it must decide every pixel as rgb2hsv's numbers do, ties between
    channels and the limits' edges included."""
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, (300_000, 3))
    levels[::4, 1] = levels[::4, 2]  # green equal to blue
    levels[1::4, 0] = levels[1::4, 2]  # red equal to blue
    levels[2::4, 1] = levels[2::4, 0]  # green equal to red
    rgb = levels.astype(np.uint8)[None]
    hue, saturation, value = np.moveaxis(color.rgb2hsv(rgb / 255.0), -1, 0)
    expected = ((hue > cues.INK_HUE[0]) & (hue < cues.INK_HUE[1]) & (saturation > cues.INK_MIN_SATURATION)
                & (value > cues.INK_VALUE[0]) & (value < cues.INK_VALUE[1]))
    assert expected.sum() > 10_000
    np.testing.assert_array_equal(cues.purple_pixels(rgb), expected)


def test_cautions_name_the_cue_and_the_training_counts():
    lesion = synthetic_lesion(size=256, seed=3)
    assert cues.cautions(lesion, CARD) == []
    assert cues.cautions(_purple_pigment(lesion), CARD) == []  # purple inside the lesion is not ink
    (ink,) = cues.cautions(_ink_ring(lesion), CARD)
    assert ink["code"] == "skin_marker_ink" and "Only 66 of the 2,000 images" in ink["message"]
    (ring,) = cues.cautions(dermoscope_ring(lesion), CARD)
    assert ring["code"] == "dark_corners" and "Only 59 of the 2,000 images" in ring["message"]
    both = cues.cautions(dermoscope_ring(_ink_ring(lesion)), CARD)
    assert [c["code"] for c in both] == ["dark_corners", "skin_marker_ink"]


def test_a_cue_common_in_training_gets_no_caution_and_an_old_card_gets_the_sentence_without_numbers():
    lesion = dermoscope_ring(synthetic_lesion(size=256, seed=3))
    common = {"data": {"counts": CARD["data"]["counts"],
                       "shortcut_cues": {"dark_corners": {"train_images_with_cue": 200}}}}
    assert cues.cautions(lesion, common) == []  # 10% of the training split
    for card in ({}, None, {"data": {"counts": CARD["data"]["counts"]}}):
        (ring,) = cues.cautions(lesion, card)
        assert "Few of the images the model was trained on were taken like this" in ring["message"]
        assert "{" not in ring["message"]


def test_the_lesion_mask_is_computed_only_when_enough_pixels_are_purple(monkeypatch):
    calls = []
    monkeypatch.setattr(cues, "lesion_mask", lambda rgb: calls.append(1) or np.zeros(rgb.shape[:2], bool))
    skin = Image.fromarray(np.full((256, 256, 3), (205, 150, 120), np.uint8))
    assert cues.ink_share(skin) == 0.0 and not cues.has_ink(skin) and calls == []
    assert cues.ink_share(_ink_ring(skin)) > cues.INK_SHARE and calls == [1]
    assert cues.has_ink(_ink_ring(skin)) and calls == [1, 1]
    dot = skin.copy()  # purple on 0.2% of the thumbnail: under INK_SHARE wherever the lesion is
    ImageDraw.Draw(dot).rectangle([100, 100, 110, 110], fill=(120, 60, 160))
    assert 0 < cues.purple_pixels(np.asarray(dot.resize((128, 128)))).mean() < cues.INK_SHARE
    assert not cues.has_ink(dot) and calls == [1, 1]
