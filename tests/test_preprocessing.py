"""The one preprocessing path: every mode and format becomes the same kind of RGB array, and
training, evaluation and serving produce the same array for the same file."""
import io
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.preprocessing import ImageError, PreprocessSpec, decode, is_heic, preprocess, shades_of_gray
from tests.conftest import (encode, lesion_fixtures, png_claiming, synthetic_lesion,
                            tiff_with_a_fractional_strip_offset, with_a_mistyped_exif_tag)

SPEC = PreprocessSpec(image_size=64)


def test_output_is_square_uint8_rgb(benign_jpeg):
    arr = preprocess(benign_jpeg, SPEC)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert arr.std() > 5  # a real image, not a blank


def test_non_square_images_are_squashed_not_cropped():
    img = Image.new("RGB", (400, 100), (200, 150, 120))
    img.paste((20, 20, 20), (0, 0, 100, 100))  # a dark block in the left quarter
    arr = preprocess(img, PreprocessSpec(64, colour_constancy="none"))
    assert arr.shape == (64, 64, 3)
    assert arr[:, :14].mean() < 40 and arr[:, 20:].mean() > 120  # the block keeps its left-quarter place


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    base = synthetic_lesion(80)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257))
        assert img.mode.startswith("I;16")
        data = encode(img, "PNG")
    else:
        img = base.convert(mode)
        data = encode(img, "TIFF" if mode == "CMYK" else "PNG")
    out = decode(data)
    assert out.mode == "RGB" and out.size == (80, 80)
    arr = np.asarray(out)
    assert arr.max() > 150 and arr.min() < 100  # contrast survived (16-bit is rescaled, not clipped)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (120, 60), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 60, 60))  # black on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    out = decode(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (60, 120)
    arr = np.asarray(out.convert("L"), dtype=float)
    assert arr[:60].mean() < 60 and arr[60:].mean() > 200  # black is now on top


def test_a_mistyped_exif_tag_elsewhere_does_not_stop_an_image_that_reads():
    img = Image.new("RGB", (120, 60), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 60, 60))
    out = decode(with_a_mistyped_exif_tag(img, orientation=6))  # Pillow's exif_transpose raised struct.error here
    assert out.size == (60, 120)
    arr = np.asarray(out.convert("L"), dtype=float)
    assert arr[:60].mean() < 60 and arr[60:].mean() > 200  # turned as its Orientation says


def test_a_tiff_that_pillow_fails_to_load_with_a_type_error_is_corrupt():
    with pytest.raises(ImageError) as info:
        decode(tiff_with_a_fractional_strip_offset(synthetic_lesion(80)))
    assert info.value.code == "corrupt_image"


def damaged_copies(n: int, seed: int = 0):
    """n seeded damaged copies of one small lesion in every format read here: bytes replaced (mostly in the header), cut
    off or inserted."""
    lesion = synthetic_lesion(96).resize((96, 72))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Cam"
    sources = [encode(lesion, "JPEG", exif=exif.tobytes()), encode(lesion, "JPEG", progressive=True),
               encode(lesion, "PNG"), encode(lesion.convert("RGBA"), "PNG"), encode(lesion.convert("P"), "PNG"),
               encode(lesion, "BMP"), encode(lesion, "TIFF", exif=exif.tobytes()),
               encode(lesion, "TIFF", compression="tiff_lzw"), encode(lesion.convert("CMYK"), "TIFF"),
               encode(lesion, "WEBP", exif=exif.tobytes()), encode(lesion.convert("P"), "GIF")]
    rng = random.Random(seed)
    for _ in range(n):
        data = bytearray(rng.choice(sources))
        damage = rng.choice(["header", "header", "bytes", "cut", "insert"])
        if damage in ("header", "bytes"):  # the header: the first 256 bytes, where TIFF and EXIF keep their tags
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(256 if damage == "header" else len(data))] = rng.randrange(256)
        elif damage == "cut":
            data = data[: rng.randrange(1, len(data))]
        else:
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        yield bytes(data)


