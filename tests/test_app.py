"""The web app on the real shipped model: pages, API, and every bad input with its status and sentence."""
import io
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import create_app
from model.bundle import DEFAULT_BUNDLE
from tests.conftest import (encode, full_images_alive_when_judged, lesion_fixtures, synthetic_lesion,
                            tiff_with_a_fractional_strip_offset, with_a_mistyped_exif_tag)
from web.service import NEXT_STEP


def upload(client, url, files, **kwargs):
    data = {"image": [(io.BytesIO(content), name) for name, content in files]}
    return client.post(url, data=data, content_type="multipart/form-data", **kwargs)


def lesion_in_mode(jpeg: bytes, mode: str, fmt: str) -> bytes:
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    if mode == "I;16":
        return encode(Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257), fmt)
    return encode(img.convert(mode), fmt)


def test_upload_page(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'type="file"' in html and "JPEG, PNG" in html and "not a diagnosis" in html
    assert "The image is analysed in memory and not stored." in html and "keeps a copy" not in html


def test_the_about_page_says_when_the_server_averages_other_views_than_the_results_were_measured_with():
    """With MELANOMA_TTA_VIEWS=8 the page described the 1-view results and their calibration as the server's."""
    html = create_app({"TESTING": True, "TTA_VIEWS": 8}).test_client().get("/about").get_data(as_text=True)
    assert 'id="tta-differs"' in html and "This server averages 8" in html and "measured with 1 view" in html
    assert "python -m train.evaluate --tta 8" in html


def test_about_page_shows_the_model_card(client, app):
    html = client.get("/about").get_data(as_text=True)
    card = app.extensions["melanoma_model"].card
    assert f"{card['test']['roc_auc']:.3f}" in html and 'id="tta-differs"' not in html  # the views it was measured with
    assert f"on the {card['validation']['n_malignant']} melanomas of" in html  # what the threshold rests on
    # the images it learnt from, not those of the training split: --val-from-train moves some to validation
    trained_on = card["data"].get("train_images_used") or sum(card["data"]["counts"]["train"].values())
    assert f"fine-tuned on\n{trained_on:,} dermoscopic images" in html
    assert "Intended use" in html and "Known limits" in html and "comes with a caution" in html
    # the shipped network was trained without the frame fill: the page warns about dermoscope frames
    assert ("black circular frame" in html) == (not card["preprocessing"].get("frame_fill", False))
    # what a suspicious verdict is worth, from the card's confusion matrix (shipped: 107 of 384 flagged, 28%)
    [[_, false_alarms], [_, caught]] = card["test"]["confusion_matrix"]["rows_true_cols_predicted"]
    share = caught / (caught + false_alarms)
    assert f"Most suspicious results\n    are false alarms: it flagged {1 - card['test']['specificity']:.0%} of" in html
    assert f"of the {caught + false_alarms}\n    test lesions it called suspicious, {caught} ({share:.0%})" in html


def client_with_card(tmp_path, edit):
    """A test client of the app serving a copy of the shipped bundle whose card is `edit(card)`."""
    import json

    from app import create_app
    from model.bundle import DEFAULT_BUNDLE, copy_bundle

    path = copy_bundle(DEFAULT_BUNDLE, tmp_path / "edited" / "melanoma_efficientnet.keras")
    card = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps(edit(card)))
    return create_app({"TESTING": True, "MODEL_PATH": str(path)}).test_client()


def test_about_page_says_most_alarms_are_false_only_when_they_are(tmp_path):
    def few_false_alarms(card):
        card["test"]["confusion_matrix"]["rows_true_cols_predicted"] = [[460, 8], [20, 94]]
        return card

    html = client_with_card(tmp_path, few_false_alarms).get("/about").get_data(as_text=True)
    assert "Some suspicious results\n    are false alarms" in html and "Most suspicious" not in html
    assert "of the 102\n    test lesions it called suspicious, 94 (92%) were melanomas" in html


def test_about_page_of_a_card_that_records_only_what_serving_needs_says_so(tmp_path):
    """A card from elsewhere, with what serving needs and no more: the about page was a 500; now it says what the
    card does not record, and the app serves the bundle as before."""
    needed = ("class_names", "backbone", "threshold", "preprocessing", "gate", "temperature", "version", "name")
    client = client_with_card(tmp_path, lambda card: {k: card[k] for k in needed})
    res = client.get("/about")
    assert res.status_code == 200
    html = res.get_data(as_text=True)
    assert ("Its model card does not record data, test, validation, created, target_sensitivity, intended_use, so "
            "how it was trained") in " ".join(html.split())
    assert "at least 9.0%" in html and "Intended use" in html and "Known limits" not in html
    one_missing = client_with_card(tmp_path / "b", lambda card: {**card, "test": {**card["test"], "ece": None}})
    assert "does not record test.ece, so" in " ".join(one_missing.get("/about").get_data(as_text=True).split())


def test_about_page_says_when_images_are_judged_through_a_turned_view(client, tmp_path):
    assert "turned by" not in client.get("/about").get_data(as_text=True)  # the shipped bundle: upright
    turned = client_with_card(tmp_path, lambda card: {**card, "view_turns": [45.0]})
    html = turned.get("/about").get_data(as_text=True)
    assert "its view turned by 45°" in html and "not-a-lesion check were fitted on those views" in html
    assert turned.get("/healthz").status_code == 200


def test_about_page_describes_a_bundle_trained_on_other_data_by_its_own_card(client, tmp_path):
    """A developer serving a bundle trained on their own data gets a page about that bundle, not about ISIC 2017."""
    shipped = client.get("/about").get_data(as_text=True)
    assert "EfficientNet-Lite0 network fine-tuned on" in shipped and "of the ISIC 2017 challenge" in shipped
    assert "basal or squamous cell carcinoma" in shipped and "below the project's own target" in shipped

    def own(card):
        data = {**card["data"], "source": "/srv/clinic_2025", "shortcut_cues": {  # ink common, the ring rare
            "skin_marker_ink": {"train_images_with_cue": 400}, "dark_corners": {"train_images_with_cue": 3}}}
        return {**card, "data": data, "initial_weights": "none", "test": {**card["test"], "roc_auc": 0.93}}

    html = client_with_card(tmp_path, own).get("/about").get_data(as_text=True)
    assert "network trained from scratch on" in html and "of <code>clinic_2025</code>" in html
    assert "ISIC" not in html and "basal or squamous" not in html and "where the labels of its training data" in html
    assert "below the project" not in html  # AUC 0.93 meets the target
    assert "Pictures with a contact dermoscope&#39;s dark ring were rare" in html and "skin-marker ink" not in html


