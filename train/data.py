"""Finding the data: folders or a label CSV in, three labelled splits out, duplicates found.

Accepted layouts (see README):
1. ``DIR/{train,val,test}/{benign,malignant}/*.jpg`` (the official ISIC 2017 split);
2. ``DIR/{benign,malignant}/*.jpg`` (split here, stratified and seeded);
3. a CSV of labels: the ISIC 2017 ground truth (``image_id,melanoma,...``) or HAM10000-style
   metadata (``image_id,dx,lesion_id``), images found by id under ``--images`` (split here; with
   ``lesion_id`` the images of one lesion never straddle two splits; a ``split`` column is honoured).
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from model.bundle import CLASS_NAMES
from model.preprocessing import HEIC_SUFFIXES, IMAGE_SUFFIXES, ImageError, decode, image_files_under, is_hidden

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ALL = "all"  # every image of a data set, for evaluating a bundle trained on other data
LABEL_ALIASES = {
    "benign": "benign", "nevus": "benign", "naevus": "benign", "0": "benign",
    "malignant": "malignant", "melanoma": "malignant", "1": "malignant",
}
# HAM10000 diagnoses: melanoma, basal cell carcinoma and actinic keratosis / intraepithelial
# carcinoma need a dermatologist; naevi, benign keratoses, dermatofibromas and vascular lesions do not.
HAM_MALIGNANT = {"mel", "bcc", "akiec", "scc"}
HAM_BENIGN = {"nv", "bkl", "df", "vasc"}


class DataError(ValueError):
    """A problem with the data a person has to fix; the message says what and where."""


@dataclass
class Split:
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        return {name: int(sum(1 for y in self.labels if y == i)) for i, name in enumerate(CLASS_NAMES)}


@dataclass
class Dataset:
    root: Path
    layout: str
    splits: dict[str, Split]
    duplicates: list[dict] = field(default_factory=list)

    def split(self, name: str, drop_duplicates: bool = True) -> Split:
        """A split; for `test`, without the images that have a duplicate in train or val; `all`: every image of the
        data, whatever its split (for a bundle trained elsewhere, where this data's splits mean nothing)."""
        if name == ALL:
            parts = [self.splits[n] for n in SPLITS]
            return Split([p for s in parts for p in s.paths], [y for s in parts for y in s.labels],
                         [g for s in parts for g in s.groups])
        s = self.splits[name]
        if not drop_duplicates or name != "test":
            return s
        drop = {d["test_path"] for d in self.duplicates if d.get("test_path")}
        keep = [i for i, p in enumerate(s.paths) if str(p) not in drop]
        return Split([s.paths[i] for i in keep], [s.labels[i] for i in keep], [s.groups[i] for i in keep])

    def data_hash(self) -> str:
        """sha256 over every (split, relative path, label, file sha256): names exactly the data used."""
        digest = hashlib.sha256()
        for name in SPLITS:
            s = self.splits[name]
            for path, label in sorted(zip(s.paths, s.labels)):
                digest.update(f"{name}\t{relative_path(path, self.root)}\t{label}\t{file_sha256(path)}\n".encode())
        return digest.hexdigest()


def relative_path(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def normalise_label(raw: str, where: str) -> int:
    label = LABEL_ALIASES.get(str(raw).strip().lower())
    if label is None:
        raise DataError(
            f"Unknown label {raw!r} in {where}. Use one of: benign, malignant (or melanoma, nevus, 0, 1)."
        )
    return CLASS_NAMES.index(label)


def _images_in(folder: Path) -> list[Path]:
    files = image_files_under(folder)
    heic = [p for p in files if p.suffix.lower() in HEIC_SUFFIXES]
    if heic:  # left out silently, they would shrink a class without a word
        raise DataError(f"{len(heic)} HEIC photo(s) under {folder} (for example {heic[0].name}) cannot be read here and "
                        "would be left out. Convert them to JPEG (on a Mac: sips -s format jpeg PHOTO.heic --out "
                        "PHOTO.jpg; on Linux: heif-convert PHOTO.heic PHOTO.jpg) or move them out of the folder.")
    gone = [p for p in files if not p.exists()]
    if gone:  # a link to a file moved or deleted: named, not skipped
        raise DataError(f"{len(gone)} link(s) under {folder} point to no file (for example {gone[0]}, a link to "
                        f"{os.readlink(gone[0])}). Put the files back or remove the links.")
    return [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]


def _class_folders(folder: Path) -> Split:
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))
    if not subdirs:
        raise DataError(f"{folder} has no class subfolders (expected benign/ and malignant/).")
    split = Split()
    for sub in subdirs:
        label = normalise_label(sub.name, f"folder name {sub}")
        for path in _images_in(sub):
            split.paths.append(path)
            split.labels.append(label)
            split.groups.append(path.stem)
    if not split.paths:
        raise DataError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) were found under {folder}.")
    return split


