"""The shortcut-cue audit: it finds a dermoscope ring and skin-marker ink, leaves dark lesions and purple pigment
inside a lesion alone, and flags a cue that goes with melanoma in training."""
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import ISIC_FIXTURES, synthetic_lesion
from train import audit
from train.augment import INK_RGB
from train.robustness import dermoscope_ring


def test_a_dermoscope_ring_is_found_and_a_dark_lesion_is_not():
    lesion = synthetic_lesion(size=256, seed=3, dark=0.9)
    assert audit.dark_corner_share(lesion) == 0.0
    assert audit.dark_corner_share(dermoscope_ring(lesion)) > 0.9
    assert audit.has_dark_corners(dermoscope_ring(lesion))
    # a near-black lesion filling the middle of the frame, as a large nodular melanoma does
    arr = np.full((450, 600, 3), (220, 170, 150), np.uint8)
    arr[60:390, 80:520] = (15, 10, 10)
    assert not audit.has_dark_corners(Image.fromarray(arr))


def test_real_images_without_a_ring_are_not_flagged():
    paths = sorted(ISIC_FIXTURES.glob("*/*.jpg"))
    assert paths
    assert not any(audit.has_dark_corners(Image.open(p).convert("RGB")) for p in paths)


def _ink_ring(img: Image.Image) -> Image.Image:
    """A surgeon's gentian-violet circle drawn around the lesion."""
    out = img.copy()
    size = out.width
    ImageDraw.Draw(out).ellipse([0.08 * size, 0.08 * size, 0.92 * size, 0.92 * size],
                                outline=tuple(int(c) for c in INK_RGB), width=max(2, size // 64))
    return out


def _purple_pigment(img: Image.Image) -> Image.Image:
    """Blue-violet pigment in the middle of the lesion, as a blue-white veil can look."""
    out = img.copy()
    size = out.width
    ImageDraw.Draw(out).ellipse([0.42 * size, 0.42 * size, 0.58 * size, 0.58 * size], fill=(95, 60, 140))
    return out


def test_skin_marker_ink_is_found_and_purple_pigment_inside_the_lesion_is_not():
    lesion = synthetic_lesion(size=256, seed=3)
    assert audit.ink_share(lesion) == 0.0
    assert audit.ink_share(_ink_ring(lesion)) > 5 * audit.INK_SHARE  # about 4.5% of the thumbnail
    assert audit.has_ink(_ink_ring(lesion))
    pigmented = _purple_pigment(lesion)
    assert audit.ink_share(pigmented) == 0.0  # inside the lesion mask
    assert audit.has_ink(_ink_ring(pigmented))


def test_real_skin_marker_ink_is_found_and_clean_real_images_are_not():
    # ISIC_0012414 has two purple ink marks beside a faint naevus; the other fixtures have none
    paths = sorted(ISIC_FIXTURES.glob("*/*.jpg"))
    inked = {p.name for p in paths if audit.has_ink(Image.open(p))}
    assert inked == {"ISIC_0012414.jpg"}


def test_cue_table_counts_and_fisher_test():
    flags = np.array([1] * 10 + [0] * 90, bool)
    labels = np.array([1] * 8 + [0] * 2 + [1] * 10 + [0] * 80)
    t = audit.cue_table(flags, labels)
    assert (t["with_cue"], t["malignant_with_cue"], t["benign_with_cue"]) == (10, 8, 2)
    assert t["malignant_share_with_cue"] == pytest.approx(0.8)
    assert t["malignant_share_overall"] == pytest.approx(0.18)
    assert t["odds_ratio"] == pytest.approx((8 * 80) / (2 * 10))
    assert t["fisher_p"] < 1e-4
    none = audit.cue_table(np.zeros(5, bool), np.array([0, 1, 0, 1, 0]))
    assert none["with_cue"] == 0 and none["odds_ratio"] is None and none["fisher_p"] == 1.0


def _write(root, split, label, images):
    folder = root / split / label
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        img.save(folder / f"{label}_{i}.png")


@pytest.mark.parametrize("cue, add_cue, remedy", [("dark_corners", dermoscope_ring, "--ring-augment"),
                                                 ("skin_marker_ink", _ink_ring, "--ink-augment")])
def test_a_cue_that_goes_with_melanoma_in_training_is_flagged(tmp_path, capsys, cue, add_cue, remedy):
    lesions = [synthetic_lesion(size=96, seed=s) for s in range(40)]
    _write(tmp_path, "train", "malignant", [add_cue(im) for im in lesions[:8]] + lesions[8:10])
    _write(tmp_path, "train", "benign", [add_cue(lesions[10])] + lesions[11:30])
    for split in ("val", "test"):
        _write(tmp_path, split, "malignant", lesions[30:32])
        _write(tmp_path, split, "benign", lesions[32:36])
    result = audit.main(["--data", str(tmp_path), "--out", str(tmp_path / "out")])
    found = result["cues"][cue]
    assert found["splits"]["train"]["with_cue"] == 9
    assert found["splits"]["train"]["malignant_with_cue"] == 8
    assert found["splits"]["val"]["with_cue"] == 0
    assert found["linked_to_malignant_in_training"]
    other = {name: c for name, c in result["cues"].items() if name != cue}
    assert other and not any(c["splits"]["train"]["with_cue"] for c in other.values())  # each cue only its own
    assert json.loads((tmp_path / "out" / "audit.json").read_text())["cues"][cue]["splits"]["train"]
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and remedy in warnings[0]


def test_a_ring_on_both_classes_alike_is_not_flagged(tmp_path, capsys):
    lesions = [synthetic_lesion(size=96, seed=s) for s in range(30)]
    ringed = [dermoscope_ring(im) if i % 2 else im for i, im in enumerate(lesions)]
    _write(tmp_path, "train", "malignant", ringed[:10])
    _write(tmp_path, "train", "benign", ringed[10:30])
    for split in ("val", "test"):
        _write(tmp_path, split, "malignant", ringed[:2])
        _write(tmp_path, split, "benign", ringed[10:14])
    result = audit.main(["--data", str(tmp_path), "--out", str(tmp_path / "audit")])
    corners = result["cues"]["dark_corners"]
    assert corners["splits"]["train"]["with_cue"] == 15  # the ring is there and is counted, on both classes
    assert not corners["linked_to_malignant_in_training"]
    assert "warning" not in capsys.readouterr().out  # the command's own report says nothing


def test_bad_data_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        audit.main(["--data", str(tmp_path / "missing")])
    assert refused.value.code == 2
    assert capsys.readouterr().err == f"error: The data path does not exist: {tmp_path / 'missing'}\n"


def test_remedy_applied_reads_the_training_option():
    from types import SimpleNamespace

    assert audit.remedy_applied("--ring-augment 0.3", SimpleNamespace(ring_augment=0.3))
    assert not audit.remedy_applied("--ring-augment 0.3", SimpleNamespace(ring_augment=0.0))