def test_about_page_names_the_extra_training_data_and_keeps_the_isic_test_split(tmp_path):
    """A bundle trained on ISIC 2017 plus --extra-train HAM10000 (where bcc counts as malignant): the page names both
    sources and no longer claims ISIC-only training or that basal cell carcinoma was never seen."""
    def with_extra(card):
        extra = {"source": "/data/ham10000/HAM10000_metadata.csv", "images_used": 9000, "hash": "0" * 64}
        return {**card, "data": {**card["data"], "extra_train": extra}}

    html = client_with_card(tmp_path, with_extra).get("/about").get_data(as_text=True)
    assert "of <code>isic2017</code> and <code>HAM10000_metadata.csv</code>, created" in html
    assert "The ISIC 2017 test split" in html  # what it is measured on has not changed
    assert "from the ISIC archive" not in html and "basal or squamous" not in html


def test_healthz(client, app):
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok" and body["version"] == app.extensions["melanoma_model"].bundle.version


def test_api_predicts_real_lesions(client, app):
    files = [(p.name, p.read_bytes()) for p in lesion_fixtures("benign") + lesion_fixtures("malignant")]
    res = upload(client, "/api/v1/predict", files)
    assert res.status_code == 200
    body = res.get_json()
    assert body["model"]["version"] == app.extensions["melanoma_model"].bundle.version
    assert body["model"]["view_turns"] == list(app.extensions["melanoma_model"].predictor.turns)
    preds = body["predictions"]
    assert [p["filename"] for p in preds] == [name for name, _ in files]
    threshold = app.extensions["melanoma_model"].predictor.threshold
    for p in preds:
        assert set(p) == {"filename", "label", "probability_malignant", "confidence", "threshold", "indeterminate",
                          "cautions"}
        assert p["label"] == ("malignant" if p["probability_malignant"] >= threshold else "benign")
        malignant = p["label"] == "malignant"
        assert p["confidence"] == (p["probability_malignant"] if malignant else 1.0 - p["probability_malignant"])
    by_name = {p["filename"]: p for p in preds}
    benign = [by_name[f.name]["probability_malignant"] for f in lesion_fixtures("benign")]
    malignant = [by_name[f.name]["probability_malignant"] for f in lesion_fixtures("malignant")]
    assert min(malignant) > max(benign), "the fixture melanomas should score above the fixture naevi"
    assert all(by_name[f.name]["label"] == "malignant" for f in lesion_fixtures("malignant"))


def test_api_probability_is_the_networks_softmax_through_the_cards_calibration(client, app):
    """Worked out here from the Keras network and the card, apart from the serving code: softmax(log p / T) with the
    card's logit bias on the malignant logit, each image preprocessed by the one path."""
    from model.bundle import CLASS_NAMES
    from model.preprocessing import PreprocessSpec, preprocess

    bundle = app.extensions["melanoma_model"].bundle
    temperature, bias = bundle.card["temperature"], bundle.card.get("logit_bias", 0.0)
    assert temperature != pytest.approx(1.0, abs=0.02)  # else this test could not tell a skipped temperature
    spec = PreprocessSpec.from_dict(bundle.card["preprocessing"])
    paths = lesion_fixtures("benign") + lesion_fixtures("malignant")
    probs = np.asarray(bundle.model(np.stack([preprocess(p.read_bytes(), spec) for p in paths]), training=False),
                       np.float64)
    m, b = CLASS_NAMES.index("malignant"), CLASS_NAMES.index("benign")
    log_odds = (np.log(probs[:, m]) - np.log(probs[:, b])) / temperature + bias
    expected = 1.0 / (1.0 + np.exp(-log_odds))
    served = [p["probability_malignant"] for p in
              upload(client, "/api/v1/predict", [(p.name, p.read_bytes()) for p in paths]).get_json()["predictions"]]
    np.testing.assert_allclose(served, expected, atol=2e-3)


def test_same_image_same_answer_in_one_batch_and_alone(client, malignant_jpeg, benign_jpeg):
    alone = upload(client, "/api/v1/predict", [("m.jpg", malignant_jpeg)]).get_json()["predictions"][0]
    batch = upload(client, "/api/v1/predict", [("b.jpg", benign_jpeg), ("m.jpg", malignant_jpeg)]).get_json()
    assert abs(batch["predictions"][1]["probability_malignant"] - alone["probability_malignant"]) < 1e-4


def test_result_page(client, malignant_jpeg):
    res = upload(client, "/predict", [("lesion.jpg", malignant_jpeg)])
    assert res.status_code == 200
    html = res.get_data(as_text=True)
    assert "Malignant — suspicious" in html and NEXT_STEP["malignant"] in html and NEXT_STEP["benign"] not in html
    assert re.search(r"\d+\.\d%", html) and "data:image/jpeg;base64," in html
    assert "not a diagnosis" in html


def test_the_result_page_shows_a_probability_near_the_threshold_apart_from_it():
    """At one decimal each, a lesion scored 0.0899 against the threshold 0.0902 read "Probability of melanoma: 9.0%
    ... below the decision threshold of 9.0%", on the page and on the printed record."""
    from web.views import percentages
    assert percentages(0.794, 0.0902) == ("79.4", "9.0")
    assert percentages(0.0899275, 0.0901729) == ("8.99", "9.02")
    assert percentages(0.0902, 0.09017) == ("9.020", "9.017")
    assert percentages(0.09, 0.09) == ("9.0000", "9.0000")  # at the threshold: "at or above" it, as the page says


def test_result_page_says_when_it_was_analysed_for_a_printed_record(client, malignant_jpeg):
    before = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    html = upload(client, "/predict", [("lesion.jpg", malignant_jpeg)]).get_data(as_text=True)
    after = datetime.now(timezone.utc)
    [stamp] = re.findall(r'<span id="analysed">([^<]*)</span>', html)
    analysed = datetime.strptime(stamp, "%Y-%m-%d %H:%M UTC").replace(tzinfo=timezone.utc)
    assert before <= analysed <= after
    assert 'id="print-result"' in html