def scorable(split: Split, name: str, source) -> Split:
    """`split` (of data `source`, `name` a split or `all`), or a DataError when it lacks a class: ROC AUC, sensitivity
    and specificity need both."""
    if len(set(split.labels)) < 2:
        which = "The images" if name == ALL else f"The {name} images"
        raise DataError(f"{which} of {source} need both classes for ROC AUC, sensitivity and specificity; they are "
                        f"{split.counts()}.")
    return split


def discover(source: str | Path, images: str | Path | None = None, seed: int = 42,
             val_fraction: float = 0.1, test_fraction: float = 0.2, whole: bool = False) -> Dataset:
    """Find the images and labels under `source` (a folder or a CSV) and return three splits. With `whole`, data
    without a split of its own is not split (every image in `test`), for `Dataset.split("all")`."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"The data path does not exist: {source}")
    if whole:
        val_fraction = test_fraction = None
    if source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES | HEIC_SUFFIXES:
        raise DataError(f"{source} is an image. The data is a folder (with train/, val/ and test/, or benign/ and "
                        f"malignant/ subfolders) or a label CSV; python -m model.predict judges single images.")
    if source.is_file():
        if images and not Path(images).is_dir():  # was "no images were found under" it, as if it were an empty folder
            raise DataError(f"{images}, given as the image folder of the label CSV {source} (--images or "
                            f"--extra-images), is not a folder: give the folder that holds the images the CSV names.")
        return _from_csv(source, Path(images) if images else source.parent, seed, val_fraction, test_fraction)
    if all((source / s).is_dir() for s in SPLITS):
        splits = {s: _class_folders(source / s) for s in SPLITS}
        for name, s in splits.items():
            if len(set(s.labels)) < 2 and not whole:
                raise DataError(f"The {name} split under {source} needs images of both classes; it has {s.counts()}.")
        return Dataset(source, "split_folders", splits)
    if not any(source.iterdir()):
        raise DataError(f"The data folder is empty: {source}")
    present = [s for s in SPLITS if (source / s).is_dir()]
    if present:  # was "Unknown label 'train' in folder name": read as class folders
        missing = [s for s in SPLITS if s not in present]
        raise DataError(f"{source} has {' and '.join(f'{s}/' for s in present)} but no "
                        f"{' or '.join(f'{s}/' for s in missing)}: split data needs train/, val/ and test/, each "
                        f"with benign/ and malignant/ (move some training images to the missing split, or put every "
                        f"image in {source}/benign/ and {source}/malignant/ to have them split 70/10/20).")
    pooled = _class_folders(source)
    return Dataset(source, "class_folders", _split(pooled, seed, val_fraction, test_fraction))


def _split(pooled: Split, seed: int, val_fraction: float | None, test_fraction: float | None) -> dict[str, Split]:
    """Stratified, seeded split that keeps every group (lesion) inside one split; with no fractions, no split: every
    image in `test`."""
    from sklearn.model_selection import StratifiedGroupKFold

    if val_fraction is None or test_fraction is None:
        return {"train": Split(), "val": Split(), "test": pooled}
    labels = np.asarray(pooled.labels)
    groups = np.asarray(pooled.groups)
    if len(set(labels.tolist())) < 2:
        raise DataError(f"Both classes are needed to split the images into training, validation and test sets; "
                        f"found only {pooled.counts()}.")
    n_test = max(2, round(1 / test_fraction))
    n_val = max(2, round((1 - test_fraction) / val_fraction))
    too_few = DataError(
        f"Too few images to split {pooled.counts()} into training, validation and test sets with both classes in "
        f"each ({1 - val_fraction - test_fraction:.0%}/{val_fraction:.0%}/{test_fraction:.0%}, stratified): each "
        f"class needs about {n_val + 2} images or more. Add images or give train/, val/ and test/ folders; to "
        f"score a bundle on every image, use python -m train.evaluate --split all.")
    try:
        with warnings.catch_warnings():  # fewer images of a class than folds: checked below, in a sentence
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            rest, test = next(StratifiedGroupKFold(n_test, shuffle=True, random_state=seed).split(labels, labels,
                                                                                                   groups))
            tr, va = next(StratifiedGroupKFold(n_val, shuffle=True, random_state=seed).split(
                labels[rest], labels[rest], groups[rest]))
    except ValueError:  # scikit-learn: more folds than groups
        raise too_few from None
    index = {"train": rest[tr], "val": rest[va], "test": test}
    if any(len(set(labels[idx].tolist())) < 2 for idx in index.values()):
        # scikit-learn only warns where a class has fewer images than folds, and a split went without it: a
        # validation split without melanomas has no AUC to checkpoint on and no threshold to set
        raise too_few
    return {
        name: Split([pooled.paths[i] for i in idx], [pooled.labels[i] for i in idx], [pooled.groups[i] for i in idx])
        for name, idx in index.items()
    }


def read_csv_rows(csv_path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A label CSV's column names (stripped, lower-case) and its rows as (line number, {column: stripped value}).

    Reads UTF-8 with or without the byte-order mark Excel's "CSV UTF-8" writes, separated by commas, semicolons (what
    Excel writes where the comma is the decimal sign) or tabs, as its header line is; skips blank lines. A DataError
    for a file that is not UTF-8 text or a row with fewer values than the header has names.
    """
    try:
        text = Path(csv_path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{csv_path} is not UTF-8 text. Save the labels as a CSV file in UTF-8 (in Excel: Save As, "
                        f"CSV UTF-8).") from None
    except OSError as e:
        raise DataError(f"cannot read {csv_path}: {e.strerror or e}") from None
    header_line = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=header_line.count)  # a comma where the header has no separator at all
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    try:
        columns = [name.strip().lower() for name in next(reader, [])]
        named = [c for c in columns if c]
        needed = max((i + 1 for i, c in enumerate(columns) if c), default=0)  # trailing unnamed columns may be absent
        rows = []
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            if len(values) < needed:
                raise DataError(f"{csv_path} line {reader.line_num} has {len(values)} value"
                                f"{'' if len(values) == 1 else 's'} where the header names {len(named)} columns "
                                f"({', '.join(named)}).")
            rows.append((reader.line_num, {c: v.strip() for c, v in zip(columns, values)}))
    except csv.Error as e:
        raise DataError(f"{csv_path} line {reader.line_num} is not valid CSV: {e}.") from None
    return columns, rows


