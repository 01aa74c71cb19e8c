import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from train.data import DataError, diagnoses_for, discover, extra_training_images, find_duplicates, read_diagnoses
from tests.conftest import synthetic_lesion


def make_class_folders(root, n=10, suffix=".png"):
    for label, dark in (("benign", 0.1), ("malignant", 0.9)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            synthetic_lesion(48, seed=i + (100 if dark > 0.5 else 0), dark=dark).save(root / label / f"{label}_{i}{suffix}")


def test_split_folders_without_one_split_are_named_as_such(tmp_path):
    """A download with train/ and test/ only was read as class folders: "Unknown label 'test' in folder name"."""
    for split in ("train", "test"):
        make_class_folders(tmp_path / split, n=3)
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path))} has train/ and test/ but no val/: split data "
                                        r"needs train/, val/ and test/, each with benign/ and malignant/"):
        discover(tmp_path)


def test_split_folders(tiny_data):
    ds = discover(tiny_data)
    assert ds.layout == "split_folders"
    assert ds.splits["train"].counts() == {"benign": 12, "malignant": 12}
    assert len(ds.splits["test"]) == 12


def test_class_folders_are_split_stratified_and_seeded(tmp_path):
    make_class_folders(tmp_path, n=20)
    a, b = discover(tmp_path, seed=3), discover(tmp_path, seed=3)
    assert a.layout == "class_folders"
    assert [str(p) for p in a.splits["test"].paths] == [str(p) for p in b.splits["test"].paths]
    all_paths = [str(p) for s in a.splits.values() for p in s.paths]
    assert len(all_paths) == len(set(all_paths)) == 40
    for s in a.splits.values():  # stratified: each split holds the classes half and half, as the folders do
        counts = s.counts()
        assert abs(counts["benign"] - counts["malignant"]) <= 1, (s, counts)
    other = discover(tmp_path, seed=4)  # seeded: another seed draws another split
    assert [str(p) for p in other.splits["test"].paths] != [str(p) for p in a.splits["test"].paths]


def test_isic_ground_truth_csv(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    lines = ["image_id,melanoma,seborrheic_keratosis"]
    for i in range(30):
        synthetic_lesion(40, seed=i).save(images / f"ISIC_{i:07d}.jpg")
        lines.append(f"ISIC_{i:07d},{float(i % 3 == 0)},0.0")
    csv_path = tmp_path / "gt.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    ds = discover(csv_path, images=images)
    total = sum(len(s) for s in ds.splits.values())
    assert total == 30 and sum(s.counts()["malignant"] for s in ds.splits.values()) == 10


def isic_images(folder: Path, n: int = 30) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"ISIC_{i:07d}" for i in range(n)]
    for i, image_id in enumerate(ids):
        synthetic_lesion(40, seed=i).save(folder / f"{image_id}.jpg")
    return ids


def splits_of(ds) -> dict:
    return {name: sorted((p.name, y) for p, y in zip(s.paths, s.labels)) for name, s in ds.splits.items()}


def test_label_csvs_as_spreadsheets_save_them_read_as_the_plain_one(tmp_path):
    """Excel's "CSV UTF-8" (a byte-order mark), semicolons where the comma is the decimal sign, capitalised or padded
    column names, blank lines and file names in place of IDs give the same data set as the plain CSV."""
    ids = isic_images(tmp_path / "images")
    plain = tmp_path / "plain.csv"
    plain.write_text("image_id,melanoma\n" + "".join(f"{x},{float(i % 3 == 0)}\n" for i, x in enumerate(ids)))
    expected = splits_of(discover(plain, tmp_path / "images"))
    excel = tmp_path / "excel.csv"
    excel.write_bytes(("\ufeffImage_ID ; Melanoma\r\n" + "".join(
        f"{x}.jpg;{int(i % 3 == 0)}\r\n" + ("\r\n" if i == 4 else "") for i, x in enumerate(ids))).encode("utf-8"))
    assert splits_of(discover(excel, tmp_path / "images")) == expected
    tabs = tmp_path / "tabs.csv"
    tabs.write_text("image_id\tmelanoma\n" + "".join(f"{x}\t{i % 3 == 0:d}\n" for i, x in enumerate(ids)))
    assert splits_of(discover(tabs, tmp_path / "images")) == expected