def test_result_page_for_a_benign_lesion(client, benign_jpeg):
    html = upload(client, "/predict", [("lesion.jpg", benign_jpeg)]).get_data(as_text=True)
    assert ">Benign<" in html and NEXT_STEP["benign"] in html and NEXT_STEP["malignant"] not in html


def test_one_bad_file_among_good_ones_is_rejected_alone(client, benign_jpeg):
    res = upload(client, "/api/v1/predict", [("ok.jpg", benign_jpeg), ("notes.txt", b"hello")])
    assert res.status_code == 200
    ok, bad = res.get_json()["predictions"]
    assert ok["label"] in ("benign", "malignant")
    assert bad == {"filename": "notes.txt", "rejected": True, "reason": bad["reason"], "code": "not_an_image"}


HEIC = Path(__file__).parent / "fixtures" / "formats" / "lesion.heic"  # an iPhone-format photo
BAD_INPUTS = [
    # (id, payload builder, status, code, words in the message)
    ("empty file", lambda j, b: b"", 400, "empty_file", "empty"),
    ("text file", lambda j, b: b"patient notes\n" * 20, 400, "not_an_image", "not an image"),
    ("pdf", lambda j, b: b"%PDF-1.4\n%\xe2\xe3\n1 0 obj<<>>endobj\n", 400, "not_an_image", "not an image"),
    ("truncated jpeg", lambda j, b: j[: len(j) // 2], 400, "corrupt_image", "damaged or truncated"),
    ("garbage after jpeg header", lambda j, b: j[:200] + bytes(range(256)) * 4, 400, "corrupt_image", "damaged"),
    ("tiff pillow fails to load", lambda j, b: tiff_with_a_fractional_strip_offset(Image.open(io.BytesIO(j))), 400,
     "corrupt_image", "damaged"),  # Pillow's TypeError was a 500
    ("ico format", lambda j, b: encode(synthetic_lesion(64), "ICO"), 415, "unsupported_format", "not supported"),
    ("ppm format", lambda j, b: encode(synthetic_lesion(64), "PPM"), 415, "unsupported_format", "not supported"),
    ("heic photo", lambda j, b: HEIC.read_bytes(), 415, "unsupported_format", "Export it as JPEG"),
    ("dicom file", lambda j, b: bytes(128) + b"DICM" + bytes(300), 415, "unsupported_format", "DICOM"),
    ("decompression bomb", lambda j, b: b, 400, "too_many_pixels", "megapixels"),
    ("tiny image", lambda j, b: encode(Image.new("RGB", (12, 12), (200, 150, 120)), "PNG"), 400, "too_small", "pixels"),
    ("animated gif", lambda j, b: encode(synthetic_lesion(64), "GIF", save_all=True,
                                         append_images=[synthetic_lesion(64, seed=1)]), 400, "multi_frame", "single"),
]


@pytest.mark.parametrize("name, build, status, code, words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("url", ["/api/v1/predict", "/predict"])
def test_bad_inputs(client, url, name, build, status, code, words, malignant_jpeg, bomb_png):
    res = upload(client, url, [("upload.bin", build(malignant_jpeg, bomb_png))])
    assert res.status_code == status
    if url.startswith("/api"):
        body = res.get_json()
        assert body["code"] == code and words in body["error"] and body["error"].endswith(".")
    else:
        html = res.get_data(as_text=True)
        assert words in html and "Traceback" not in html and 'id="error-message"' in html


@pytest.mark.parametrize("url", ["/api/v1/predict", "/predict"])
def test_no_file(client, url):
    res = client.post(url, data={}, content_type="multipart/form-data")
    assert res.status_code == 400
    assert "No image was uploaded" in res.get_data(as_text=True)


@pytest.mark.parametrize("url", ["/api/v1/predict", "/predict"])
def test_a_file_in_another_field_is_named_in_the_answer(client, malignant_jpeg, url):
    res = client.post(url, data={"file": [(io.BytesIO(malignant_jpeg), "m.jpg")]}, content_type="multipart/form-data")
    assert res.status_code == 400
    braces = client.post(url, data={"{0}{x}": [(io.BytesIO(malignant_jpeg), "m.jpg")]},
                         content_type="multipart/form-data")  # the name is the client's: never a format string
    assert braces.status_code == 400 and "sent a file in the" in braces.get_data(as_text=True)
    if url.startswith("/api"):
        assert res.get_json()["code"] == "no_file" and res.get_json()["error"].endswith(
            "in the 'image' field (for example curl -F image=@lesion.jpg). This request sent a file in the 'file' field.")
    else:
        assert "field. This request sent a file in the &#39;file&#39; field." in res.get_data(as_text=True)


@pytest.mark.parametrize("value", ["ture", "2", "", "on please"])
def test_a_mistyped_explain_flag_is_refused_not_read_as_no(client, malignant_jpeg, value):
    res = upload(client, f"/api/v1/predict?explain={value}", [("m.jpg", malignant_jpeg)])
    assert res.status_code == 400 and res.get_json()["code"] == "bad_parameter"
    assert "'explain' must be 1 or 0" in res.get_json()["error"] and f"received '{value}'" in res.get_json()["error"]


@pytest.mark.parametrize("value, heatmap", [("1", True), ("TRUE", True), ("yes", True), ("0", False),
                                            ("false", False), ("No", False)])
def test_the_explain_flag_takes_yes_and_no_in_words_or_digits(client, malignant_jpeg, value, heatmap):
    res = upload(client, f"/api/v1/predict?explain={value}", [("m.jpg", malignant_jpeg)])
    assert res.status_code == 200 and ("heatmap" in res.get_json()["predictions"][0]) == heatmap


@pytest.mark.parametrize("mimetype", ["image/jpeg", "application/octet-stream"])
def test_an_image_sent_as_the_whole_body_is_told_to_send_a_form(client, malignant_jpeg, mimetype):
    res = client.post("/api/v1/predict", data=malignant_jpeg, content_type=mimetype)  # curl --data-binary @lesion.jpg
    assert res.status_code == 400 and res.get_json()["code"] == "no_file"
    assert res.get_json()["error"].endswith(f"(for example curl -F image=@lesion.jpg). This request sent its body as "
                                            f"{mimetype}, not as a form.")


def multipart_body(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und") -> bytes:
    """A multipart/form-data body by hand: (field, filename or None for a text field, content) per part."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_a_form_that_is_not_read_as_sent_says_how_it_went_wrong(client, malignant_jpeg):
    """Each of these carried a whole image and was told "No image was uploaded. Send ... as multipart/form-data",
    which it had done; or, over 500 kB as text, that it was larger than the 20 MB limit."""
    def post(body: bytes, content_type: str = "multipart/form-data; boundary=b0und"):
        return client.post("/api/v1/predict", data=body, content_type=content_type)

    small = encode(Image.open(io.BytesIO(malignant_jpeg)).resize((64, 64)), "PNG")
    answers = {
        "as text": post(multipart_body([("image", None, small)])),  # curl -F image=<lesion.png, without the @
        "no boundary": post(multipart_body([("image", "l.png", small)]), "multipart/form-data"),  # a header by hand
        "another boundary": post(multipart_body([("image", "l.png", small)], boundary="other")),
    }
    ends = {"as text": "This request sent the 'image' field as text, not as a file.",
            "no boundary": "This request's Content-Type names multipart/form-data without its boundary (a header set "
                           "by hand: leave it to the client library, which adds the boundary).",
            "another boundary": "Its multipart/form-data body could not be read: its parts do not follow the boundary "
                                "its Content-Type names, or it is malformed."}
    for name, res in answers.items():
        assert res.status_code == 400 and res.get_json()["code"] == "no_file", name
        assert res.get_json()["error"].endswith(ends[name]), (name, res.get_json())
    big = post(multipart_body([("image", None, b"data:image/png;base64," + b"A" * 600_000)]))  # a data URL as text
    assert big.status_code == 413 and big.get_json() == {"code": "form_too_large", "error": (
        "A text field of the form is larger than 500,000 bytes, or the form has more than 1,000 parts. Send the image "
        "as a file in the 'image' field (for example curl -F image=@lesion.jpg); an image sent as text, or as a data "
        "URL, is not read.")}
    whole = post(multipart_body([("image", "l.png", small)]))  # the same, sent right
    assert whole.status_code == 200 and whole.get_json()["predictions"][0]["filename"] == "l.png"


def test_an_api_client_sending_json_is_told_to_send_multipart(client):
    res = client.post("/api/v1/predict", json={"image": "aGVsbG8="})  # base64 in JSON is not how images come in
    assert res.status_code == 400 and res.get_json()["code"] == "no_file"
    assert "as multipart/form-data in the 'image' field" in res.get_json()["error"]


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("RGBA", "PNG"), ("RGB", "WEBP"), ("RGB", "TIFF"),
                                       ("RGB", "BMP")])
def test_valid_but_unusual_images_are_converted(client, malignant_jpeg, mode, fmt):
    res = upload(client, "/api/v1/predict", [(f"lesion.{fmt.lower()}", lesion_in_mode(malignant_jpeg, mode, fmt))])
    assert res.status_code == 200, res.get_json()
    assert res.get_json()["predictions"][0]["label"] == "malignant"


def test_a_readable_image_with_a_damaged_exif_tag_is_judged(client, malignant_jpeg):
    """Its pixels and its orientation read; a mistyped tag elsewhere in the EXIF block (where Pillow's exif_transpose
    raised struct.error, a 500) changes nothing: the verdict of the same file with that tag intact."""
    stored_turned = Image.open(io.BytesIO(malignant_jpeg)).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    damaged = with_a_mistyped_exif_tag(stored_turned, orientation=6)
    intact = damaged.replace(b"\x01\x01\x00\x02", b"\x01\x0f\x00\x02", 1)  # the tag back to Make, ASCII
    res = upload(client, "/api/v1/predict", [("intact.jpg", intact), ("damaged_exif.jpg", damaged)])
    assert res.status_code == 200, res.get_json()
    intact, damaged = res.get_json()["predictions"]
    assert damaged["label"] == intact["label"] == "malignant"
    assert damaged["probability_malignant"] == intact["probability_malignant"]


@pytest.mark.parametrize("mode", ["L", "I;16", "P"])
def test_colour_poor_images_are_decoded_then_judged_by_the_gate(client, malignant_jpeg, mode):
    """Greyscale, 16-bit and palette files are valid images (no 4xx); whether the model can judge a lesion
    without its true colours is the gate's call, answered in the normal 200 response."""
    res = upload(client, "/api/v1/predict", [("lesion.png", lesion_in_mode(malignant_jpeg, mode, "PNG"))])
    assert res.status_code == 200, res.get_json()
    pred = res.get_json()["predictions"][0]
    assert pred.get("label") in ("benign", "malignant") or pred["code"] == "not_a_lesion"


def test_file_over_the_size_limit_is_413(malignant_jpeg):
    app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, "MAX_CONTENT_LENGTH": 64 * 1024})
    client = app.test_client()
    big = malignant_jpeg + b"\0" * (100 * 1024)
    for url in ("/api/v1/predict", "/predict"):
        res = upload(client, url, [("big.jpg", big)])
        assert res.status_code == 413
        assert "larger than the 64 KB limit" in res.get_data(as_text=True)


def test_too_many_files(client, benign_jpeg):
    res = upload(client, "/api/v1/predict", [(f"{i}.jpg", benign_jpeg) for i in range(17)])
    assert res.status_code == 400 and res.get_json()["code"] == "too_many_files"
    res = upload(client, "/api/v1/predict", [(f"{i}.jpg", benign_jpeg) for i in range(16)])  # the limit itself
    assert res.status_code == 200 and len(res.get_json()["predictions"]) == 16


def test_a_request_of_many_images_holds_no_full_image_while_they_are_judged(app, client, malignant_jpeg,
                                                                           monkeypatch):
    """Every upload of a request was decoded and kept whole until all were judged: 16 single-colour lossless WebP
    files of 64 megapixels (2.5 kB each, 42 kB in all) took a worker from 0.9 to 5.6 GB. Now each is let go once it
    is prepared for the network: when the network runs, no decoded upload is alive, and the verdicts, previews and
    heatmaps are what they were."""
    predictor = app.extensions["melanoma_model"].predictor
    decode = predictor.decode
    decoded, alive_at_assess = full_images_alive_when_judged(monkeypatch, predictor)
    big = encode(Image.open(io.BytesIO(malignant_jpeg)).resize((1600, 1200)), "PNG")
    res = upload(client, "/api/v1/predict?explain=1", [(f"{i}.png", big) for i in range(4)])
    assert res.status_code == 200 and len(decoded) == 4 and alive_at_assess == [0], alive_at_assess
    from model.explain import png_base64, shown_heatmap
    judged = res.get_json()["predictions"][3]
    service = app.extensions["melanoma_model"]
    assert judged["heatmap"] == png_base64(shown_heatmap(service.cam, predictor, decode(big)))  # from the full image
    assert judged["probability_malignant"] == pytest.approx(predictor.assess([decode(big)])[0]["probability_malignant"],
                                                            abs=1e-4)


def test_the_page_takes_one_image_and_says_where_several_go(tmp_path, benign_jpeg, malignant_jpeg):
    """The page shows one result, so it judges one image: two files (a hand-made form; the page's own sends one) are
    a 400 with a sentence pointing to the API, and nothing is judged or kept."""
    app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, "KEEP_UPLOADS": True,
                      "UPLOAD_FOLDER": str(tmp_path / "kept")})
    client = app.test_client()
    res = upload(client, "/predict", [("a.jpg", benign_jpeg), ("b.jpg", malignant_jpeg)])
    html = res.get_data(as_text=True)
    assert res.status_code == 400 and "Traceback" not in html
    assert "This page analyses one image at a time; received 2. The API, POST /api/v1/predict, takes up to 16" in html
    assert not (tmp_path / "kept").exists() or not any((tmp_path / "kept").iterdir())
    res = upload(client, "/predict", [("b.jpg", malignant_jpeg)])
    assert res.status_code == 200 and len(list((tmp_path / "kept").iterdir())) == 1