def test_damaged_files_of_every_format_become_an_image_or_an_image_error():
    """Whatever Pillow raises on a damaged file is an ImageError with its sentence (a 400 in the app, a named
    unreadable image in training), never another exception (a 500). Before decode caught them, a TypeError from
    TIFF headers and a struct.error from EXIF blocks got through."""
    outcomes = {"image": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the damage it reads past
        for data in damaged_copies(3000):
            try:
                arr = preprocess(data, SPEC)
            except ImageError as exc:
                assert exc.message.endswith(".")
                outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
            else:
                assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
                outcomes["image"] += 1
    assert outcomes["image"] > 500 and outcomes["corrupt_image"] > 500, outcomes  # both kinds of outcome were met


def test_shades_of_gray_removes_a_colour_cast():
    rng = np.random.default_rng(0)
    scene = rng.uniform(40, 200, (32, 32, 3))
    cast = scene * np.array([1.0, 0.8, 0.6])
    a, b = shades_of_gray(scene), shades_of_gray(cast)

    def chromaticity(x):
        return x / x.mean()

    # the cast changed the colour balance; after normalisation the two images have (nearly) the same one
    before = np.abs(chromaticity(scene) - chromaticity(cast)).mean()
    after = np.abs(chromaticity(a) - chromaticity(b)).mean()
    assert after < 0.05 * before


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", "empty_file"),
        (b"just some text, not an image\n" * 10, "not_an_image"),
        (b"%PDF-1.4\n1 0 obj<<>>endobj\n", "not_an_image"),
    ],
)
def test_bad_bytes_raise_image_error(data, code):
    with pytest.raises(ImageError) as info:
        decode(data)
    assert info.value.code == code and info.value.message.endswith(".")


def test_a_file_that_cannot_be_opened_is_named_so_not_called_damaged(tmp_path):
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "moved_away.jpg")
    for path, why in ((tmp_path / "gone.jpg", "No such file or directory"), (tmp_path, "Is a directory")):
        with pytest.raises(ImageError) as err:
            decode(path)
        assert (err.value.code, err.value.message) == ("unreadable_file", f"The file could not be read ({why}).")


def test_truncated_jpeg_is_corrupt(benign_jpeg):
    with pytest.raises(ImageError) as info:
        decode(benign_jpeg[: len(benign_jpeg) // 2])
    assert info.value.code == "corrupt_image"


def test_unsupported_format_is_named():
    with pytest.raises(ImageError) as info:
        decode(encode(synthetic_lesion(64), "ICO"))
    assert info.value.code == "unsupported_format" and "ICO" in info.value.message


HEIC = Path(__file__).parent / "fixtures" / "formats" / "lesion.heic"


@pytest.mark.parametrize("major", [b"heic", b"mif1"])  # mif1 as some Android phones write it
@pytest.mark.parametrize("as_path", [False, True])
def test_heic_photo_is_refused_with_how_to_export_it(tmp_path, major, as_path):
    data = HEIC.read_bytes()
    data = data[:8] + major + data[12:]
    source = tmp_path / "photo.heic"
    source.write_bytes(data)
    with pytest.raises(ImageError) as info:
        decode(source if as_path else data)
    assert info.value.code == "unsupported_format"
    assert info.value.message.startswith("This is a HEIC photo") and "Export it as JPEG" in info.value.message


def test_dicom_file_is_refused_with_how_to_export_it():
    # the preamble, the DICM prefix and the first element (group length) of a DICOM Part 10 file
    dicom = bytes(128) + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\xc8\x00\x00\x00" + bytes(400)
    with pytest.raises(ImageError) as info:
        decode(dicom)
    assert info.value.code == "unsupported_format" and info.value.message.startswith("This is a DICOM file")
    with pytest.raises(ImageError) as info:  # 128 zero bytes and no prefix: not DICOM, not an image
        decode(bytes(128) + b"NOPE" + bytes(400))
    assert info.value.code == "not_an_image"


def test_only_hevc_brands_are_taken_for_heic():
    assert is_heic(HEIC.read_bytes()[:64])
    assert not is_heic(encode(synthetic_lesion(64), "JPEG")[:64])
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf"  # AV1 in the same container
    assert not is_heic(avif) and not is_heic(avif.replace(b"ftypavif", b"ftypmif1"))
    assert not is_heic(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom")  # a video


def test_animation_is_refused():
    frames = [synthetic_lesion(64, seed=i) for i in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError) as info:
        decode(data)
    assert info.value.code == "multi_frame"


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "PNG", "WEBP"])
def test_a_stack_of_frames_is_refused_in_every_format_that_holds_one(fmt):
    """Found out by looking for a second frame (`is_animated`): counting them all took 13 s for 40,000 TIFF frames."""
    frames = [synthetic_lesion(64, seed=i) for i in range(3)]
    with pytest.raises(ImageError) as info:
        decode(encode(frames[0], fmt, save_all=True, append_images=frames[1:]))
    assert info.value.code == "multi_frame"


def test_a_jpeg_of_more_scans_than_a_photograph_has_is_refused_before_it_is_decoded():
    """A progressive JPEG's 95-byte scan repeated 3,000 times (1.4 MB) held a server thread for 20 s as it decoded;
    a progressive photograph has about ten scans, and is decoded."""
    progressive = encode(synthetic_lesion(96), "JPEG", progressive=True, quality=90)
    assert 5 <= progressive.count(b"\xff\xda") <= 20 and decode(progressive).size == (96, 96)
    last_scan = progressive[progressive.rindex(b"\xff\xda"):-2]
    repeated = progressive[:-2] + last_scan * 150 + b"\xff\xd9"
    with pytest.raises(ImageError) as info:
        decode(repeated)
    assert info.value.code == "corrupt_image" and info.value.message.startswith("The JPEG file holds 1")
    assert "scans, where a photograph has a few; it is not decoded." in info.value.message


def test_tiny_image_is_refused():
    with pytest.raises(ImageError) as info:
        decode(encode(Image.new("RGB", (10, 10)), "PNG"))
    assert info.value.code == "too_small"


def test_decompression_bomb_is_refused_before_decoding(bomb_png):
    with pytest.raises(ImageError) as info:
        decode(bomb_png)
    assert info.value.code == "too_many_pixels"


def test_the_projects_own_pixel_limit_refuses_what_pillow_would_decode():
    """72 megapixels: above the project's 64, below the 89 at which Pillow itself warns, so only our check stands
    between such an upload and a 216 MB decode; 8000 x 8000 (64 MP exactly) is not refused for its size."""
    from model.preprocessing import MAX_PIXELS

    assert 9000 * 8000 > MAX_PIXELS and 9000 * 8000 < Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError) as info:
        decode(png_claiming(9000, 8000))
    assert info.value.code == "too_many_pixels" and "9000x8000" in info.value.message
    with pytest.raises(ImageError) as info:
        decode(png_claiming(8000, 8000))  # its size passes; its truncated data does not
    assert info.value.code != "too_many_pixels"