def _melanoma_flag(raw: str, where: str) -> int:
    """ISIC's ground-truth column: 1 (or 1.0) for a melanoma, 0 (or 0.0) for none; anything else is a DataError."""
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value not in (0.0, 1.0):
        raise DataError(f"Unknown label melanoma={raw!r} in {where}. The melanoma column holds 1 for a melanoma and 0 "
                        f"for none, as ISIC's ground-truth CSVs do.")
    return int(value)


def nfc(name: str) -> str:
    """`name` in Unicode's composed form: macOS writes file names decomposed (e + a combining accent), a spreadsheet
    typed elsewhere composed (é), and the two must name the same image."""
    return unicodedata.normalize("NFC", name)


def _image_for(image_id: str, images: Path, index: dict[str, list[Path]], where: str) -> Path:
    """The image a label CSV names: by its path under `images` (`benign/img1.jpg`), by its ID (`ISIC_0000000`, the
    file name without suffix) or its file name; a DataError when none or several files fit. A path written on Windows
    (`benign\\img1.jpg`, `C:\\data\\img1.jpg`) is read with its backslashes as folder separators."""
    name = image_id if (images / image_id).is_file() else image_id.replace("\\", "/")
    if name and (images / name).is_file() and (images / name).suffix.lower() in IMAGE_SUFFIXES:
        return images / name
    found = index.get(nfc(name)) or index.get(nfc(Path(name).stem)) or []
    if not found:
        raise DataError(f"Image {image_id!r} ({where}) was not found under {images}.")
    if len(found) > 1:
        raise DataError(f"Image {image_id!r} ({where}) could be any of {len(found)} files under {images}: "
                        f"{', '.join(relative_path(p, images) for p in found[:3])}. Name it by its path under "
                        f"{images} in the CSV.")
    return found[0]