def test_unknown_route_is_a_404_page_and_json_under_api(client):
    page = client.get("/no/such/page")
    assert page.status_code == 404 and "<title>Page not found</title>" in page.get_data(as_text=True)  # was "404:
    # could not process", under the heading "Page not found"
    api = client.get("/api/v1/nothing")
    assert api.status_code == 404 and api.get_json()["code"] == "not_found"
    wrong_method = client.get("/api/v1/predict")
    assert wrong_method.status_code == 405  # and the methods it takes: it had no Allow header, which HTTP requires
    assert set(wrong_method.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    assert set(client.put("/healthz").headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    wrong_method = client.post("/about")  # a page, not about an image
    assert wrong_method.status_code == 405 and "Not available at this address" in wrong_method.get_data(as_text=True)
    assert "could not be analysed" not in wrong_method.get_data(as_text=True)


def test_the_result_address_opened_again_goes_back_to_the_upload_page(client):
    res = client.get("/predict")  # from the history or a bookmark: results are not kept
    assert res.status_code == 303 and res.headers["Location"] == "/"
    assert client.get("/predict", follow_redirects=True).status_code == 200


def test_security_headers(client, malignant_jpeg):
    responses = {"upload page": client.get("/"), "about page": client.get("/about"),
                 "result page": upload(client, "/predict", [("lesion.jpg", malignant_jpeg)]),
                 "API": upload(client, "/api/v1/predict", [("lesion.jpg", malignant_jpeg)]),
                 "404 page": client.get("/no/such/page"), "API error": upload(client, "/api/v1/predict", [])}
    for name, res in responses.items():
        headers = res.headers
        assert headers["X-Content-Type-Options"] == "nosniff", name
        assert headers["X-Frame-Options"] == "DENY", name
        assert headers["Referrer-Policy"] == "same-origin" and headers["Cache-Control"] == "no-store", name
        policy = dict(d.strip().split(" ", 1) for d in headers["Content-Security-Policy"].split(";") if d.strip())
        assert policy["default-src"] == "'self'", name
        for directive in ("script-src", "style-src"):  # only this site's own files, never inline or other hosts
            assert policy.get(directive, policy["default-src"]) == "'self'", (name, directive)


def test_form_needs_a_csrf_token(malignant_jpeg):
    app = create_app({"TESTING": True})
    client = app.test_client()
    res = upload(client, "/predict", [("lesion.jpg", malignant_jpeg)])
    assert res.status_code == 400 and "Reload the page" in res.get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)
    res = client.post("/predict", data={"csrf_token": token, "image": (io.BytesIO(malignant_jpeg), "l.jpg")},
                      content_type="multipart/form-data")
    assert res.status_code == 200
    # the API is for programs, not forms: no token needed
    assert upload(client, "/api/v1/predict", [("lesion.jpg", malignant_jpeg)]).status_code == 200


def cut_short(image: bytes, token: str = "") -> dict:
    """The WSGI environ of an upload whose body ends (a network lost, or gunicorn's read timeout) before the length its
    Content-Length header promised."""
    field = f'--b\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'.encode() if token else b""
    body = field + b'--b\r\nContent-Disposition: form-data; name="image"; filename="l.jpg"\r\n\r\n' + image[:2000]
    return {"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body) + len(image)),
            "CONTENT_TYPE": "multipart/form-data; boundary=b"}


def test_an_upload_cut_short_is_asked_for_again(malignant_jpeg):
    """Was a 400, "The request could not be understood", for the clinician whose network dropped mid-upload."""
    app = create_app({"TESTING": True})  # with the form's CSRF check, which reads the body first
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)
    words = ("The upload stopped before the whole image arrived. Check the network connection and upload the image "
             "again.")
    res = client.post("/api/v1/predict", environ_overrides=cut_short(malignant_jpeg))
    assert (res.status_code, res.get_json()) == (408, {"code": "upload_incomplete", "error": words})
    res = client.post("/predict", environ_overrides=cut_short(malignant_jpeg, token))
    page = res.get_data(as_text=True)
    assert res.status_code == 408 and words in page and "Traceback" not in page
    whole = client.post("/predict", data={"csrf_token": token, "image": (io.BytesIO(malignant_jpeg), "l.jpg")},
                        content_type="multipart/form-data")
    assert whole.status_code == 200  # the same upload, whole