def csv_rows(ids, value=lambda i: f"{float(i % 3 == 0)}"):
    return "".join(f"{x},{value(i)}\n" for i, x in enumerate(ids))


LABEL_CSV_MISTAKES = [
    # (id, CSV text from the image IDs, the error's words); each was a traceback or a silent mistake before
    ("empty melanoma value", lambda ids: "image_id,melanoma\n" + csv_rows(ids, lambda i: "" if i == 3 else "0"),
     r"^Unknown label melanoma='' in .*line 5\. The melanoma column holds 1 for a melanoma and 0 for none"),
    ("melanoma in words", lambda ids: "image_id,melanoma\n" + csv_rows(ids, lambda i: "yes" if i == 3 else "1"),
     r"^Unknown label melanoma='yes' in .*line 5\."),
    ("melanoma 0.5, read as benign before", lambda ids: "image_id,melanoma\n" + csv_rows(ids, lambda i: "0.5"),
     r"^Unknown label melanoma='0\.5' in .*line 2\."),
    ("a row short of values", lambda ids: "image_id,dx,lesion_id\n" + f"{ids[0]},nv,L0\n{ids[1]}\n",
     r"line 3 has 1 value where the header names 3 columns \(image_id, dx, lesion_id\)\.$"),
    ("not UTF-8", lambda ids: ("image_id,label,note\n" + f"{ids[0]},benign,caf\xe9\n").encode("latin-1"),
     r"is not UTF-8 text\. Save the labels as a CSV file in UTF-8"),
    ("an image listed twice", lambda ids: "image_id,melanoma\n" + csv_rows(ids) + f"{ids[0]},1\n",
     r"^Image 'ISIC_0000000' is listed twice in .*, on lines 2 and 32\. List each image once\.$"),
    ("a mistyped split, which dropped the split column before",
     lambda ids: "image_id,melanoma,split\n" + "".join(f"{x},{i % 2},{'tst' if i == 7 else 'train'}\n"
                                                        for i, x in enumerate(ids)),
     r"^Unknown split 'tst' in .* line 9\. Use train, val or test for every image"),
    ("a lesion in two splits",
     lambda ids: "image_id,lesion_id,melanoma,split\n" + "".join(
         f"{x},L{min(i, 28)},{i % 2},{['train', 'val', 'test'][i % 3] if i < 29 else 'train'}\n"
         for i, x in enumerate(ids)),
     r"^Lesion 'L28' has images in the val split \(.* line 30\) and the train split \(line 31\)"),
    ("a split with one class",
     lambda ids: "image_id,melanoma,split\n" + "".join(f"{x},{int(i < 4)},{'val' if i >= 20 else 'train'}\n"
                                                        for i, x in enumerate(ids[:28])) + f"{ids[28]},0,test\n"
                 + f"{ids[29]},1,test\n",
     r"^The val split of .* needs images of both classes; it has \{'benign': 8, 'malignant': 0\}\.$"),
]