def _from_csv(csv_path: Path, images: Path, seed: int, val_fraction: float, test_fraction: float) -> Dataset:
    columns, rows = read_csv_rows(csv_path)
    if not rows:
        raise DataError(f"The label file has no rows: {csv_path}")
    if "image_id" not in columns and "image" not in columns:
        raise DataError(f"{csv_path} needs an image_id column. Received columns: {sorted(columns)}")
    if not {"dx", "melanoma", "label"} & set(columns):
        raise DataError(f"{csv_path} needs a dx, melanoma or label column. Received columns: {sorted(columns)}")
    index: dict[str, list[Path]] = {}
    for p in _images_in(images):
        index.setdefault(nfc(p.stem), []).append(p)
    if not index:
        raise DataError(f"No images were found under {images} for the labels in {csv_path}.")
    pooled, fixed, first_line = Split(), [], {}
    for n, row in rows:
        image_id = row.get("image_id") or row.get("image") or ""
        where = f"{csv_path} line {n}"
        if "dx" in columns:
            dx = row["dx"].lower()
            if dx not in HAM_MALIGNANT | HAM_BENIGN:
                raise DataError(f"Unknown label dx={dx!r} in {where}.")
            label = int(dx in HAM_MALIGNANT)
        elif "melanoma" in columns:
            label = _melanoma_flag(row["melanoma"], where)
        else:
            label = normalise_label(row["label"], where)
        path = _image_for(image_id, images, index, where)
        if path in first_line:
            raise DataError(f"Image {image_id!r} is listed twice in {csv_path}, on lines {first_line[path]} and "
                            f"{n}. List each image once.")
        first_line[path] = n
        pooled.paths.append(path)
        pooled.labels.append(label)
        pooled.groups.append(row.get("lesion_id") or image_id)
        fixed.append(row.get("split", "").lower())
    if not any(fixed):
        return Dataset(images, "csv", _split(pooled, seed, val_fraction, test_fraction))
    for (n, _), s in zip(rows, fixed):
        if s not in SPLITS:
            raise DataError(f"Unknown split {s!r} in {csv_path} line {n}. Use train, val or test for every image, or "
                            f"leave the split column out for a seeded, stratified split.")
    splits = {s: Split() for s in SPLITS}
    split_of = {}
    whole = val_fraction is None  # every image evaluated, or added to training: the file's own splits do not count
    for (n, _), path, label, group, s in zip(rows, pooled.paths, pooled.labels, pooled.groups, fixed):
        if split_of.setdefault(group, (s, n))[0] != s and not whole:
            raise DataError(f"Lesion {group!r} has images in the {split_of[group][0]} split ({csv_path} line "
                            f"{split_of[group][1]}) and the {s} split (line {n}): images of one lesion belong in one "
                            f"split, or the evaluation scores copies of what it trained on.")
        splits[s].paths.append(path)
        splits[s].labels.append(label)
        splits[s].groups.append(group)
    if not whole:
        for name, split in splits.items():
            if len(set(split.labels)) < 2:
                raise DataError(f"The {name} split of {csv_path} needs images of both classes; it has "
                                f"{split.counts()}.")
    return Dataset(images, "csv_split", splits)


# --- duplicates ---------------------------------------------------------------------------------

THUMB = 32
# Correlation of equalised greyscale thumbnails at or above which two images count as the same
# picture (re-processed, recoloured or flipped copies); ISIC 2017's own duplicate list used 0.93.
NEAR_DUPLICATE_CORR = 0.93


def thumbnail_signature(path: Path) -> np.ndarray:
    """(8, THUMB*THUMB) unit vectors, one per flip/rotation of a small equalised greyscale thumbnail.

    Equalisation makes the signature blind to the colour and contrast shifts of re-processed
    copies; the dot product of two signatures is their correlation.
    """
    img = decode(Path(path).read_bytes(), draft_size=THUMB * 4).convert("L")
    thumb = np.asarray(ImageOps.equalize(img.resize((THUMB, THUMB), Image.Resampling.BILINEAR)), dtype=np.float32)
    views = []
    for k in range(4):
        r = np.rot90(thumb, k)
        views.extend([r, r[:, ::-1]])
    flat = np.stack([v.ravel() for v in views])
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-6)


def _signatures(paths: list[Path]) -> np.ndarray:
    """(n, 8, THUMB*THUMB) thumbnail signatures; an unreadable image stops with its name."""
    signatures = []
    for p in paths:
        try:
            signatures.append(thumbnail_signature(p))
        except ImageError as exc:
            raise DataError(f"Unreadable image {p}: {exc.message}") from None
    return np.stack(signatures) if signatures else np.zeros((0, 8, THUMB * THUMB), np.float32)


def _best_view_correlation(signature: np.ndarray, canonical: np.ndarray) -> np.ndarray:
    """The correlation of one image (its (8, d) signature) with each of `canonical`'s (n, d) first views: the best of
    its 8 flips and rotations, so a flipped or turned copy correlates as the original does."""
    return (signature @ canonical.T).max(axis=0)