def test_training_evaluation_and_serving_see_the_same_array(tmp_path, app, monkeypatch):
    """One file through the three consumers: train.data.load_images (training and evaluation), preprocess on the
    bytes, and what the web service's own judge() hands to the network's forward pass (serving), caught there."""
    from train.data import load_images
    from web.service import EXTENSION_KEY

    service = app.extensions[EXTENSION_KEY]
    spec = service.predictor.spec
    forward = service.predictor._forward
    seen = []

    def spy(batch):  # the real forward pass, which also keeps what it was given
        seen.append(np.array(batch))
        return forward(batch)

    monkeypatch.setattr(service.predictor, "_forward", spy)
    for path in lesion_fixtures("benign")[:1] + lesion_fixtures("malignant")[:1]:
        training = load_images([path], spec)[0]
        seen.clear()
        [judged] = service.judge([(path.name, path.read_bytes())])
        assert len(seen) == 1 and seen[0].shape[0] == 1
        np.testing.assert_array_equal(training, seen[0][0])
        np.testing.assert_array_equal(training, preprocess(path.read_bytes(), spec))
        assert judged.label in ("benign", "malignant")


def test_large_jpeg_draft_decoding_stays_close_to_full_decoding(malignant_jpeg):
    big = Image.open(io.BytesIO(malignant_jpeg)).resize((1024, 768), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=95)
    spec = PreprocessSpec(256)
    fast = preprocess(data, spec).astype(float)
    full = preprocess(Image.open(io.BytesIO(data)).convert("RGB"), spec).astype(float)
    assert np.abs(fast - full).mean() < 3.0


def _framed(size=256, radius=0.5, seed=3):
    """A synthetic lesion seen through a contact dermoscope: black outside a centred circle."""
    arr = np.asarray(synthetic_lesion(size, seed=seed, dark=0.9)).copy()
    yy, xx = np.mgrid[:size, :size] + 0.5 - size / 2
    arr[np.hypot(yy, xx) > radius * size] = (8, 6, 6)
    return arr


def test_frame_fill_paints_a_dermoscope_frame_in_the_skin_colour_and_keeps_the_lesion():
    from model.preprocessing import dark_corner_share, fill_dark_frame

    plain = np.asarray(synthetic_lesion(256, seed=3, dark=0.9))
    framed = _framed()
    assert dark_corner_share(framed) > 0.9 and dark_corner_share(plain) == 0.0
    filled = fill_dark_frame(framed)
    assert dark_corner_share(filled) == 0.0
    skin = np.array([225, 180, 160])
    assert np.abs(filled[0, 0].astype(int) - skin).max() < 30  # the corner now looks like the skin near it
    centre = slice(80, 176)  # the dark lesion, inside the frame, is left as it was
    assert np.array_equal(filled[centre, centre], framed[centre, centre])
    assert np.array_equal(fill_dark_frame(plain), plain)  # no frame: the same pixels