@pytest.mark.parametrize("build, words", [m[1:] for m in LABEL_CSV_MISTAKES], ids=[m[0] for m in LABEL_CSV_MISTAKES])
def test_mistakes_in_a_label_csv_are_a_sentence_naming_the_line(tmp_path, build, words):
    ids = isic_images(tmp_path / "images")
    text = build(ids)
    (tmp_path / "labels.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=words):
        discover(tmp_path / "labels.csv", tmp_path / "images")


def test_a_csv_names_images_by_path_where_two_files_share_a_name(tmp_path):
    """Two folders with an `img_0.png` each: an ID that fits both is an error naming them (before, one file silently
    stood for both, with one label), and paths under the image folder tell them apart."""
    for folder, dark in (("clinic_a", 0.1), ("clinic_b", 0.9)):
        (tmp_path / folder).mkdir()
        for i in range(15):
            synthetic_lesion(40, seed=i + (50 if dark > 0.5 else 0), dark=dark).save(tmp_path / folder / f"img_{i}.png")
    (tmp_path / "by_id.csv").write_text("image_id,label\n" + "".join(f"img_{i},benign\n" for i in range(15)))
    with pytest.raises(DataError, match=r"^Image 'img_0' \(.*line 2\) could be any of 2 files under .*: "
                                        r"clinic_a/img_0\.png, clinic_b/img_0\.png\. Name it by its path"):
        discover(tmp_path / "by_id.csv")
    (tmp_path / "by_path.csv").write_text("image,label\n" + "".join(
        f"{folder}/img_{i}.png,{label}\n" for folder, label in (("clinic_a", "benign"), ("clinic_b", "malignant"))
        for i in range(15)))
    ds = discover(tmp_path / "by_path.csv").split("all")
    assert len(ds) == 30 and len(set(ds.paths)) == 30
    assert all((p.parent.name == "clinic_b") == bool(y) for p, y in zip(ds.paths, ds.labels))
    # a CSV written on Windows: backslashes between folders, or the whole path on another machine's drive
    (tmp_path / "windows.csv").write_text("image,label\n" + "".join(
        f"{folder}\\img_{i}.png,{label}\n" for folder, label in (("clinic_a", "benign"), ("clinic_b", "malignant"))
        for i in range(14)) + "C:\\Users\\me\\clinic_a\\img_14.png,benign\nD:\\clinic_b\\img_14.png,malignant\n")
    with pytest.raises(DataError, match=r"^Image 'C:\\\\Users\\\\me\\\\clinic_a\\\\img_14.png' \(.*line 30\) could be "
                                        r"any of 2 files"):
        discover(tmp_path / "windows.csv")
    text = (tmp_path / "windows.csv").read_text().replace("C:\\Users\\me\\", "")
    (tmp_path / "windows.csv").write_text(text.replace("D:\\", ""))
    windows = discover(tmp_path / "windows.csv").split("all")
    assert sorted(zip(windows.paths, windows.labels)) == sorted(zip(ds.paths, ds.labels))


def test_a_csv_typed_with_accents_finds_files_a_mac_named(tmp_path):
    """macOS writes "mélanome" as e + a combining accent; a spreadsheet typed on Windows or Linux writes é: before,
    every accented ID was "not found"."""
    for i in range(30):
        synthetic_lesion(40, seed=i).save(tmp_path / f"le\u0301sion_{i}.png")  # decomposed, as a Mac names it
    (tmp_path / "labels.csv").write_text("image_id,melanoma\n" + "".join(f"l\u00e9sion_{i},{int(i % 3 == 0)}\n"
                                                                          for i in range(30)), encoding="utf-8")
    ds = discover(tmp_path / "labels.csv").split("all")
    assert len(ds) == 30 and ds.counts() == {"benign": 20, "malignant": 10}


def test_an_images_folder_that_is_not_there_is_named(tmp_path):
    ids = isic_images(tmp_path / "images")
    (tmp_path / "labels.csv").write_text("image_id,melanoma\n" + csv_rows(ids))
    for images in (tmp_path / "imgaes", tmp_path / "labels.csv"):  # a typo; the CSV itself
        with pytest.raises(DataError, match=rf"^{re.escape(str(images))}, given as the image folder of the label "
                                            r"CSV .*labels\.csv \(--images or --extra-images\), is not a folder"):
            discover(tmp_path / "labels.csv", images)


def test_a_split_column_is_kept_and_ignored_only_when_every_image_is_evaluated(tmp_path):
    ids = isic_images(tmp_path / "images")
    (tmp_path / "labels.csv").write_text("image_id,melanoma,split\n" + "".join(
        f"{x},{i % 2},{['train', 'val', 'test'][i % 3]}\n" for i, x in enumerate(ids)))
    ds = discover(tmp_path / "labels.csv", tmp_path / "images")
    assert ds.layout == "csv_split"
    assert [p.stem for p in ds.splits["val"].paths] == ids[1::3]
    assert len(discover(tmp_path / "labels.csv", tmp_path / "images", whole=True).split("all")) == 30
    (tmp_path / "straddling.csv").write_text("image_id,lesion_id,melanoma,split\n" + "".join(
        f"{x},L{i // 2},{i % 2},{['train', 'val', 'test'][i % 3]}\n" for i, x in enumerate(ids)))
    with pytest.raises(DataError, match="has images in the"):
        discover(tmp_path / "straddling.csv", tmp_path / "images")
    # evaluated whole (--split all) or added with --extra-train, its own splits do not count
    assert len(discover(tmp_path / "straddling.csv", tmp_path / "images", whole=True).split("all")) == 30


def test_ham10000_lesions_never_straddle_splits(tmp_path):
    lines = ["lesion_id,image_id,dx"]
    for lesion in range(40):
        dx = ["mel", "nv", "bkl", "bcc"][lesion % 4]
        for k in range(1 + lesion % 3):  # one to three images of each lesion
            name = f"ISIC_{lesion:04d}{k}"
            synthetic_lesion(40, seed=lesion * 10 + k).save(tmp_path / f"{name}.jpg")
            lines.append(f"HAM_{lesion:04d},{name},{dx}")
    (tmp_path / "meta.csv").write_text("\n".join(lines) + "\n")
    ds = discover(tmp_path / "meta.csv")
    owner = {}
    for name, split in ds.splits.items():
        for group in split.groups:
            assert owner.setdefault(group, name) == name, f"lesion {group} is in two splits"
    assert len(owner) == 40


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="^The data folder is empty: "):
        discover(empty)
    odd = tmp_path / "odd"
    (odd / "dysplastic").mkdir(parents=True)
    synthetic_lesion(40).save(odd / "dysplastic" / "a.png")
    with pytest.raises(DataError, match="Unknown label 'dysplastic'"):
        discover(odd)
    with pytest.raises(DataError, match=r"a\.png is an image\. The data is a folder .* or a label CSV; python -m "
                                        r"model\.predict judges single images\.$"):
        discover(odd / "dysplastic" / "a.png")  # read as a label CSV before: "is not UTF-8 text"