def _near_pairs(signatures: np.ndarray, min_corr: float):
    """(i, j, correlation) for every two images whose best flip/rotation correlates at least `min_corr`."""
    canonical = signatures[:, 0, :]  # (n, d)
    for i in range(len(signatures)):
        corr = _best_view_correlation(signatures[i], canonical)
        for j in np.nonzero(corr >= min_corr)[0]:
            if j != i:
                yield i, int(j), float(corr[j])


def find_duplicates(dataset: Dataset, min_corr: float = NEAR_DUPLICATE_CORR, known: Path | None = None) -> list[dict]:
    """Exact (same bytes) and near (thumbnail correlation) duplicates between splits.

    Each entry names both files and their labels; `test_path` is set where one side is a test image
    (it is dropped from the test split). `labels_agree` is False where the two copies of one image carry
    different labels: one of them is mislabelled. `known` is an optional CSV of confirmed pairs
    (path_a, path_b, verdict), such as ISIC 2017's NEAR_DUPLICATES.csv, added to what the hashes find.
    """
    entries = [(name, p) for name in SPLITS for p in dataset.splits[name].paths]
    split_of = {str(p): name for name, p in entries}
    label_of = {str(p): CLASS_NAMES[label] for name in SPLITS
                for p, label in zip(dataset.splits[name].paths, dataset.splits[name].labels)}
    sha = {str(p): file_sha256(p) for _, p in entries}
    signatures = _signatures([p for _, p in entries])
    pairs: dict[tuple[str, str], dict] = {}

    def add(a: str, b: str, kind: str, corr: float | None):
        if split_of.get(a) == split_of.get(b) or a not in split_of or b not in split_of:
            return
        key = tuple(sorted((a, b)))
        if key in pairs:
            return
        entry = {"path_a": key[0], "path_b": key[1], "split_a": split_of[key[0]], "split_b": split_of[key[1]],
                 "label_a": label_of[key[0]], "label_b": label_of[key[1]],
                 "labels_agree": label_of[key[0]] == label_of[key[1]], "kind": kind, "correlation": corr}
        tests = [k for k in key if split_of[k] == "test"]
        entry["test_path"] = tests[0] if tests else None
        pairs[key] = entry

    by_sha: dict[str, list[str]] = {}
    for path, digest in sha.items():
        by_sha.setdefault(digest, []).append(path)
    for group in by_sha.values():
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                add(group[i], group[j], "exact", 1.0)
    for i, j, corr in _near_pairs(signatures, min_corr):
        add(str(entries[i][1]), str(entries[j][1]), "near", round(corr, 4))
    if known is not None and Path(known).exists():
        root = dataset.root
        with open(known, newline="") as f:
            for row in csv.DictReader(f):
                verdict = row.get("verdict", "")
                if "exact" in verdict or "confirmed" in verdict:
                    add(str(root / row["path_a"]), str(root / row["path_b"]), f"listed:{verdict}", None)
    return sorted(pairs.values(), key=lambda e: (e["path_a"], e["path_b"]))


def extra_training_images(source: str | Path, images: str | Path | None, dataset: Dataset,
                          min_corr: float = NEAR_DUPLICATE_CORR) -> tuple[Split, dict]:
    """Every image of `source` (a folder or a label CSV, as for `--data`; its own splits, if any, ignored) for the
    training split of `dataset`, without those that are a copy of one of its validation or test images (the same
    bytes, or a near-duplicate thumbnail, flipped or recoloured): trained on, such a copy would leak into the
    evaluation. The test split stays as it is, so the result stays comparable with runs without the extra images.

    Returns the images kept and a report: the source, the kept images' counts, the copies left out (and of which
    image), and a hash over the kept images' (relative path, label, file sha256).
    """
    extra_data = discover(source, images, whole=True)
    extra = extra_data.split(ALL)
    held = [p for name in ("val", "test") for p in dataset.splits[name].paths]
    copies = copies_of(extra.paths, held, min_corr)
    kept, left_out, digest = Split(), [], hashlib.sha256()
    for i, (path, label, group) in enumerate(zip(extra.paths, extra.labels, extra.groups)):
        if i in copies:
            left_out.append({"path": relative_path(path, extra_data.root),
                             "copy_of": relative_path(copies[i], dataset.root)})
            continue
        kept.paths.append(path)
        kept.labels.append(label)
        kept.groups.append(group)
        digest.update(f"{relative_path(path, extra_data.root)}\t{label}\t{file_sha256(path)}\n".encode())
    report = {"source": str(source), "images_used": len(kept), "counts": kept.counts(),
              "left_out_as_copies_of_val_or_test": len(left_out), "left_out": left_out, "hash": digest.hexdigest()}
    return kept, report