def test_uploads_are_not_kept_by_default(client, malignant_jpeg, tmp_path, app):
    assert app.config["KEEP_UPLOADS"] is False
    before = set((app.config["UPLOAD_FOLDER"] and __import__("os").listdir(app.config["UPLOAD_FOLDER"])) or [])
    upload(client, "/api/v1/predict", [("lesion.jpg", malignant_jpeg)])
    after = set(__import__("os").listdir(app.config["UPLOAD_FOLDER"]))
    assert after == before


def test_kept_uploads_have_random_names_and_no_exif(tmp_path, malignant_jpeg):
    import os
    import time

    folder = tmp_path / "kept"
    folder.mkdir()
    old = folder / ("0" * 32 + ".png")
    Image.new("RGB", (40, 40)).save(old)
    os.utime(old, (time.time() - 3 * 3600, time.time() - 3 * 3600))
    recent = folder / ("1" * 32 + ".png")  # kept 10 minutes ago: within the hour it is kept for
    Image.new("RGB", (40, 40)).save(recent)
    os.utime(recent, (time.time() - 600, time.time() - 600))
    theirs = [folder / "holiday.png", folder / ("0" * 31 + "g.png"), folder / ("0" * 32 + ".PNG")]
    for picture in theirs:  # not names the app gives: a person's own, in a folder they share with it; before, deleted
        Image.new("RGB", (40, 40)).save(picture, format="PNG")
        os.utime(picture, (time.time() - 3 * 3600, time.time() - 3 * 3600))
    app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, "KEEP_UPLOADS": True,
                      "UPLOAD_FOLDER": str(folder), "UPLOAD_RETENTION_HOURS": 1})
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # camera maker
    exif[0x0112] = 1
    tagged = encode(Image.open(io.BytesIO(malignant_jpeg)), "JPEG", exif=exif.tobytes())
    assert upload(app.test_client(), "/api/v1/predict", [("patient-smith.jpg", tagged)]).status_code == 200
    page = app.test_client().get("/").get_data(as_text=True)  # it said "not stored" whatever the setting
    assert "This server keeps a copy of each image (under a random name, without its metadata) for 1 hour." in page
    assert "not stored" not in page
    assert recent.exists() and not old.exists(), "expired upload purged, recent one kept"
    assert all(picture.exists() for picture in theirs)
    recent.unlink()
    for picture in theirs:
        picture.unlink()
    kept = list(folder.iterdir())
    assert len(kept) == 1, "the new upload kept"
    assert "smith" not in kept[0].name and re.fullmatch(r"[0-9a-f]{32}\.png", kept[0].name)
    assert b"SecretCam" not in kept[0].read_bytes() and not Image.open(kept[0]).getexif()
    # for the server's user alone: they were 644, in a folder of 755, readable by every user of the machine
    assert kept[0].stat().st_mode & 0o777 == 0o600
    kept[0].unlink()
    photo = encode(Image.open(io.BytesIO(malignant_jpeg)).resize((1600, 1200)), "JPEG")
    assert upload(app.test_client(), "/api/v1/predict", [("photo.jpg", photo)]).status_code == 200
    [whole] = list(folder.iterdir())
    assert Image.open(whole).size == (1600, 1200)  # the upload kept as sent, not the network's 200x150 draft of it
    fresh = tmp_path / "fresh"
    app.config["UPLOAD_FOLDER"] = str(fresh / "kept")
    assert upload(app.test_client(), "/api/v1/predict", [("b.jpg", tagged)]).status_code == 200
    assert (fresh / "kept").stat().st_mode & 0o777 == 0o700