def test_too_few_images_to_split_is_a_sentence_and_whole_data_is_not_split(tmp_path):
    make_class_folders(tmp_path / "nine", n=9)
    with pytest.raises(DataError, match=r"^Too few images to split \{'benign': 9, 'malignant': 9\} into training, "
                                        r"validation and test sets .* each class needs about 10 images or more"):
        discover(tmp_path / "nine")
    whole = discover(tmp_path / "nine", whole=True)  # for python -m train.evaluate --split all: no split needed
    assert (len(whole.splits["train"]), len(whole.splits["val"])) == (0, 0)
    assert whole.split("all").counts() == {"benign": 9, "malignant": 9}
    make_class_folders(tmp_path / "ten", n=10)
    split = discover(tmp_path / "ten")
    assert {name: s.counts() for name, s in split.splits.items()}["val"] == {"benign": 1, "malignant": 1}
    assert sorted(map(str, split.split("all").paths)) == sorted(map(str, (tmp_path / "ten").rglob("*.png")))
    # plenty of one class, three of the other: scikit-learn only warned, and the validation split had no melanoma
    make_class_folders(tmp_path / "rare", n=60)
    for extra in sorted((tmp_path / "rare" / "malignant").iterdir())[3:]:
        extra.unlink()
    with pytest.raises(DataError, match=r"^Too few images to split \{'benign': 60, 'malignant': 3\} into training, "
                                        r"validation and test sets with both classes in each"):
        discover(tmp_path / "rare")


def test_heic_photos_are_named_not_left_out(tmp_path):
    make_class_folders(tmp_path, n=10)
    heic = Path(__file__).parent / "fixtures" / "formats" / "lesion.heic"
    (tmp_path / "malignant" / "IMG_0042.HEIC").write_bytes(heic.read_bytes())
    with pytest.raises(DataError, match=r"^1 HEIC photo\(s\) under .*malignant \(for example IMG_0042.HEIC\) cannot "
                                        r"be read here and would be left out. Convert them to JPEG"):
        discover(tmp_path)