def copies_of(paths: list[Path], others: list[Path], min_corr: float = NEAR_DUPLICATE_CORR) -> dict[int, Path]:
    """The images of `paths` that are a copy of one of `others` (the same bytes, or a near-duplicate thumbnail, flipped
    or recoloured), by their index in `paths`, each with the image it copies."""
    if not len(paths) or not len(others):
        return {}
    canonical = _signatures(others)[:, 0, :]
    copies = {}
    for i, path in enumerate(paths):
        corr = _best_view_correlation(_signatures([path])[0], canonical)  # an exact copy correlates 1.0
        if corr.max() >= min_corr:
            copies[i] = others[int(corr.argmax())]
    return copies


def copies_of_training_images(card: dict, dataset: Dataset, data_hash: str,
                               split: str) -> tuple[dict, set[str]]:
    """For data other than the bundle's own: the images of `split` that copy one the bundle trained or was validated
    on (the same bytes or a near-duplicate, flipped or recoloured), found in its training data where the card's data
    source is on this machine; a copy scored as new data would flatter the bundle. Returns a report for metrics.json
    and the copies' paths."""
    trained_on = card.get("data") or {}
    if data_hash == trained_on.get("hash"):  # its own data: the copies across its splits are dropped as usual
        return {"checked": True, "own_data": True, "copies": []}, set()
    source = trained_path(card, trained_on.get("source"))
    if not source or not source.exists():
        return {"checked": False, "why": f"the bundle's training data ({source or 'not named in its card'}) is not "
                                         f"on this machine"}, set()
    arguments = card.get("training", {}).get("arguments", {})
    trained = discover(source, trained_path(card, arguments.get("images")), seed=int(arguments.get("seed", 42)))
    # what it trained or was validated on, however `--val-from-train` moved images between the two
    seen = trained.splits["train"].paths + trained.splits["val"].paths
    extra = trained_path(card, arguments.get("extra_train"))
    if extra and not extra.exists():  # was passed over: "checked", its images compared with nothing
        return {"checked": False, "why": f"the bundle's extra training data ({extra}) is not on this machine"}, set()
    if extra:
        seen += discover(extra, trained_path(card, arguments.get("extra_images")), whole=True).split(ALL).paths
    evaluated = dataset.split(split, drop_duplicates=False).paths
    copies = copies_of(evaluated, seen)
    report = {"checked": True, "source": str(source), "images_compared": len(seen), "copies": [
        {"path": relative_path(evaluated[i], dataset.root),
         "copy_of": relative_path(copy, trained.root)} for i, copy in sorted(copies.items())]}
    return report, {str(evaluated[i]) for i in copies}


def trained_path(card: dict, recorded) -> Path | None:
    """A path a bundle's card records (its --data, --images, --extra-train), relative ones taken from the folder
    training ran in (`training.cwd`; cards from before it: from here). Recorded as given, a relative path was looked
    for from wherever the later command ran, and the check for copies of the training images said the data was not
    on this machine."""
    if not recorded:
        return None
    path, cwd = Path(recorded), card.get("training", {}).get("cwd")
    return Path(cwd) / path if cwd and not path.is_absolute() else path


def leave_out_copies_of_training_images(cards: dict[str, dict], dataset: Dataset, data_hash: str, split: str,
                                        keep: bool = False) -> tuple[list[dict], set[str]]:
    """`copies_of_training_images` for each bundle (`cards`: a name to its card), said in the log and, unless `keep`,
    taken out of `dataset`, so that every bundle is scored on the same images. Returns each card's report and the
    copies' paths."""
    reports, copies = [], set()
    for name, card in cards.items():
        seen, found = copies_of_training_images(card, dataset, data_hash, split)
        if not seen["checked"]:
            log.warning("%s: not checked for copies of the images the bundle trained on: %s", name, seen["why"])
        reports.append(seen)
        copies |= found
    if copies:
        log.warning("%d of the images to evaluate (--split %s) copy images a bundle trained or was validated on: %s",
                    len(copies), split, "kept (--keep-duplicates)" if keep else "left out")
        if not keep:
            without(dataset, copies)
    return reports, copies


