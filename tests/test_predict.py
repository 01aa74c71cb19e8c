"""`python -m model.predict`: files and folders judged as the app judges uploads, one row per file, none lost."""
import base64
import csv
import io
import shutil

import numpy as np
import pytest
import skimage.data
from PIL import Image

from model.predict import main
from tests.conftest import FIXTURES, ISIC_FIXTURES, encode, full_images_alive_when_judged


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The ISIC fixtures in a clinic's kind of folder, beside what such folders also hold."""
    root = tmp_path_factory.mktemp("clinic")
    shutil.copytree(ISIC_FIXTURES, root / "lesions")
    (root / "lesions" / "ATTRIBUTION.md").unlink()
    (root / "other").mkdir()
    (root / "other" / "notes.jpg").write_text("not an image")
    (root / "other" / "cut.JPG").write_bytes((ISIC_FIXTURES / "benign" / "ISIC_0014574.jpg").read_bytes()[:3000])
    (root / "other" / "cat.png").write_bytes(encode(Image.fromarray(skimage.data.chelsea()), "PNG"))
    shutil.copy(FIXTURES / "formats" / "lesion.heic", root / "other" / "phone.HEIC")
    (root / "other" / "readme.txt").write_text("not looked at: not an image suffix")
    (root / ".hidden").mkdir()
    shutil.copy(ISIC_FIXTURES / "benign" / "ISIC_0014574.jpg", root / ".hidden" / "copy.jpg")
    appledouble = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4000)  # macOS's metadata, no image
    (root / "lesions" / "benign" / "._ISIC_0014574.jpg").write_bytes(appledouble)
    (root / "__MACOSX" / "lesions").mkdir(parents=True)  # where macOS's zip files keep them
    (root / "__MACOSX" / "lesions" / "._ISIC_0013473.jpg").write_bytes(appledouble)
    return root


@pytest.fixture(scope="module")
def judged(folder):
    out = folder.parent / "predictions.csv"
    rows = main([str(folder), "--out", str(out), "--heatmaps", str(folder.parent / "heatmaps")])
    return rows, list(csv.DictReader(open(out)))


def test_every_image_file_gets_a_row_and_the_rest_are_left_out(folder, judged):
    rows, written = judged
    names = [row["file"] for row in written]
    assert names == [r["file"] for r in rows] == sorted(names)
    assert len(rows) == 8 + 4  # the eight lesions, then the four image-named files beside them
    assert not any(".hidden" in n or "._" in n or "MACOSX" in n or n.endswith((".txt", ".md")) for n in names)


def test_each_lesion_gets_the_apps_answer_for_the_same_file(client, folder, judged):
    rows, _ = judged
    lesions = [r for r in rows if "/lesions/" in r["file"]]
    assert len(lesions) == 8
    for row in lesions:
        with open(row["file"], "rb") as f:
            data = f.read()
        res = client.post("/api/v1/predict", data={"image": [(io.BytesIO(data), "x.jpg")]},
                          content_type="multipart/form-data")
        [api] = res.get_json()["predictions"]
        assert row["verdict"] == api["label"]
        assert row["probability_malignant"] == pytest.approx(api["probability_malignant"], abs=1e-6)
        assert row["indeterminate"] == api["indeterminate"]
        assert row["cautions"] == ";".join(c["code"] for c in api["cautions"])
    assert {r["verdict"] for r in lesions if "/malignant/" in r["file"]} == {"malignant"}  # the fixture melanomas


def test_each_verdict_gets_the_heatmap_the_app_shows_for_the_same_file(client, folder, judged):
    rows, written = judged
    pictures = sorted((folder.parent / "heatmaps").iterdir())
    assert [r["heatmap"] for r in written if r["heatmap"]] == [str(p) for p in pictures]
    assert len(pictures) == 8 and not any(r["heatmap"] for r in written if r["verdict"] in ("refused", "unreadable"))
    row = next(r for r in rows if r["file"].endswith("ISIC_0014181.jpg"))
    with open(row["file"], "rb") as f:
        res = client.post("/api/v1/predict?explain=1", data={"image": [(io.BytesIO(f.read()), "m.jpg")]},
                          content_type="multipart/form-data")
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(res.get_json()["predictions"][0]["heatmap"]))))
    np.testing.assert_array_equal(np.asarray(Image.open(row["heatmap"])), shown)


def test_files_that_are_not_lesions_or_not_images_get_their_reason(judged):
    rows, written = judged
    other = {r["file"].rsplit("/", 1)[1]: (r["verdict"], r["code"]) for r in rows if "/other/" in r["file"]}
    assert other == {"cat.png": ("refused", "not_a_lesion"), "cut.JPG": ("unreadable", "corrupt_image"),
                     "notes.jpg": ("unreadable", "not_an_image"), "phone.HEIC": ("unreadable", "unsupported_format")}
    assert all(r["reason"] for r in rows if r["verdict"] in ("refused", "unreadable"))
    heic = next(r for r in written if r["file"].endswith("phone.HEIC"))
    assert "JPEG" in heic["reason"] and heic["probability_malignant"] == ""


def test_the_printed_table_counts_what_it_judged(folder, capsys):
    main([str(folder / "other")])
    out = capsys.readouterr().out
    assert "4 files: 0 malignant (suspicious), 0 benign, 1 refused by the gate, 3 not readable as images" in out


