"""The one preprocessing path: bytes or a file in, the network's uint8 input array out.

Training, evaluation and serving all call :func:`preprocess`, so the model sees the same
pixels whichever way an image reaches it. EfficientNet normalises inside the network, so the
array returned here is raw RGB in [0, 255]: never normalise it again outside the model.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

# Formats Pillow decodes safely and that a camera, a dermatoscope or an export can produce.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "MPO")
# Upper limit on decoded pixels (a 50-megapixel dermatoscope frame fits; decompression bombs do not).
MAX_PIXELS = 64_000_000
MIN_SIDE = 32
RESAMPLE = Image.Resampling.BILINEAR
# ISO base media file brands of HEVC-coded HEIF images and sequences: the iPhone camera's HEIC photos among them.
HEVC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
DICOM_MESSAGE = ("This is a DICOM file, which is not read here. Export the image from the viewer or the archive as "
                 "JPEG or PNG and upload that file.")
HEIC_MESSAGE = ("This is a HEIC photo (the format iPhones and some other phones save by default), which is not read "
                "here. Export it as JPEG and upload that file: on a Mac, open it in Preview and choose File > Export, "
                "Format JPEG; on an iPhone, Settings > Camera > Formats > Most Compatible saves new photos as JPEG.")


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}  # what a folder of images is read for
HEIC_SUFFIXES = {".heic", ".heif"}  # phone photos Pillow cannot decode (`is_heic`): named, not skipped in silence


def is_hidden(name: str) -> bool:
    """A name an operating system keeps its own data under: dot files and folders (macOS's `._IMG.jpg` resource forks,
    which carry an image's suffix but are no image) and `__MACOSX`, where macOS's zip files keep them."""
    return name.startswith(".") or name == "__MACOSX"


def image_files_under(folder: str | os.PathLike) -> list[Path]:
    """Every file under `folder`, at any depth, with an image or HEIC suffix (any case), sorted; hidden files and
    folders (`is_hidden`) left out. Linked folders are followed (each real folder read once, so a link back up ends),
    and a link to a file that is not there is listed, so that reading it names it rather than a class quietly
    shrinking; anything else that is not a plain file (a pipe, a device) is left out."""
    wanted = IMAGE_SUFFIXES | HEIC_SUFFIXES
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        for name in files:
            path = os.path.join(root, name)
            if (not is_hidden(name) and os.path.splitext(name)[1].lower() in wanted
                    and (os.path.isfile(path) or not os.path.exists(path))):
                found.append(Path(path))
    return sorted(found)


class ImageError(ValueError):
    """An input that cannot become a model input. `code` is stable, the message is for a person."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that decides the model's input; stored in the model card."""

    image_size: int = 256
    colour_constancy: str = "shades_of_gray"  # or "none"
    shades_of_gray_p: int = 6
    frame_fill: bool = False  # paint a contact dermoscope's black frame in the colour of the skin next to it
    hair_removal: bool = False  # paint long, thin dark strands (hairs, ruler lines) in the colour around them

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "colour_constancy": self.colour_constancy,
            "shades_of_gray_p": self.shades_of_gray_p,
            "frame_fill": self.frame_fill,
            "hair_removal": self.hair_removal,
            "resample": "bilinear",
            "aspect": "squash",
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(
            image_size=int(d["image_size"]),
            colour_constancy=d.get("colour_constancy", "none"),
            shades_of_gray_p=int(d.get("shades_of_gray_p", 6)),
            frame_fill=bool(d.get("frame_fill", False)),
            hair_removal=bool(d.get("hair_removal", False)),
        )


def is_heic(head: bytes) -> bool:
    """Whether the first bytes of a file are an HEVC-coded HEIF image (HEIC): an ISO base media `ftyp` box whose
    major or compatible brands name HEVC. AVIF (the same container around AV1, brands `avif` and `mif1`) is not."""
    if len(head) < 16 or head[4:8] != b"ftyp":
        return False
    size = int.from_bytes(head[:4], "big")
    brands = {head[8:12]} | {head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    return bool(brands & HEVC_BRANDS)


def decode(data: bytes | str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Decode an image safely and return it as an upright RGB PIL image.

    Raises ImageError with a stable code for anything that is not a single, sane image.
    `draft_size` lets large JPEGs decode at a reduced scale that is still at least that size.
    """
    if isinstance(data, (bytes, bytearray)):
        if len(data) == 0:
            raise ImageError("empty_file", "The file is empty.")
        source = io.BytesIO(data)
        head = bytes(data[:132])
    else:
        source = data
        try:
            with open(data, "rb") as f:
                head = f.read(132)
        except OSError as exc:  # not there (a link to nothing, a file moved away), a folder, not allowed
            raise ImageError("unreadable_file", f"The file could not be read ({exc.strerror or exc}).") from None
    if is_heic(head):
        # Pillow has no HEVC decoder; its AVIF reader would take some of these for damaged files.
        raise ImageError("unsupported_format", HEIC_MESSAGE)
    if head[128:132] == b"DICM":  # a DICOM file's 128-byte preamble and prefix, as a PACS or a dermatoscope exports
        raise ImageError("unsupported_format", DICOM_MESSAGE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            if img.format not in ALLOWED_FORMATS:
                raise ImageError(
                    "unsupported_format",
                    f"{img.format} images are not supported. Upload a JPEG, PNG, BMP, TIFF or WebP file.",
                )
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    "too_many_pixels",
                    f"The image is {width}x{height} pixels, more than the {MAX_PIXELS // 1_000_000} megapixels "
                    "accepted. Upload a smaller image.",
                )
            # is_animated looks for a second frame only: n_frames walked all of them, and a 4 MB TIFF of 40,000
            # frames took 13 s before it was refused
            if getattr(img, "is_animated", False) and img.format != "MPO":
                raise ImageError(
                    "multi_frame",
                    "The file holds several frames (an animation or a stack). Upload a single still image.",
                )
            if img.format in ("JPEG", "MPO"):
                scans = jpeg_scans(data)
                if scans > MAX_JPEG_SCANS:
                    raise ImageError("corrupt_image", f"The JPEG file holds {scans:,} scans, where a photograph has "
                                                      f"a few; it is not decoded. Export the image again as JPEG or "
                                                      f"PNG and upload the new file.")
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = upright(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("too_many_pixels", f"The image has more than the {MAX_PIXELS // 1_000_000} megapixels "
                                            "accepted. Upload a smaller image.") from None
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "The file is not an image that can be read. Upload a JPEG, PNG, BMP, "
                                         "TIFF or WebP image of the lesion.") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error) as exc:
        # TypeError and struct.error: what Pillow raises on some damaged TIFF and EXIF headers (a float offset)
        raise ImageError("corrupt_image", "The image file is damaged or truncated and cannot be read. Export or "
                                          "copy the image again and upload the new file.") from exc
    if min(img.size) < MIN_SIDE:
        raise ImageError(
            "too_small",
            f"The image is only {img.size[0]}x{img.size[1]} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed.",
        )
    return to_rgb(img)


# A progressive JPEG has about ten scans; one decoded 3,000 times over (a 95-byte scan repeated, 1.4 MB) held a
# server thread for 20 s, and a 20 MB file of them would hold it for about 20 minutes
MAX_JPEG_SCANS = 100


def jpeg_scans(data: bytes | str | os.PathLike) -> int:
    """How many scans (start-of-scan markers, FF DA) a JPEG file holds: inside a scan's coded data a 0xFF byte is
    always followed by 00 or a restart marker, so the pair is found nowhere else."""
    if not isinstance(data, (bytes, bytearray)):
        with open(data, "rb") as f:
            data = f.read()
    return bytes(data).count(b"\xff\xda")


# EXIF Orientation value -> the turn that shows the image upright
ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF Orientation tag says: the pixels of Pillow's `ImageOps.exif_transpose`.

    Only the pixels are turned; the EXIF block is not written back (that is where `exif_transpose` fails with a
    struct.error on a damaged tag elsewhere in the block, though the pixels and the orientation read fine). Nothing
    downstream reads the EXIF: kept uploads are re-encoded from the pixels.
    """
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    method = ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return img.transpose(method) if method is not None else img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: greyscale, 16-bit, CMYK, palette and alpha included."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)  # in its own type: a float64 copy of the whole, and its temporaries, took 1.6 GB for
        lo, hi = float(arr.min()), float(arr.max())  # a 16-bit greyscale PNG of 64 megapixels (124 kB)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        grey = np.empty(arr.shape, np.uint8)
        for top in range(0, arr.shape[0], 256):  # the same arithmetic, 256 rows at a time
            grey[top : top + 256] = ((arr[top : top + 256].astype(np.float64) - lo) * scale).round().astype(np.uint8)
        img = Image.fromarray(grey, mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def shades_of_gray(arr: np.ndarray, p: int = 6) -> np.ndarray:
    """Shades of Gray colour constancy (Finlayson & Trezzi 2004) on an RGB array in [0, 255].

    Estimates the illuminant as the Minkowski p-norm mean of each channel and rescales the
    channels so that it becomes neutral grey, keeping the overall brightness. A float array gives
    a float array; a uint8 array gives the rounded uint8 result by lookup tables (per-channel
    histograms for the means, a 256-entry table for the rescaling), several times faster.
    """
    if arr.dtype == np.uint8:
        index = arr.reshape(-1, 3) + _CHANNEL_OFFSET  # one histogram for the three channels
        counts = np.bincount(index.ravel(), minlength=768).reshape(3, 256)
        powers = np.arange(256, dtype=np.float64) ** p
        illuminant = ((counts @ powers) / index.shape[0]) ** (1.0 / p)
        gains = _gains(illuminant).astype(np.float32)
        tables = np.round(np.clip(np.arange(256, dtype=np.float32) * gains[:, None], 0.0, 255.0)).astype(np.uint8)
        return tables.ravel()[index].reshape(arr.shape)
    illuminant = np.power(np.mean(np.power(arr, p), axis=(0, 1)), 1.0 / p)
    return np.clip(arr * _gains(illuminant), 0.0, 255.0)


_CHANNEL_OFFSET = np.array([0, 256, 512], dtype=np.intp)


def _gains(illuminant: np.ndarray) -> np.ndarray:
    illuminant = np.maximum(illuminant, 1e-6)
    return illuminant.mean() / illuminant


NEAR_BLACK = 40  # luminance (0-255) below which a pixel counts as the dermoscope's black frame
CORNER = 6 / 64  # side of each corner patch, as a share of the image side
DARK_CORNERS = 0.5  # share of the corner patches' pixels that must be near black


def _luminance(arr: np.ndarray) -> np.ndarray:
    """The luminance of an RGB array (ITU-R 601, as Pillow's "L"), 0-255 as float."""
    return arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114


def _near_black(arr: np.ndarray) -> np.ndarray:
    """Pixels of an RGB array whose luminance is below NEAR_BLACK."""
    return _luminance(arr) < NEAR_BLACK


def _corners(a: np.ndarray) -> np.ndarray:
    """The four corner patches (each CORNER of the side) of a 2-D array, flattened into one."""
    c = max(1, int(round(CORNER * min(a.shape[:2]))))
    return np.concatenate([a[:c, :c].ravel(), a[:c, -c:].ravel(), a[-c:, :c].ravel(), a[-c:, -c:].ravel()])


def dark_corner_share(arr: np.ndarray) -> float:
    """Share of the pixels in the four corner patches of an RGB array that are near black."""
    return float(_corners(_near_black(arr)).mean())


def fill_dark_frame(arr: np.ndarray) -> np.ndarray:
    """Paint the black frame of a contact dermoscope (or a strong vignette) in the colour of the skin next to it.

    Only when the corners are dark (`dark_corner_share` at least DARK_CORNERS): then every near-black region that
    reaches into a corner patch, widened by 1/64 of the side to cover the frame's soft edge, takes the median colour
    of the band of pixels just inside it. Dark lesions away from the corners are never touched. Without this, a frame
    seen mostly on melanomas in training turns benign lesions suspicious (README, "Other cameras").
    """
    dark = _near_black(arr)
    if _corners(dark).mean() < DARK_CORNERS:
        return arr
    from scipy import ndimage  # only for framed images

    labels, _ = ndimage.label(dark)
    side = min(labels.shape)
    in_corners = _corners(labels)
    frame = np.isin(labels, np.unique(in_corners[in_corners > 0]))  # the dark regions that reach into a corner
    frame = ndimage.binary_dilation(frame, iterations=max(1, side // 64))
    if frame.mean() > 0.75:  # nearly all dark: not a frame around skin (the quality check speaks to that)
        return arr
    band = ndimage.binary_dilation(frame, iterations=max(2, side // 32)) & ~frame
    out = arr.copy()
    out[frame] = np.round(np.median(arr[band], axis=0)).astype(np.uint8)
    return out


HAIR_CLOSING = 1 / 48  # radius of the closing's disk, as a share of the side (5 px at 256): wider than a hair
HAIR_CONTRAST = 15.0  # luminance (0-255) by which a pixel must be darker than its closing to be a hair candidate
HAIR_MIN_LENGTH = 1 / 10  # a hair is a dark strand at least this long (share of the side)...
HAIR_MAX_WIDTH = 1 / 40  # ...and on average at most this wide: globules, dots and pigment network are not


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def hair_mask(arr: np.ndarray) -> np.ndarray:
    """The pixels of an RGB array that lie on a hair: long, thin, dark strands.

    A greyscale closing by a small disk fills every dark structure narrower than the disk (the black-hat transform,
    as in DullRazor, Lee et al. 1997); of the connected regions darker than their closing by HAIR_CONTRAST, only
    those that are long (a straight segment of the same second moment at least HAIR_MIN_LENGTH of the side) and thin
    (area over that length at most HAIR_MAX_WIDTH of the side) are hairs. Dots, globules and a lesion's pigment
    network are short or meshed, so they stay; ruler lines and ink strokes that are long and thin go too.
    """
    from scipy import ndimage

    side = min(arr.shape[:2])
    gray = _luminance(arr)
    dark = ndimage.grey_closing(gray, footprint=_disk(max(2, round(side * HAIR_CLOSING)))) - gray > HAIR_CONTRAST
    labels, n = ndimage.label(dark, structure=np.ones((3, 3)))
    if n == 0:
        return dark
    flat = labels.ravel()
    y, x = (c.ravel().astype(np.float64) for c in np.indices(labels.shape))
    sums = [np.bincount(flat, weights=w, minlength=n + 1)[1:] for w in (None, y, x, y * y, x * x, x * y)]
    area = sums[0]
    my, mx = sums[1] / area, sums[2] / area
    vyy, vxx, vxy = sums[3] / area - my * my, sums[4] / area - mx * mx, sums[5] / area - mx * my
    half_trace = (vyy + vxx) / 2
    major = half_trace + np.sqrt(np.maximum(half_trace**2 - (vyy * vxx - vxy * vxy), 0.0))  # largest eigenvalue
    length = np.sqrt(12.0 * major)  # a segment of length l has variance l^2 / 12 along it
    hair = (length >= side * HAIR_MIN_LENGTH) & (area <= side * HAIR_MAX_WIDTH * np.maximum(length, 1.0))
    return np.concatenate([[False], hair])[labels]


def remove_hair(arr: np.ndarray) -> np.ndarray:
    """Paint the hairs of an RGB uint8 array (`hair_mask`, widened by a pixel) in the colour around them: a
    Gaussian-weighted mean of the pixels off the hairs nearby (normalised convolution, sigma 1/96 of the side, four
    times that where a thick tangle leaves no pixel close). An image without hairs comes back unchanged."""
    from scipy import ndimage

    mask = hair_mask(arr)
    if not mask.any():
        return arr.copy()
    mask = ndimage.binary_dilation(mask)
    keep = (~mask).astype(np.float32)
    sigma = max(1.0, min(arr.shape[:2]) / 96)
    out = arr.copy()
    near, far = (ndimage.gaussian_filter(keep, s) for s in (sigma, 4 * sigma))
    for c in range(3):
        channel = arr[..., c].astype(np.float32) * keep
        fill = np.where(near > 0.05, ndimage.gaussian_filter(channel, sigma) / np.maximum(near, 1e-3),
                        ndimage.gaussian_filter(channel, 4 * sigma) / np.maximum(far, 1e-3))
        out[..., c][mask] = np.clip(np.round(fill[mask]), 0, 255).astype(np.uint8)
    return out


def preprocess(data, spec: PreprocessSpec) -> np.ndarray:
    """Bytes, a path or a PIL image in; the model's (size, size, 3) uint8 input out.

    The image is squashed to a square (the training images were squashed from 4:3), resized
    with Pillow's antialiased bilinear filter, its dermoscope frame filled and its hairs painted out if the spec says
    so, and colour-normalised as the spec says: `normalise(squash(data, spec), spec)`.
    """
    return normalise(squash(data, spec), spec)


def squash(data, spec: PreprocessSpec) -> np.ndarray:
    """The first half of `preprocess`: decoded, RGB, squashed to the model's square size (uint8, read-only), as the
    picture looks before its frame is filled and its colours normalised (what `model.cues` judges)."""
    img = data if isinstance(data, Image.Image) else decode(data, draft_size=spec.image_size)
    if img.mode != "RGB":
        img = to_rgb(img)
    size = spec.image_size
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE)
    return np.asarray(img, dtype=np.uint8)


def normalise(arr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The second half of `preprocess`: the frame filled, the hairs painted out and the colours normalised as the spec
    says (a new array)."""
    if spec.frame_fill:  # before colour constancy: a black frame would also skew the illuminant estimate
        arr = fill_dark_frame(arr)
    if spec.hair_removal:  # after the frame (whose edge is no hair), before the illuminant estimate
        arr = remove_hair(arr)
    if spec.colour_constancy == "shades_of_gray":
        return shades_of_gray(arr, spec.shades_of_gray_p)
    if spec.colour_constancy != "none":
        raise ValueError(f"Unknown colour_constancy. Received: colour_constancy={spec.colour_constancy!r}")
    return arr.copy()