def not_own_data_under_all(reports: list[dict], split: str, data) -> None:
    """A DataError for `--split all` on the data a bundle was trained on (`reports`: what
    `leave_out_copies_of_training_images` found): every image of its train and val splits would be scored beside its
    test split, and the table would read as a measure on new data."""
    if split == ALL and any(r.get("own_data") for r in reports):
        raise DataError(f"{data} is the data the bundle was trained on: --split all would score the images it trained "
                        f"and was validated on beside its test images. Use --split test for the images held out from "
                        f"it; --split all is for data it has not seen (another clinic's folder).")


def without(dataset: Dataset, paths: set[str]) -> None:
    """Take `paths` out of every split of `dataset`."""
    for name, s in dataset.splits.items():
        keep = [i for i, p in enumerate(s.paths) if str(p) not in paths]
        dataset.splits[name] = Split([s.paths[i] for i in keep], [s.labels[i] for i in keep],
                                     [s.groups[i] for i in keep])


def near_duplicate_groups(paths: list[Path], min_corr: float = NEAR_DUPLICATE_CORR,
                          same: list[str] | None = None) -> list[int]:
    """A group number per image: images joined by exact or near-duplicate copies (within this list) share one, and
    so do images with the same key in `same` (a lesion's id: its images are no copies of each other)."""
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in _near_pairs(_signatures(paths), min_corr):
        parent[root(j)] = root(i)
    first: dict[str, int] = {}
    for j, key in enumerate(same or []):
        i = first.setdefault(key, j)
        if root(i) != root(j):
            parent[root(j)] = root(i)
    return [root(i) for i in range(len(paths))]


def validation_from_train(dataset: Dataset, share: float, seed: int) -> np.ndarray:
    """Indices of the training images that `python -m train --val-from-train SHARE` moves to validation.

    About `share` of the training split, stratified by label and seeded. Near-duplicate copies inside the
    training split move together (a copy left in training would leak into validation), and so do the images of one
    lesion (a label CSV's `lesion_id`; they moved apart, each leaving its twin in training); a training image
    with a copy in val or test never moves (validation would count that picture twice). The same data, share
    and seed always give the same images, so `python -m train.calibrate` can rebuild the set.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < share < 0.5:
        raise DataError(f"--val-from-train is a share of the training images in (0, 0.5), e.g. 0.15; not {share}")
    train = dataset.splits["train"]
    crossing = {d[k] for d in dataset.duplicates for k in ("path_a", "path_b") if d[f"split_{k[-1]}"] == "train"}
    movable = np.array([i for i, p in enumerate(train.paths) if str(p) not in crossing])
    labels = np.asarray(train.labels)[movable]
    if np.bincount(labels, minlength=2).min() < round(1 / share):
        raise DataError(f"too few training images of one class to move a stratified share {share} to validation: "
                        f"{dict(zip(CLASS_NAMES, np.bincount(labels, minlength=2).tolist()))}")
    groups = near_duplicate_groups([train.paths[i] for i in movable], same=[train.groups[i] for i in movable])
    folds = StratifiedGroupKFold(round(1 / share), shuffle=True, random_state=seed)
    _, moved = next(folds.split(labels, labels, groups))
    return np.sort(movable[moved])


def bundle_seed(seed: int | None, *cards: dict) -> int:
    """The seed that splits data without splits of its own: `seed` where given, else the one the bundle (the first of
    `cards` whose card says) was trained with, so that its own test split is the one scored and its own validation
    split the one refitted on (the commands after training split such data with seed 42 whatever the bundle's, and
    scored or calibrated on images it had trained on); 42 where no card says."""
    if seed is not None:
        return seed
    seeds = [int(s) for s in (c.get("training", {}).get("arguments", {}).get("seed") for c in cards) if s is not None]
    if len(set(seeds)) > 1:
        log.warning("the bundles were trained with different seeds (%s): data without splits of its own is split "
                    "with the first, %d, as the first bundle's was", ", ".join(map(str, seeds)), seeds[0])
    return seeds[0] if seeds else 42


SEED_HELP = "seed of the split for data without splits of its own (default: the bundle's, from its card; else 42)"


def dataset_as_trained(dataset: Dataset, card: dict, data) -> tuple[Dataset, int]:
    """The splits a bundle was fitted on: `dataset` as it is or, for a bundle trained on this same data with
    `--val-from-train`, with the training images that run moved to validation moved again (rebuilt from its share
    and seed), and with its `--extra-train` images in the training split where they can be read and are the same;
    and how many images were moved."""
    arguments = card.get("training", {}).get("arguments", {})
    share = float(arguments.get("val_from_train") or 0.0)
    extra = card.get("data", {}).get("extra_train")
    if not share and not extra:
        return dataset, 0
    if dataset.data_hash() != card.get("data", {}).get("hash"):
        log.info("the bundle's splits were redrawn from its data, but %s is not the data it trained on: its "
                 "splits are used as they are", data)
        return dataset, 0
    drawn, moved = dataset, []
    if share:
        known = Path(data) / "NEAR_DUPLICATES.csv" if Path(data).is_dir() else None
        dataset.duplicates = find_duplicates(dataset, known=known)
        drawn, moved = with_validation_from_train(dataset, share, int(arguments["seed"]))
    if extra:
        try:
            images, report = extra_training_images(trained_path(card, arguments["extra_train"]),
                                                   trained_path(card, arguments.get("extra_images")), drawn)
            changed = None if report["hash"] == extra["hash"] else "other images"
        except DataError as exc:
            changed = str(exc)
        if changed:
            log.warning("the bundle also trained on %s, which is not here as it was (%s): its training split is "
                        "that of %s alone", extra["source"], changed, data)
        else:
            drawn = with_training_images(drawn, images)
    return drawn, int(len(moved))


def with_training_images(dataset: Dataset, images: Split) -> Dataset:
    """`dataset` with `images` added at the end of its training split."""
    t = dataset.splits["train"]
    return Dataset(dataset.root, dataset.layout, {**dataset.splits, "train": Split(
        t.paths + images.paths, t.labels + images.labels, t.groups + images.groups)}, dataset.duplicates)


def with_validation_from_train(dataset: Dataset, share: float, seed: int) -> tuple[Dataset, np.ndarray]:
    """`dataset` as a `--val-from-train` run draws it: the images `validation_from_train` picks moved from the
    train split to the end of the val split. Returns that dataset and the moved images' training indices."""
    moved = validation_from_train(dataset, share, seed)
    train, val = dataset.splits["train"], dataset.splits["val"]

    def pick(idx) -> Split:
        return Split([train.paths[i] for i in idx], [train.labels[i] for i in idx], [train.groups[i] for i in idx])

    extra = pick(moved)
    splits = {**dataset.splits, "train": pick(np.setdiff1d(np.arange(len(train)), moved)),
              "val": Split(val.paths + extra.paths, val.labels + extra.labels, val.groups + extra.groups)}
    return Dataset(dataset.root, dataset.layout, splits, dataset.duplicates), moved