def test_the_result_page_carries_no_metadata_of_the_upload(client, malignant_jpeg):
    """The preview in the page (printed or saved into a patient's record) kept a JPEG's comment, which some cameras
    and PACS exports fill with the patient's name."""
    import base64

    commented = encode(Image.open(io.BytesIO(malignant_jpeg)), "JPEG", comment=b"Patient: Jane Roe, MRN 00412345")
    html = upload(client, "/predict", [("lesion.jpg", commented)]).get_data(as_text=True)
    [preview] = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html)
    shown = base64.b64decode(preview)
    assert b"Jane Roe" not in shown and "comment" not in Image.open(io.BytesIO(shown)).info


def test_kept_uploads_are_purged_when_their_time_is_up_without_another_upload(tmp_path, malignant_jpeg):
    """They were purged only at start and when another upload was kept: a server that kept no new image kept the
    old ones past the period the upload page states. Now every tenth of the period (at most every minute)."""
    import os
    import time

    folder = tmp_path / "kept"
    app = create_app({"TESTING": True, "KEEP_UPLOADS": True, "UPLOAD_FOLDER": str(folder),
                      "UPLOAD_RETENTION_HOURS": 0.001})  # 3.6 s, looked at every 0.36 s
    assert upload(app.test_client(), "/api/v1/predict", [("a.jpg", malignant_jpeg)]).status_code == 200
    [kept] = list(folder.iterdir())
    os.utime(kept, (time.time() - 60, time.time() - 60))  # its time is up
    deadline = time.time() + 20
    while kept.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not kept.exists()


def test_an_upload_that_cannot_be_kept_still_gets_its_verdict_and_a_line_in_the_log(tmp_path, malignant_jpeg,
                                                                                    monkeypatch, caplog):
    app = create_app({"TESTING": True, "KEEP_UPLOADS": True, "UPLOAD_FOLDER": str(tmp_path / "kept")})

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("web.uploads.keep", disk_full)
    res = upload(app.test_client(), "/api/v1/predict", [("smith_john_back.jpg", malignant_jpeg)])
    assert res.status_code == 200 and res.get_json()["predictions"][0]["label"] == "malignant"  # was a 500
    assert "an upload was not kept in" in caplog.text and "No space left on device" in caplog.text
    assert "smith" not in caplog.text  # a file name may name the patient


def test_model_is_loaded_once_at_startup(app, client, malignant_jpeg, monkeypatch):
    import keras

    def fail(*args, **kwargs):
        raise AssertionError("a request loaded a model")

    monkeypatch.setattr(keras.models, "load_model", fail)
    assert upload(client, "/api/v1/predict", [("lesion.jpg", malignant_jpeg)]).status_code == 200


def test_config_from_environment(monkeypatch, benign_jpeg):
    monkeypatch.setenv("MELANOMA_MAX_FILES", "3")
    app = create_app({"TESTING": True})
    assert app.config["MAX_FILES"] == 3 and app.config["MODEL_PATH"] == str(DEFAULT_BUNDLE)
    client = app.test_client()  # and the server applies it
    assert upload(client, "/api/v1/predict", [(f"{i}.jpg", benign_jpeg) for i in range(4)]).status_code == 400
    assert upload(client, "/api/v1/predict", [(f"{i}.jpg", benign_jpeg) for i in range(3)]).status_code == 200