def test_frame_fill_leaves_a_dark_lesion_at_the_edge_alone():
    from model.preprocessing import fill_dark_frame

    arr = np.full((256, 256, 3), (220, 170, 150), np.uint8)
    arr[100:160, 0:70] = (12, 8, 8)  # a near-black lesion cut by the left edge; the corners are skin
    assert np.array_equal(fill_dark_frame(arr), arr)


def test_frame_fill_is_part_of_the_spec_and_off_for_older_cards():
    spec = PreprocessSpec(64, frame_fill=True)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    old = PreprocessSpec(64).to_dict()
    del old["frame_fill"]
    assert PreprocessSpec.from_dict(old).frame_fill is False
    framed = Image.fromarray(_framed(128))
    with_fill = preprocess(framed, PreprocessSpec(64, colour_constancy="none", frame_fill=True))
    without = preprocess(framed, PreprocessSpec(64, colour_constancy="none"))
    assert without[0, 0].max() < 40 and with_fill[0, 0].min() > 120


def _hairy_lesion():
    """Skin with a little noise, a dark lesion holding darker dots (globules) and a meshed network, and one
    hair: a 3-pixel dark strand across the whole image, clear of the lesion."""
    rng = np.random.default_rng(0)
    arr = np.clip(rng.normal((215, 165, 145), 3, (256, 256, 3)), 0, 255)
    y, x = np.mgrid[:256, :256]
    lesion = (y - 128) ** 2 + (x - 128) ** 2 < 60**2
    arr[lesion] = (140, 90, 70)
    network = lesion & (((y % 12) < 2) | ((x % 12) < 2))  # pigment network: short crossing lines, a mesh
    arr[network] = (90, 55, 40)
    for cy, cx in ((110, 110), (150, 140), (120, 150)):
        arr[(y - cy) ** 2 + (x - cx) ** 2 <= 9] = (60, 35, 30)  # globules
    hair = np.abs(y - (0.3 * x + 10)) <= 1.5  # clear of the lesion: one touching its network joins it (README)
    arr[hair] = (50, 40, 35)
    return arr.round().astype(np.uint8), hair, lesion


def test_hair_removal_paints_a_hair_in_the_skin_colour_and_keeps_the_lesion_structure():
    from scipy import ndimage

    from model.preprocessing import hair_mask, remove_hair

    arr, hair, lesion = _hairy_lesion()
    mask = hair_mask(arr)
    assert mask[hair & ~lesion].mean() > 0.95  # the strand on the skin is found...
    assert not mask[lesion & ~hair].any()  # ...and no dot, globule or network line of the lesion is
    out = remove_hair(arr)
    on_skin = hair & ~lesion
    skin = np.array((215, 165, 145))
    assert np.abs(out[on_skin].astype(int) - skin).max(axis=1).mean() < 8  # painted in the skin's colour
    assert np.abs(arr[on_skin].astype(int) - skin).max(axis=1).mean() > 150
    away = ~ndimage.binary_dilation(mask, iterations=2)
    assert np.array_equal(out[away], arr[away])  # nothing else moves


def test_hair_removal_leaves_a_hairless_image_and_short_strokes_alone():
    from model.preprocessing import remove_hair

    arr, hair, _ = _hairy_lesion()
    plain = arr.copy()
    plain[hair] = (215, 165, 145)
    assert np.array_equal(remove_hair(plain), plain)
    short = plain.copy()
    short[40:43, 20:40] = (50, 40, 35)  # a dark stroke 20 px long, under 1/10 of the side
    assert np.array_equal(remove_hair(short), short)


def test_hair_removal_is_part_of_the_spec_and_off_for_older_cards():
    spec = PreprocessSpec(256, colour_constancy="none", hair_removal=True)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    old = PreprocessSpec(256).to_dict()
    del old["hair_removal"]
    assert PreprocessSpec.from_dict(old).hair_removal is False
    arr, hair, lesion = _hairy_lesion()
    image = Image.fromarray(arr)
    removed = preprocess(image, spec)
    kept = preprocess(image, PreprocessSpec(256, colour_constancy="none"))
    assert np.array_equal(kept, arr)
    assert removed[hair & ~lesion].mean() > kept[hair & ~lesion].mean() + 100