def read_diagnoses(csv_path: str | Path) -> dict[str, str]:
    """Finer diagnosis per image stem, from a CSV with a `diagnosis` column and `image_id` or `path`."""
    if not Path(csv_path).is_file():
        raise DataError(f"cannot read the diagnosis CSV {csv_path}: there is no such file")
    columns, rows = read_csv_rows(csv_path)
    if "diagnosis" not in columns:
        raise DataError(f"{csv_path} has no 'diagnosis' column")
    return {(row.get("image_id") or Path(row.get("path") or "").stem): row["diagnosis"] for _, row in rows}


def diagnoses_for(paths: list, by_id: dict[str, str], csv_path: str | Path, what: str) -> list[str]:
    """The diagnosis of every path, or a DataError naming the first image the CSV lacks."""
    missing = [Path(p).name for p in paths if not by_id.get(Path(p).stem)]
    if missing:
        raise DataError(f"{len(missing)} {what} images have no diagnosis in {csv_path}, for example {missing[0]}")
    return [by_id[Path(p).stem] for p in paths]


def memory_bytes() -> int | None:
    """The memory this process may use: the machine's physical memory, or a container's lower limit (cgroup v2's
    memory.max); None where the system does not say."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def load_images(paths: list[Path], spec) -> np.ndarray:
    """Every image through the one preprocessing path: (N, size, size, 3) uint8; a DataError, before reading any,
    where they would not fit in memory (`--image-size 100000` was numpy's MemoryError traceback)."""
    from model.preprocessing import preprocess

    need, have = len(paths) * spec.image_size ** 2 * 3, memory_bytes()
    if have is not None and need > have:
        raise DataError(f"{len(paths):,} images at {spec.image_size} x {spec.image_size} pixels take "
                        f"{need / 2**30:,.1f} GiB of memory, more than the {have / 2**30:,.1f} GiB here: use a "
                        f"smaller input size (--image-size) or fewer images")
    out = np.empty((len(paths), spec.image_size, spec.image_size, 3), np.uint8)
    for i, path in enumerate(paths):
        try:
            out[i] = preprocess(Path(path).read_bytes(), spec)
        except ImageError as exc:
            raise DataError(f"Unreadable image {path}: {exc.message}") from None
    return out