def test_what_macos_leaves_beside_images_is_not_taken_for_images_or_classes(tmp_path):
    """Copied from a Mac or unzipped from a Mac's zip, a data folder holds `._NAME.png` resource forks (an image's
    suffix, no image), `.DS_Store` and `__MACOSX/`: none is an image or a class, so training reads the same data."""
    make_class_folders(tmp_path / "clean", n=10)
    shutil.copytree(tmp_path / "clean", tmp_path / "mac")
    appledouble = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4000)
    for label in ("benign", "malignant"):
        (tmp_path / "mac" / label / f"._{label}_0.png").write_bytes(appledouble)
        (tmp_path / "mac" / label / ".DS_Store").write_bytes(bytes(64))
    (tmp_path / "mac" / "__MACOSX" / "benign").mkdir(parents=True)
    (tmp_path / "mac" / "__MACOSX" / "benign" / "._benign_1.png").write_bytes(appledouble)
    clean, mac = discover(tmp_path / "clean"), discover(tmp_path / "mac")
    for name in ("train", "val", "test"):
        assert [p.name for p in mac.splits[name].paths] == [p.name for p in clean.splits[name].paths]
    find_duplicates(mac)  # every file it lists reads


def test_linked_folders_are_read_and_a_link_to_nothing_is_named(tmp_path):
    """A class folder may gather images by links (`ln -s /data/clinic_a benign/clinic_a`): the linked folder's images
    are read as copies would be, a link back up does not go round for ever, and a link whose file is gone stops
    training with its name instead of a class quietly losing the image."""
    make_class_folders(tmp_path / "copied", n=10)
    make_class_folders(tmp_path / "elsewhere", n=10)
    for label in ("benign", "malignant"):
        (tmp_path / "linked" / label).mkdir(parents=True)
        (tmp_path / "linked" / label / "clinic_a").symlink_to(tmp_path / "elsewhere" / label)
        (tmp_path / "linked" / label / "clinic_a" / "again").symlink_to(tmp_path / "linked" / label)
        shutil.move(tmp_path / "copied" / label, tmp_path / "copied" / "tmp")
        (tmp_path / "copied" / label).mkdir()
        shutil.move(tmp_path / "copied" / "tmp", tmp_path / "copied" / label / "clinic_a")
    copied, linked = discover(tmp_path / "copied"), discover(tmp_path / "linked")
    for name in ("train", "val", "test"):
        assert [p.relative_to(tmp_path / "linked") for p in linked.splits[name].paths] == [
            p.relative_to(tmp_path / "copied") for p in copied.splits[name].paths]
        assert linked.splits[name].labels == copied.splits[name].labels
    find_duplicates(linked)  # every file it lists reads
    (tmp_path / "linked" / "malignant" / "gone.png").symlink_to(tmp_path / "moved_away.png")
    with pytest.raises(DataError, match=r"^1 link\(s\) under .*linked/malignant point to no file \(for example "
                                        r".*linked/malignant/gone.png, a link to .*moved_away.png\)\. Put the files "
                                        r"back or remove the links\.$"):
        discover(tmp_path / "linked")