def test_rows_are_written_as_they_come_so_an_interrupted_run_keeps_them(folder, tmp_path, monkeypatch, capsys):
    import model.predict as predict
    from model.inference import Predictor

    monkeypatch.setattr(predict, "CHUNK", 3)
    judged_chunks = []
    real_assess = Predictor.assess

    def assess_then_stop(self, images):  # the power goes off after the second chunk
        if len(judged_chunks) == 2:
            raise KeyboardInterrupt
        judged_chunks.append(len(images))
        return real_assess(self, images)

    monkeypatch.setattr(Predictor, "assess", assess_then_stop)
    out = tmp_path / "rows.csv"
    with pytest.raises(SystemExit) as stopped:
        main([str(folder / "lesions"), "--out", str(out)])
    assert len(list(csv.DictReader(open(out)))) == 6  # two chunks of three, each written when judged
    err = capsys.readouterr().err
    assert "3 of 8 files judged" in err and stopped.value.code == 130  # Ctrl-C's status, and a line, no traceback
    assert err.endswith(f"stopped (Ctrl-C) after 6 of 8 files; {out} keeps their rows.\n")


def test_a_csv_over_a_file_of_the_bundle_is_refused(tmp_path, capsys):
    """`--out` naming the bundle's card wrote the CSV over it, and the bundle was refused from then on."""
    from model.bundle import DEFAULT_BUNDLE

    for p in DEFAULT_BUNDLE.parent.iterdir():
        shutil.copyfile(p, tmp_path / p.name)
    card = (tmp_path / DEFAULT_BUNDLE.name).with_suffix(".json")
    before = card.read_bytes()
    with pytest.raises(SystemExit) as stopped:
        main([str(ISIC_FIXTURES), "--model", str(tmp_path / DEFAULT_BUNDLE.name), "--out", str(card)])
    assert stopped.value.code == 2 and card.read_bytes() == before
    assert f"error: --out {card} is a file of the bundle {tmp_path / DEFAULT_BUNDLE.name}: writing the CSV there " \
        "would replace it." in capsys.readouterr().err


@pytest.mark.parametrize("case, words", [
    ("missing path", "is neither an image file nor a folder"),
    ("empty folder", "No image files (.bmp, .jpeg"),
    ("missing bundle", "Model bundle not found"),
    ("CSV that cannot be written", "cannot write"),
    ("heatmap folder that cannot be made", "cannot write"),
    ("CSV over an image to judge", "is one of the images to judge: writing the CSV there would replace the image"),
    ("heatmaps beside the images", "is among the images to judge: the heatmaps would mix with them"),
    ("heatmaps under a folder judged", "is among the images to judge: the heatmaps would mix with them"),
])
def test_a_mistake_is_one_sentence_and_status_2(tmp_path, capsys, case, words):
    (tmp_path / "empty").mkdir()
    argv = {"missing path": [str(tmp_path / "nowhere")], "empty folder": [str(tmp_path / "empty")],
            "missing bundle": [str(ISIC_FIXTURES), "--model", str(tmp_path / "none.keras")],
            "CSV that cannot be written": [str(ISIC_FIXTURES), "--out", str(tmp_path / "empty" / "x.csv" / "y.csv")],
            "heatmap folder that cannot be made": [str(ISIC_FIXTURES), "--heatmaps", str(tmp_path / "empty" / "x.csv")],
            "CSV over an image to judge": [str(tmp_path / "lesion.jpg"), str(tmp_path / "other.jpg"), "--out",
                                           str(tmp_path / "." / "other.jpg")],  # emptied before, the image lost
            "heatmaps beside the images": [str(tmp_path / "lesion.jpg"), "--heatmaps", str(tmp_path)],
            "heatmaps under a folder judged": [str(tmp_path), "--heatmaps", str(tmp_path / "maps")],  # judged next time
            }[case]
    for name in ("lesion.jpg", "other.jpg"):
        shutil.copyfile(next(ISIC_FIXTURES.rglob("*.jpg")), tmp_path / name)
    image = (tmp_path / "other.jpg").read_bytes()
    if case in ("CSV that cannot be written", "heatmap folder that cannot be made"):
        (tmp_path / "empty" / "x.csv").write_text("a file where a folder would have to be")
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith("error: ") and words in err and "Traceback" not in err
    assert (tmp_path / "other.jpg").read_bytes() == image and not (tmp_path / "maps").exists()


def test_a_chunk_of_files_is_judged_without_holding_each_image_whole(app, folder, monkeypatch, tmp_path):
    """32 files were decoded and held whole until the chunk was judged: 32 photos of 48 megapixels, 4.6 GB. Now each
    is let go once it is prepared for the network (and shrunk for its heatmap): none is alive when the network runs."""
    from model.predict import judge

    decoded, alive_at_assess = full_images_alive_when_judged(monkeypatch, app.extensions["melanoma_model"].predictor)
    files = sorted((folder / "lesions").rglob("ISIC_*.jpg"))
    chunks = judge(app.extensions["melanoma_model"].predictor, files, heatmaps=tmp_path)
    rows = [row for chunk in chunks for row in chunk][-len(files):]
    assert len(decoded) == len(files) == 8 and alive_at_assess == [0], alive_at_assess
    assert all(row.get("heatmap") for row in rows if row["verdict"] in ("benign", "malignant"))