BAD_SETTINGS = [
    # (variable, value, the words of the sentence); before web.settings each was a traceback at startup, a 500 at
    # the first request, a crash in TensorFlow (threads -2) or, for KEEP_UPLOADS, a word read as yes
    ("MAX_FILES", "abc", "MELANOMA_MAX_FILES is a whole number, 1 or more; received 'abc'."),
    ("MAX_FILES", "2.5", "MELANOMA_MAX_FILES is a whole number, 1 or more; received 2.5."),
    ("MAX_CONTENT_LENGTH", "20MB", "MELANOMA_MAX_CONTENT_LENGTH is a whole number, 1 or more; received '20MB'."),
    ("TTA_VIEWS", "3", "MELANOMA_TTA_VIEWS is 1, 2, 4 or 8 views, or 0 for the bundle's own; received 3."),
    ("RUNTIME", "gpu", "MELANOMA_RUNTIME is one of auto, openvino, tensorflow; received 'gpu'."),
    ("INFERENCE_THREADS", "-2", "MELANOMA_INFERENCE_THREADS is a whole number, 0 or more; received -2."),
    ("INFERENCE_THREADS", "1000000000000", "MELANOMA_INFERENCE_THREADS is a whole number from 0 to 1024; received "
                                           "1000000000000."),  # was "not a Keras model file this version can load"
    ("INFERENCE_STREAMS", "5000", "MELANOMA_INFERENCE_STREAMS is a whole number from 0 to 1024; received 5000."),
    ("KEEP_UPLOADS", "perhaps", "MELANOMA_KEEP_UPLOADS is true or false (1/0, yes/no, on/off); received 'perhaps'."),
    ("MICRO_BATCHING", "maybe", "MELANOMA_MICRO_BATCHING is true or false"),
    ("UPLOAD_RETENTION_HOURS", "never", "MELANOMA_UPLOAD_RETENTION_HOURS is a number of hours above 0"),
    ("LOG_LEVEL", "LOUD", "MELANOMA_LOG_LEVEL is one of DEBUG, INFO, WARNING, ERROR, CRITICAL; received 'LOUD'."),
    ("SECRET_KEY", "short", "MELANOMA_SECRET_KEY is a long random text (16 characters or more"),
]