def test_unreadable_image_is_named(tmp_path):
    make_class_folders(tmp_path, n=10)
    (tmp_path / "benign" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = discover(tmp_path)
    with pytest.raises(DataError, match="broken.jpg"):
        find_duplicates(ds)


def test_exact_and_recoloured_flipped_duplicates_are_found(tmp_path):
    make_class_folders(tmp_path, n=12)
    ds = discover(tmp_path, seed=0)
    test_img = ds.splits["test"].paths[0]
    train_dir = ds.splits["train"].paths[0].parent
    # an exact copy and a recoloured, mirrored copy of a test image, both added to train
    exact = train_dir / "copy_exact.png"
    exact.write_bytes(test_img.read_bytes())
    img = Image.open(test_img).convert("RGB")
    arr = np.asarray(ImageOps.mirror(img), dtype=np.float32) * np.array([0.8, 1.0, 1.15])
    near = train_dir / "copy_recoloured.png"
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(near)
    for p in (exact, near):
        ds.splits["train"].paths.append(p)
        ds.splits["train"].labels.append(ds.splits["test"].labels[0])
        ds.splits["train"].groups.append(p.stem)
    ds.duplicates = find_duplicates(ds)
    kinds = {(e["kind"], e["test_path"]) for e in ds.duplicates if str(test_img) in (e["path_a"], e["path_b"])}
    assert ("exact", str(test_img)) in kinds and ("near", str(test_img)) in kinds
    assert all(e["labels_agree"] for e in ds.duplicates)
    assert str(test_img) not in {str(p) for p in ds.split("test").paths}
    assert len(ds.split("test")) < len(ds.splits["test"])


def test_extra_training_images_leave_out_copies_of_validation_and_test_images(tiny_data, tmp_path):
    """--extra-train: another source's images join training only, less the copies of a val or test image of --data
    (a HAM10000-style CSV here, so bcc counts as malignant); the report and its hash name exactly what was used."""
    ds = discover(tiny_data)
    val_img, test_img = ds.splits["val"].paths[0], ds.splits["test"].paths[-1]
    extra = tmp_path / "extra"
    extra.mkdir()
    rows = ["image_id,dx,lesion_id"]
    for i, dx in enumerate(["nv", "mel", "bkl", "bcc"]):
        synthetic_lesion(64, seed=500 + i, dark=0.9 if dx in ("mel", "bcc") else 0.1).save(extra / f"new_{i}.png")
        rows.append(f"new_{i},{dx},L{i}")
    (extra / "copy_exact.png").write_bytes(test_img.read_bytes())
    img = Image.open(val_img).convert("RGB")  # a recoloured, mirrored re-upload of a validation image
    arr = np.asarray(ImageOps.mirror(img), dtype=np.float32) * np.array([0.85, 1.0, 1.1])
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(extra / "copy_recoloured.png")
    rows += ["copy_exact,mel,L8", "copy_recoloured,nv,L9"]
    (extra / "labels.csv").write_text("\n".join(rows) + "\n")

    kept, report = extra_training_images(extra / "labels.csv", None, ds)
    assert sorted(p.name for p in kept.paths) == [f"new_{i}.png" for i in range(4)]
    assert kept.counts() == report["counts"] == {"benign": 2, "malignant": 2}
    assert report["images_used"] == 4 and report["left_out_as_copies_of_val_or_test"] == 2
    assert {(e["path"], e["copy_of"]) for e in report["left_out"]} == {
        ("copy_exact.png", str(test_img.relative_to(tiny_data))),
        ("copy_recoloured.png", str(val_img.relative_to(tiny_data)))}
    assert extra_training_images(extra / "labels.csv", None, ds)[1]["hash"] == report["hash"]
    synthetic_lesion(64, seed=999).save(extra / "new_0.png")  # another picture under the same name
    assert extra_training_images(extra / "labels.csv", None, ds)[1]["hash"] != report["hash"]
    with pytest.raises(DataError, match="Unknown label"):
        (extra / "labels.csv").write_text("image_id,dx\nnew_0,xyz\n")
        extra_training_images(extra / "labels.csv", None, ds)


def test_a_duplicate_with_a_different_label_is_marked(tmp_path):
    make_class_folders(tmp_path, n=12)
    ds = discover(tmp_path, seed=0)
    test_img, label = ds.splits["test"].paths[0], ds.splits["test"].labels[0]
    copy = ds.splits["train"].paths[0].parent / "copy_relabelled.png"
    copy.write_bytes(test_img.read_bytes())
    ds.splits["train"].paths.append(copy)
    ds.splits["train"].labels.append(1 - label)
    ds.splits["train"].groups.append(copy.stem)
    pairs = [e for e in find_duplicates(ds) if str(test_img) in (e["path_a"], e["path_b"])]
    assert [(e["kind"], e["labels_agree"]) for e in pairs] == [("exact", False)]
    assert {pairs[0]["label_a"], pairs[0]["label_b"]} == {"benign", "malignant"}


def test_diagnoses_are_read_by_image_id_or_path_and_a_missing_one_is_named(tmp_path):
    by_id = tmp_path / "dx.csv"
    by_id.write_text("image_id,diagnosis\nISIC_1,nevus\nISIC_2, melanoma\n")
    by_path = tmp_path / "dx_path.csv"
    by_path.write_text("path,diagnosis\ntest/benign/ISIC_1.jpg,nevus\n")
    assert read_diagnoses(by_id) == {"ISIC_1": "nevus", "ISIC_2": "melanoma"}
    assert read_diagnoses(by_path) == {"ISIC_1": "nevus"}
    assert diagnoses_for(["x/ISIC_2.jpg", "ISIC_1.png"], read_diagnoses(by_id), by_id, "test") == ["melanoma", "nevus"]
    with pytest.raises(DataError, match="1 test images have no diagnosis in .*dx_path.csv, for example ISIC_2.jpg"):
        diagnoses_for(["ISIC_1.jpg", "ISIC_2.jpg"], read_diagnoses(by_path), by_path, "test")
    no_column = tmp_path / "labels.csv"
    no_column.write_text("image_id,melanoma\nISIC_1,0\n")
    with pytest.raises(DataError, match="has no 'diagnosis' column"):
        read_diagnoses(no_column)
    with pytest.raises(DataError, match="cannot read the diagnosis CSV"):
        read_diagnoses(tmp_path / "missing.csv")


def test_validation_from_train_is_stratified_seeded_and_keeps_copies_together(tmp_path):
    from train.data import near_duplicate_groups, validation_from_train

    seed = 0
    for split, n in (("train", 20), ("val", 4), ("test", 4)):
        for label, dark in (("benign", 0.1), ("malignant", 0.9)):
            (tmp_path / split / label).mkdir(parents=True)
            for _ in range(n):
                synthetic_lesion(48, seed=seed, dark=dark).save(tmp_path / split / label / f"img_{seed:03d}.png")
                seed += 1
    ds = discover(tmp_path)
    train = ds.splits["train"]
    pairs = []
    for i in (0, 5, 25):  # mirrored, recoloured copies of three training images, kept in training
        copy = train.paths[i].with_name(f"copy_{i}.png")
        arr = np.asarray(ImageOps.mirror(Image.open(train.paths[i]).convert("RGB")), np.float32) * [0.85, 1.0, 1.1]
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(copy)
        train.paths.append(copy), train.labels.append(train.labels[i]), train.groups.append(copy.stem)
        pairs.append((i, len(train.paths) - 1))
    val_copy = train.paths[0].with_name("copy_of_val.png")  # a training image with a copy in validation
    val_copy.write_bytes(ds.splits["val"].paths[0].read_bytes())
    train.paths.append(val_copy), train.labels.append(ds.splits["val"].labels[0]), train.groups.append("v")
    ds.duplicates = find_duplicates(ds)

    groups = near_duplicate_groups(train.paths)
    assert all(groups[a] == groups[b] for a, b in pairs)
    assert len(set(groups)) == len(train.paths) - len(pairs)  # the synthetic lesions themselves stay apart

    before = {s: validation_from_train(ds, 0.25, seed=s) for s in range(6)}
    lesions = [(1, 7), (21, 30)]  # two pictures of one lesion each (a label CSV's lesion_id), no copies of each other
    for n, (a, b) in enumerate(lesions):
        train.groups[a] = train.groups[b] = f"lesion_{n}"
    moved = {s: validation_from_train(ds, 0.25, seed=s) for s in range(6)}
    assert any(((a in m) != (b in m)) for m in before.values() for a, b in lesions)  # they moved apart
    assert all(((a in m) == (b in m)) for m in moved.values() for a, b in lesions)
    assert any(a in m for m in moved.values() for a, _ in lesions)  # moved together, not only kept together
    assert np.array_equal(moved[1], validation_from_train(ds, 0.25, seed=1))
    assert not np.array_equal(moved[1], moved[2])
    labels = np.asarray(train.labels)
    pair_moved = 0
    for m in moved.values():
        assert 3 <= (labels[m] == 0).sum() <= 8 and 3 <= (labels[m] == 1).sum() <= 8
        assert len(train.paths) - 1 not in m  # the copy of a validation image stays in training
        for a, b in pairs:
            assert (a in m) == (b in m)
            pair_moved += a in m
    assert pair_moved > 0  # the copies were moved together at least once, not only kept together
    for bad in (0.0, 0.5):
        with pytest.raises(DataError, match="--val-from-train"):
            validation_from_train(ds, bad, seed=1)


def test_copies_of_training_images_count_what_the_bundle_saw_and_not_its_test_images(tiny_data, tmp_path):
    """The images a bundle trained or was validated on, and its --extra-train images, are what an evaluation on other
    data must not score again; a copy of one of its own test images is new data to it."""
    from train.data import ALL, copies_of_training_images

    extra = tmp_path / "extra"
    make_class_folders(extra, n=2)
    clinic = tmp_path / "clinic"
    make_class_folders(clinic, n=2)  # the same seeds as the extra images: two of them copies, by their bytes
    for name in ("benign_0.png", "benign_1.png", "malignant_1.png"):
        (clinic / ("benign" if name.startswith("benign") else "malignant") / name).unlink()
    val_image = sorted((tiny_data / "val" / "benign").glob("*.png"))[0]
    test_image = sorted((tiny_data / "test" / "malignant").glob("*.png"))[0]
    ImageOps.flip(Image.open(val_image)).save(clinic / "benign" / "was_val.png")
    (clinic / "malignant" / "was_test.png").write_bytes(test_image.read_bytes())
    dataset = discover(clinic, whole=True)
    card = {"data": {"source": str(tiny_data), "hash": "another"},
            "training": {"arguments": {"seed": 3, "extra_train": str(extra)}}}
    report, copies = copies_of_training_images(card, dataset, dataset.data_hash(), ALL)
    assert report["images_compared"] == 24 + 12 + 4
    assert report["copies"] == [{"path": "benign/was_val.png", "copy_of": f"val/benign/{val_image.name}"},
                                {"path": "malignant/malignant_0.png", "copy_of": str(extra / "malignant" /
                                                                                     "malignant_0.png")}]
    assert copies == {str(clinic / "benign" / "was_val.png"), str(clinic / "malignant" / "malignant_0.png")}
    own = {"data": {"source": str(tmp_path / "gone"), "hash": dataset.data_hash()}}  # its own data: nothing to check
    assert copies_of_training_images(own, dataset, dataset.data_hash(), ALL) == (
        {"checked": True, "own_data": True, "copies": []}, set())


def test_copies_are_not_said_to_be_checked_when_the_extra_training_data_is_gone(tiny_data, tmp_path):
    """A bundle trained with --extra-train whose extra folder has moved: the check compared the images with its
    --data alone and reported them checked, no copies, though they might be the extra images it trained on."""
    from train.data import copies_of_training_images

    card = {"data": {"source": str(tiny_data), "hash": "another"},
            "training": {"arguments": {"seed": 42, "extra_train": str(tmp_path / "moved_away")}}}
    report, copies = copies_of_training_images(card, discover(tiny_data), "this data's hash", "test")
    assert report == {"checked": False, "why": f"the bundle's extra training data ({tmp_path / 'moved_away'}) is not "
                                               f"on this machine"} and copies == set()


def test_a_cards_relative_data_path_is_found_from_where_training_ran(tiny_data, monkeypatch, tmp_path):
    """Trained with --data data_split from one folder and evaluated from another: the check for copies of the
    training images said the training data was not on this machine, and scored images the bundle had trained on."""
    from train.data import copies_of_training_images

    card = {"data": {"source": tiny_data.name, "hash": "another"},
            "training": {"arguments": {"seed": 42}, "cwd": str(tiny_data.parent)}}
    monkeypatch.chdir(tmp_path)  # elsewhere
    report, copies = copies_of_training_images(card, discover(tiny_data), "this data's hash", "train")
    assert report["checked"] and report["source"] == str(tiny_data)
    assert len(copies) == len(discover(tiny_data).splits["train"])  # its training images, scored again: all found
    del card["training"]["cwd"]  # a card from before: looked for from here, and said so
    assert copies_of_training_images(card, discover(tiny_data), "this data's hash", "train")[0]["checked"] is False
