"""The API's OpenAPI document: served, well formed, true to what the app answers, and complete in its codes."""
import json
import re

import pytest
import skimage.data
from jsonschema import Draft202012Validator
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from model.cues import CUES
from tests.conftest import ROOT, encode
from tests.test_app import HEIC, cut_short, upload
from web.views import OPENAPI

DOC = json.loads(OPENAPI.read_text())


def conforms(instance, schema: str) -> list[str]:
    """What in `instance` breaks the document's schema `schema` (components/schemas), resolving its $refs."""
    registry = Registry().with_resource("urn:api", Resource.from_contents(DOC, default_specification=DRAFT202012))
    validator = Draft202012Validator({"$ref": f"urn:api#/components/schemas/{schema}"}, registry=registry)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def codes_in(path: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, (ROOT / path).read_text()))


def test_the_document_is_served_and_its_schemas_are_valid(client):
    res = client.get("/api/v1/openapi.json")
    assert res.status_code == 200 and res.mimetype == "application/json"
    assert res.get_json() == DOC and DOC["openapi"].startswith("3.1")
    for name, schema in DOC["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)


def test_its_paths_are_the_apps_api_routes(app):
    routes = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("api.")}
    assert routes == set(DOC["paths"])


def test_verdicts_with_heatmaps_conform(client, malignant_jpeg, benign_jpeg):
    body = upload(client, "/api/v1/predict?explain=1", [("m.jpg", malignant_jpeg), ("b.jpg", benign_jpeg)]).get_json()
    assert [p["label"] for p in body["predictions"]] == ["malignant", "benign"] and body["predictions"][0]["heatmap"]
    assert conforms(body, "PredictResponse") == []
    # and the schema can fail: a verdict without its threshold, or with a label of its own, does not conform
    broken = json.loads(json.dumps(body))
    del broken["predictions"][0]["threshold"]
    broken["predictions"][1]["label"] = "melanoma"
    assert len(conforms(broken, "PredictResponse")) == 2


def test_refusals_and_a_bad_file_among_good_ones_conform(client, benign_jpeg):
    cat = encode(Image.fromarray(skimage.data.chelsea()), "JPEG")
    body = upload(client, "/api/v1/predict", [("cat.jpg", cat), ("b.jpg", benign_jpeg), ("notes.txt", b"hello")])
    predictions = body.get_json()["predictions"]
    assert [p.get("code") for p in predictions] == ["not_a_lesion", None, "not_an_image"]
    assert conforms(body.get_json(), "PredictResponse") == []


@pytest.mark.parametrize("request_, status", [
    (lambda c: c.post("/api/v1/predict", data={}), 400),
    (lambda c: upload(c, "/api/v1/predict", [("notes.txt", b"patient notes\n" * 20)]), 400),
    (lambda c: upload(c, "/api/v1/predict", [("lesion.heic", HEIC.read_bytes())]), 415),
    (lambda c: upload(c, "/api/v1/predict", [("big.png", bytes(21 * 2**20))]), 413),
    (lambda c: c.get("/api/v1/predict"), 405),
    (lambda c: c.post("/api/v1/predict", environ_overrides=cut_short(HEIC.read_bytes())), 408),
], ids=["no file", "text file", "heic", "too large", "get", "cut short"])
def test_errors_conform_with_the_status_the_document_gives(client, request_, status):
    res = request_(client)
    assert res.status_code == status
    assert str(status) in DOC["paths"]["/api/v1/predict"]["post"]["responses"]
    assert conforms(res.get_json(), "Error") == []


def test_health_conforms(client):
    assert conforms(client.get("/healthz").get_json(), "Health") == []


def test_every_code_the_app_can_give_is_in_the_document_and_no_other():
    """Read from the code itself, so that a new refusal or error code fails here until the document has it."""
    # unreadable_file: a file on disk that cannot be opened, for the commands that read paths; the app decodes bytes
    image = codes_in("model/preprocessing.py", r'ImageError\(\s*"(\w+)"') - {"unreadable_file"}
    gate = codes_in("model/gate.py", r'Refusal\(\s*"(\w+)"')
    request = codes_in("web/views.py", r'ApiError\(\s*"(\w+)"')
    http = codes_in("web/errors.py", r'\(\s*"([a-z_]+)",')  # MESSAGES, respond("...", ...) and the fallback
    assert {"not_a_lesion", "too_blurred", "unsupported_format", "no_file", "busy", "file_too_large"} <= (
        image | gate | request | http)  # the patterns find what they look for
    schemas = DOC["components"]["schemas"]
    assert set(schemas["Rejection"]["properties"]["code"]["enum"]) == gate | image
    assert set(schemas["Error"]["properties"]["code"]["enum"]) == image | request | http
    cautions = schemas["Verdict"]["properties"]["cautions"]["items"]["properties"]["code"]["enum"]
    assert set(cautions) == set(CUES)