@pytest.mark.parametrize("name, value, words", BAD_SETTINGS, ids=[f"{n}={v}" for n, v, _ in BAD_SETTINGS])
def test_a_setting_of_the_wrong_kind_stops_the_server_with_one_sentence(monkeypatch, name, value, words):
    monkeypatch.setenv(f"MELANOMA_{name}", value)
    monkeypatch.setattr("web.service.load_bundle", lambda path: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as stopped:
        create_app({"TESTING": True})
    assert str(stopped.value).startswith(f"error: {words}")


def test_an_upload_folder_that_cannot_be_written_stops_the_server_when_uploads_are_kept(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("a file, where the folder would be")
    monkeypatch.setattr("web.service.load_bundle", lambda path: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as stopped:  # was a 500 at the first upload
        create_app({"TESTING": True, "KEEP_UPLOADS": True, "UPLOAD_FOLDER": str(tmp_path / "a_file" / "kept")})
    assert str(stopped.value).startswith(f"error: MELANOMA_UPLOAD_FOLDER {tmp_path / 'a_file' / 'kept'} cannot be "
                                         f"written (")
    assert str(stopped.value).endswith("), and MELANOMA_KEEP_UPLOADS keeps the uploads there.")


def test_settings_in_instance_config_py_are_read(tmp_path, monkeypatch):
    """The README and app.py say settings come from instance/config.py; a bare "config.py" was looked for beside
    app.py instead, and the file where they said was dropped without a word."""
    import app as app_module

    (tmp_path / "instance").mkdir()
    (tmp_path / "instance" / "config.py").write_text("MAX_FILES = 3\nMAX_CONTENT_LENGTH = 500_000\n")
    monkeypatch.setattr(app_module, "ROOT", tmp_path)
    configured = create_app({"TESTING": True})
    assert configured.config["MAX_FILES"] == 3 and configured.config["MAX_CONTENT_LENGTH"] == 500_000
    page = configured.test_client().get("/").get_data(as_text=True)
    assert "up to 488 KB (export" in page  # a limit under 1 MB read "up to 0 MB"


def test_size_limits_are_said_without_overstating_them():
    from web.errors import human_size
    assert [human_size(n) for n in (20 * 2**20, 1536 * 2**10, 2**20 - 1, 500_000)] == [
        "20 MB", "1.5 MB", "1,023 KB", "488 KB"]


def test_settings_in_words_are_read_as_meant(monkeypatch):
    for name, value in (("KEEP_UPLOADS", "no"), ("MICRO_BATCHING", "Off"), ("LOG_LEVEL", "warning"),
                        ("UPLOAD_RETENTION_HOURS", "12"), ("SECRET_KEY", "1234567890123456789012")):
        monkeypatch.setenv(f"MELANOMA_{name}", value)
    app = create_app({"TESTING": True})
    assert app.config["KEEP_UPLOADS"] is False and app.config["MICRO_BATCHING"] is False
    assert app.config["LOG_LEVEL"] == "WARNING" and app.config["UPLOAD_RETENTION_HOURS"] == 12.0
    assert app.config["SECRET_KEY"] == "1234567890123456789012"  # all digits: Flask read it as a number


def gunicorn_settings(monkeypatch, env: dict) -> dict:
    import os
    import runpy
    monkeypatch.setattr(os, "environ", dict(env))  # the config file reads and sets os.environ: a copy here
    settings = runpy.run_path(str(Path(__file__).parent.parent / "gunicorn.conf.py"))
    return {**settings, "environ": os.environ}


def test_the_gunicorn_settings_and_their_mistakes(monkeypatch):
    default = gunicorn_settings(monkeypatch, {})
    assert tuple(default[name] for name in ("bind", "workers", "threads", "read_timeout", "upload_rate")) == (
        "127.0.0.1:8000", 1, 8, 30, 10)
    assert default["control_socket_disable"]  # not $HOME/.gunicorn/gunicorn.ctl, shared by every server of a user
    given = gunicorn_settings(monkeypatch, {"MELANOMA_CONTROL_SOCKET": "/run/melanoma/gunicorn.ctl"})
    assert (given["control_socket"], given["control_socket_disable"]) == ("/run/melanoma/gunicorn.ctl", False)
    for there in (__file__, str(Path(__file__).parent)):  # gunicorn deleted a file there to put its socket in its place
        with pytest.raises(SystemExit, match=f"^error: MELANOMA_CONTROL_SOCKET names {re.escape(there)}, which is not "
                                             f"a socket; gunicorn would delete it"):
            gunicorn_settings(monkeypatch, {"MELANOMA_CONTROL_SOCKET": there})
    two = gunicorn_settings(monkeypatch, {"MELANOMA_WORKERS": "2"})  # the cores shared between the workers
    assert two["workers"] == 2 and two["environ"]["MELANOMA_INFERENCE_STREAMS"] == "1"
    for name, value in (("MELANOMA_WORKERS", "abc"), ("MELANOMA_THREADS", "0"), ("MELANOMA_WORKERS", "1.5"),
                        ("MELANOMA_READ_TIMEOUT", "-5"), ("MELANOMA_MIN_UPLOAD_RATE", "0.5")):
        with pytest.raises(SystemExit) as stopped:  # was a ValueError traceback from gunicorn's config loader
            gunicorn_settings(monkeypatch, {name: value})
        assert str(stopped.value) == f"error: {name} is a whole number, 1 or more; received {value!r}."
    with pytest.raises(SystemExit) as stopped:  # a day at most: 10**12 s overflowed the socket's timeout, a 500 each
        gunicorn_settings(monkeypatch, {"MELANOMA_READ_TIMEOUT": "1000000000000"})
    assert str(stopped.value) == ("error: MELANOMA_READ_TIMEOUT is a whole number from 1 to 86400; received "
                                  "'1000000000000'.")
    for bind in ("127.0.0.1:99999", "[::1]:70000", "0.0.0.0:8000, 127.0.0.1:123456", "127.0.0.1:-1"):  # OverflowError
        with pytest.raises(SystemExit, match=r"^error: MELANOMA_BIND gives the port -?\d+; a port is a number from 0 to"):
            gunicorn_settings(monkeypatch, {"MELANOMA_BIND": bind})
    for bind in (f"unix:{__file__}", f"127.0.0.1:8000,unix:{Path(__file__).parent}"):  # gunicorn's ValueError traceback
        with pytest.raises(SystemExit, match=r"^error: MELANOMA_BIND gives the socket path .*, where there is already "
                                             r"something that is not a socket; give a path where nothing is yet"):
            gunicorn_settings(monkeypatch, {"MELANOMA_BIND": bind})
    for bind in ("0.0.0.0:8080", "[::1]:8000", "unix:/tmp/melanoma.sock", "localhost"):
        assert gunicorn_settings(monkeypatch, {"MELANOMA_BIND": bind})["bind"] == bind


def test_cautions_for_real_skin_marker_ink_and_a_dermoscope_ring(client, app, benign_jpeg, malignant_jpeg):
    """The fixture naevus ISIC_0012414 carries two purple ink marks; the fixture melanoma, seen through a contact
    dermoscope's ring, has dark corners. Both are judged, with a caution that gives the card's training counts."""
    from train.robustness import dermoscope_ring

    ringed = encode(dermoscope_ring(Image.open(io.BytesIO(malignant_jpeg)).convert("RGB")), "JPEG", quality=95)
    files = [("inked.jpg", benign_jpeg), ("ringed.jpg", ringed), ("plain.jpg", malignant_jpeg)]
    res = upload(client, "/api/v1/predict", files)
    assert res.status_code == 200
    by_name = {p["filename"]: p for p in res.get_json()["predictions"]}
    assert not any(p.get("rejected") for p in by_name.values())
    cues = app.extensions["melanoma_model"].card["data"]["shortcut_cues"]
    assert [c["code"] for c in by_name["inked.jpg"]["cautions"]] == ["skin_marker_ink"]
    assert f"Only {cues['skin_marker_ink']['train_images_with_cue']} of the 2,000" in \
        by_name["inked.jpg"]["cautions"][0]["message"]
    assert [c["code"] for c in by_name["ringed.jpg"]["cautions"]] == ["dark_corners"]
    assert by_name["plain.jpg"]["cautions"] == []

    page = upload(client, "/predict", [("inked.jpg", benign_jpeg)]).get_data(as_text=True)
    assert 'id="cautions"' in page and "skin-marker ink is visible" in page
    assert 'id="cautions"' not in upload(client, "/predict", [("plain.jpg", malignant_jpeg)]).get_data(as_text=True)


def test_a_secret_key_the_server_cannot_keep_is_one_sentence(tmp_path, monkeypatch):
    """Served as a user who cannot write the checkout (code owned by root, a service user: checked with setpriv, a
    PermissionError), the server stopped at start with a traceback from making instance/; here `instance` is a file,
    which refuses the folder the same way. Now one sentence says what to set; with MELANOMA_SECRET_KEY it starts."""
    import app as app_module

    monkeypatch.setattr(app_module, "ROOT", tmp_path)
    (tmp_path / "instance").write_text("not a folder")
    with pytest.raises(SystemExit) as stopped:
        create_app({"TESTING": True})
    assert str(stopped.value) == (
        f"error: the server keeps its secret key in {tmp_path / 'instance' / 'secret_key'}, which this user cannot "
        f"write (File exists). Set MELANOMA_SECRET_KEY instead (the same on every server: python3 -c 'import secrets; "
        f"print(secrets.token_hex(32))'), or let this user read and write that folder.")
    monkeypatch.setenv("MELANOMA_SECRET_KEY", "a" * 64)
    assert create_app({"TESTING": True}).config["SECRET_KEY"] == "a" * 64


def test_workers_starting_together_share_one_whole_secret_key(tmp_path, monkeypatch):
    """Two workers start on a fresh machine: the second looks for the key while the first is still making it. It
    must get the first's key or its own, whole, and both must end with the same one (an empty key broke every page's
    form: no session without one)."""
    import threading

    import app as app_module

    token_hex, seen = app_module.secrets.token_hex, []

    def slow_first_key(n):
        if not seen:  # the first worker, mid-way through making its key, lets a second worker start
            seen.append("first")
            second = threading.Thread(target=lambda: seen.append(app_module.instance_secret(tmp_path)))
            second.start()
            second.join(timeout=10)
        return token_hex(n)

    monkeypatch.setattr(app_module.secrets, "token_hex", slow_first_key)
    first = app_module.instance_secret(tmp_path)
    assert len(seen) == 2 and len(first) == 64
    assert seen[1] == first
    assert (tmp_path / "secret_key").read_text() == first
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no drafts left behind
