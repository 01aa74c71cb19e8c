"""A real browser (headless Chromium driven by Playwright) against the app on a loopback port."""
import math
import re
import shutil
import threading

import pytest

from tests.conftest import ROOT, lesion_fixtures

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
SERVED = {}  # the live server's app, to ask what it answers for a file apart from the browser

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package 'chromium'; .ci/run installs it)"),
]


@pytest.fixture(scope="module")
def live_server():
    from werkzeug.serving import make_server

    from app import create_app

    app = create_app({"TESTING": False})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    SERVED["app"] = app
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        pg = context.new_page()
        errors = []
        pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        pg.console_errors = errors
        yield pg
        browser.close()


def test_upload_a_lesion_and_see_the_verdict(live_server, page):
    from playwright.sync_api import expect

    page.console_errors.clear()
    page.goto(live_server + "/")
    page.set_input_files("#image", str(lesion_fixtures("malignant")[0]))
    # The drag-and-drop script shows a preview; the image has a size only once the blob has loaded,
    # so wait for it (up to 5 s) instead of asking once.
    expect(page.locator("#preview")).to_be_visible(timeout=5000)
    page.click("#submit")
    page.wait_for_selector("#verdict")
    path = lesion_fixtures("malignant")[0]
    [judged] = SERVED["app"].extensions["melanoma_model"].judge([(path.name, path.read_bytes())])
    assert judged.label == "malignant"  # the fixture melanoma, as tests/test_app.py checks through the API
    assert page.inner_text("#verdict") == "Malignant — suspicious"
    assert page.inner_text("#probability") == f"{judged.probability_malignant * 100:.1f}%"
    # the bar and the threshold mark, drawn by result.js under the content security policy
    bar_width = page.eval_on_selector(".scale .bar", "el => el.style.width")
    mark_left = page.eval_on_selector(".scale .mark", "el => el.style.left")
    assert float(bar_width.rstrip("%")) == pytest.approx(judged.probability_malignant * 100, abs=1e-3)
    assert float(mark_left.rstrip("%")) == pytest.approx(judged.threshold * 100, abs=1e-3)
    assert page.console_errors == []  # no script blocked by the content security policy, no missing file (favicon)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "result_page.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.screenshot(path=str(ARTIFACTS / "result_page_phone.png"), full_page=True)
    page.set_viewport_size({"width": 1100, "height": 900})


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate for the test")
def test_the_page_uploads_over_https(live_server, page, tmp_path):
    """Served over HTTPS (as behind a proxy that terminates TLS), every upload from the page was refused as "The form
    expired or did not come from this site": the app's Referrer-Policy (no-referrer) kept the browser from sending a
    Referer, which the CSRF check requires over HTTPS. The same app, served with a certificate of its own here."""
    import subprocess

    from werkzeug.serving import make_server

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    server = make_server("127.0.0.1", 0, SERVED["app"], threaded=True,
                         ssl_context=(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    context = page.context.browser.new_context(ignore_https_errors=True)
    try:
        secure = context.new_page()
        secure.goto(f"https://127.0.0.1:{server.server_port}/")
        secure.set_input_files("#image", str(lesion_fixtures("malignant")[0]))
        secure.click("#submit")
        secure.wait_for_load_state()
        verdict = secure.locator("#verdict").inner_text(timeout=30000)
        assert verdict == "Malignant — suspicious", secure.content()[:2000]
    finally:
        context.close()
        server.shutdown()


def test_the_result_prints_on_one_page_without_the_controls(live_server, page):
    """A clinician files the result in a patient's record: the print button opens the browser's print dialog, and
    the printed page keeps the verdict, the probability, both images, the next step, the date and the disclaimer on
    one A4 page, without the navigation and the buttons."""
    page.goto(live_server + "/")
    page.set_input_files("#image", str(lesion_fixtures("malignant")[0]))
    page.click("#submit")
    page.wait_for_selector("#verdict")
    page.evaluate("() => { window.printed = 0; window.print = () => { window.printed += 1; }; }")  # no dialog here
    page.click("#print-result")
    assert page.evaluate("window.printed") == 1
    kept = ["#verdict", "#probability", "#original", "#heatmap", ".scale .bar", ".next", "#analysed",
            "footer.disclaimer"]
    controls = ["header.top nav", "a.button", "#print-result"]
    assert all(page.is_visible(s) for s in kept + controls)
    page.emulate_media(media="print")
    try:
        assert [s for s in kept if not page.is_visible(s)] == []
        assert [s for s in controls if page.is_visible(s)] == []
        pdf = page.pdf(format="A4", print_background=True)
    finally:
        page.emulate_media(media="screen")
    assert len(re.findall(rb"/Type\s*/Page(?![a-z])", pdf)) == 1
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "result_page.pdf").write_bytes(pdf)


DROP = """([zone, files]) => {
    const dt = new DataTransfer();
    for (const [name, b64] of files) {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
    }
    document.querySelector(zone).dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
}"""


def test_the_drop_zone_is_the_one_file_control(live_server, page):
    """With the script, the dashed box is the file control: the native input is not drawn twice beside it but keeps
    the keyboard (the box shows its focus), clicking the box opens the file chooser, a dropped image is previewed and
    analysed, two dropped files keep the first with a sentence saying so, and Analyse without an image says what to
    do instead of sending an empty form."""
    import base64

    from playwright.sync_api import expect

    page.goto(live_server + "/")
    assert page.is_visible("#drop-zone")
    assert page.eval_on_selector("#image", "el => el.getBoundingClientRect().width") <= 1
    assert page.is_hidden("#upload-message")

    page.click("#submit")  # no image chosen
    expect(page.locator("#upload-message")).to_have_text(re.compile("^Choose an image first"))
    assert page.url == live_server + "/" and page.evaluate("document.activeElement.id") == "image"

    page.goto(live_server + "/")
    outline = "() => getComputedStyle(document.querySelector('#drop-zone')).outlineStyle"
    assert page.evaluate(outline) == "none"
    for _ in range(12):  # the keyboard reaches the file control, and the box shows it
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "image":
            break
    assert page.evaluate("document.activeElement.id") == "image"
    assert page.evaluate(outline) == "solid"

    malignant, benign = lesion_fixtures("malignant")[0], lesion_fixtures("benign")[0]
    with page.expect_file_chooser() as chooser:
        page.click("#drop-zone")
    chooser.value.set_files(str(benign))
    expect(page.locator("#drop-text")).to_have_text(benign.name)
    expect(page.locator("#preview")).to_be_visible(timeout=5000)

    encoded = [(f.name, base64.b64encode(f.read_bytes()).decode()) for f in (malignant, benign)]
    page.evaluate(DROP, ["#drop-zone", encoded])
    expect(page.locator("#upload-message")).to_have_text(f"2 files were dropped; only the first, {malignant.name}, will be analysed.")
    assert page.evaluate("document.querySelector('#image').files.length") == 1
    page.evaluate(DROP, ["#drop-zone", encoded[:1]])
    assert page.is_hidden("#upload-message")
    expect(page.locator("#drop-text")).to_have_text(malignant.name)
    expect(page.locator("#preview")).to_be_visible(timeout=5000)
    page.click("#submit")
    page.wait_for_selector("#verdict")
    assert page.inner_text("#verdict") == "Malignant — suspicious"  # the dropped melanoma, not the chosen benign one


def test_the_page_says_what_the_server_would_refuse_before_sending_it(live_server, page, tmp_path):
    """A file over the size limit and an iPhone's HEIC photo are refused in the page, with the server's reason, and
    not uploaded; a good image chosen next is sent and judged."""
    from playwright.sync_api import expect

    limit = SERVED["app"].config["MAX_CONTENT_LENGTH"]
    big = tmp_path / "scan.jpg"
    big.write_bytes(lesion_fixtures("malignant")[0].read_bytes() + b"\0" * limit)
    posts = []

    def record(request):
        if request.method == "POST":
            posts.append(request.url)

    page.on("request", record)
    try:
        page.goto(live_server + "/")
        page.set_input_files("#image", str(lesion_fixtures("benign")[0]))
        expect(page.locator("#preview")).to_be_visible(timeout=5000)
        page.set_input_files("#image", str(big))  # then a file too large: its preview would be the last one's
        size = f"{math.ceil(big.stat().st_size / 2 ** 20 * 10) / 10:.1f}"  # rounded up: it read "20.0 MB; the limit
        expect(page.locator("#upload-message")).to_have_text(  # is 20 MB" for a file a little over
            f"scan.jpg is {size} MB, over the upload limit of {limit >> 20} MB. Export a smaller JPEG.")
        page.click("#submit")
        just_under = tmp_path / "just_under.jpg"  # the file fits, the request with the form's fields would not
        lesion = lesion_fixtures("malignant")[0].read_bytes()
        just_under.write_bytes(lesion + b"\0" * (limit - 100 - len(lesion)))
        page.set_input_files("#image", str(just_under))
        expect(page.locator("#upload-message")).to_have_text(re.compile(r"^just_under\.jpg is 20\.0 MB, over the "))
        page.click("#submit")
        heic = ROOT / "tests" / "fixtures" / "formats" / "lesion.heic"
        (tmp_path / "IMG_0001.HEIC").write_bytes(heic.read_bytes())  # as an iPhone names it: Chromium gives no type
        for path in (heic, tmp_path / "IMG_0001.HEIC"):
            name = path.name
            page.set_input_files("#image", str(path))
            expect(page.locator("#upload-message")).to_have_text(re.compile(
                rf"^{re.escape(name)} is a HEIC photo, which this page does not read \(JPEG, PNG, .*JPEG first\.$"))
            page.click("#submit")
        assert posts == [] and page.url == live_server + "/" and page.is_hidden("#preview")
        page.set_input_files("#image", str(lesion_fixtures("malignant")[0]))
        assert page.is_hidden("#upload-message")
        page.click("#submit")
        page.wait_for_selector("#verdict")
        assert posts == [live_server + "/predict"]
    finally:
        page.remove_listener("request", record)


def test_the_zone_shows_no_broken_preview_and_no_choice_that_was_cleared(live_server, page, tmp_path):
    """A TIFF (accepted, and judged) showed a broken-image icon, as Chromium cannot draw it; a choice cleared from the
    input (a cancelled file chooser, in some browsers) stayed named and previewed in the zone."""
    from PIL import Image
    from playwright.sync_api import expect

    tiff = tmp_path / "lesion.tif"
    Image.open(lesion_fixtures("benign")[0]).save(tiff)
    page.goto(live_server + "/")
    default = page.inner_text("#drop-text")
    page.set_input_files("#image", str(lesion_fixtures("malignant")[0]))
    expect(page.locator("#preview")).to_be_visible(timeout=5000)
    page.set_input_files("#image", [])
    expect(page.locator("#drop-text")).to_have_text(default)
    expect(page.locator("#preview")).to_be_hidden()
    page.set_input_files("#image", str(tiff))
    expect(page.locator("#drop-text")).to_have_text("lesion.tif")
    expect(page.locator("#preview")).to_be_hidden(timeout=5000)
    page.click("#submit")
    page.wait_for_selector("#verdict")  # judged all the same


def test_back_from_the_result_the_page_shows_the_file_the_browser_kept(live_server, page):
    """Back from a result, a browser may put the chosen file back into the input (Chromium does) without a change
    event: the zone then names it and previews it, as Analyse would send it again, instead of inviting a drop."""
    import base64

    from playwright.sync_api import expect

    lesion = lesion_fixtures("benign")[0]
    # What the browser's form restoration does, on any browser: a file in the input, no change event, then pageshow.
    page.goto(live_server + "/")
    page.evaluate("""([name, b64]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, {type: "image/jpeg"}));
        document.querySelector('#image').files = dt.files;
        window.dispatchEvent(new PageTransitionEvent('pageshow', {persisted: false}));
    }""", [lesion.name, base64.b64encode(lesion.read_bytes()).decode()])
    expect(page.locator("#drop-text")).to_have_text(lesion.name)
    expect(page.locator("#preview")).to_be_visible(timeout=5000)

    # The real thing: whatever this browser keeps on Back, the zone says the same as the input holds.
    page.goto(live_server + "/")
    default = page.inner_text("#drop-text")
    page.set_input_files("#image", str(lesion))
    page.click("#submit")
    page.wait_for_selector("#verdict")
    page.go_back()
    kept = page.evaluate("[...document.querySelector('#image').files].map((f) => f.name)")
    expect(page.locator("#drop-text")).to_have_text(kept[0] if kept else default)
    if kept:  # Debian's Chromium 156 keeps it; Analyse sends it again
        page.click("#submit")
        page.wait_for_selector("#verdict")
        assert lesion.name in page.inner_text("main")


def test_analyse_says_it_is_busy_and_is_ready_again_when_the_page_comes_back(live_server, page):
    from playwright.sync_api import expect

    page.goto(live_server + "/")
    page.set_input_files("#image", str(lesion_fixtures("malignant")[0]))
    # held in the page: a listener added after upload.js's own stops this one submission from leaving
    page.evaluate("""() => document.querySelector('#upload-form').addEventListener(
        'submit', (e) => e.preventDefault(), {once: true})""")
    page.click("#submit")
    expect(page.locator("#submit")).to_be_disabled()
    expect(page.locator("#submit")).to_have_text("Analysing…")
    # the browser's Esc stops an upload and tells the page nothing: Analyse stayed disabled until a reload
    page.keyboard.press("Escape")
    expect(page.locator("#submit")).to_be_enabled()
    page.evaluate("""() => document.querySelector('#upload-form').addEventListener(
        'submit', (e) => e.preventDefault(), {once: true})""")
    page.click("#submit")
    expect(page.locator("#submit")).to_be_disabled()
    page.set_input_files("#image", str(lesion_fixtures("benign")[0]))  # so does another image chosen
    expect(page.locator("#submit")).to_be_enabled()
    page.evaluate("""() => document.querySelector('#upload-form').addEventListener(
        'submit', (e) => e.preventDefault(), {once: true})""")
    page.click("#submit")
    expect(page.locator("#submit")).to_be_disabled()
    # A browser that keeps the page whole in its back-forward cache brings it back as it was left, busy. (The app's
    # pages are no-store, so Chromium reloads them instead; the event is what such a browser sends.)
    page.evaluate("() => window.dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))")
    expect(page.locator("#submit")).to_be_enabled()
    expect(page.locator("#submit")).to_have_text("Analyse")


def test_without_javascript_the_form_still_works_and_no_dead_print_button_shows(live_server, page):
    context = page.context.browser.new_context(java_script_enabled=False)
    try:
        plain = context.new_page()
        plain.goto(live_server + "/")
        assert plain.eval_on_selector("#image", "el => el.getBoundingClientRect().width") > 100  # the native input
        plain.set_input_files("#image", str(lesion_fixtures("malignant")[0]))
        plain.click("#submit")
        plain.wait_for_selector("#verdict")
        assert plain.inner_text("#verdict") == "Malignant — suspicious"
        assert plain.is_visible("a.button") and not plain.is_visible("#print-result")
        assert not plain.is_visible(".scale")  # drawn without the script's width, the bar was full for every result
    finally:
        context.close()


def test_a_long_file_name_does_not_widen_the_page(live_server, page, tmp_path):
    """A camera's export can name a file with one long word; the page broke out of a phone's width with it (1,677 px
    wide on a 390 px screen), and the verdict sat off screen."""
    import shutil

    long_name = tmp_path / ("lesion_photo_from_the_dermatoscope_export_" + "x" * 150 + ".jpg")
    shutil.copy(lesion_fixtures("malignant")[0], long_name)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    try:
        page.goto(live_server + "/")
        page.set_input_files("#image", str(long_name))
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the drop zone names the file
        page.click("#submit")
        page.wait_for_selector("#verdict")
        assert long_name.name in page.inner_text(".hint")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        page.set_viewport_size({"width": 1100, "height": 900})


def test_upload_a_text_file_and_see_the_error(live_server, page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n" * 10)
    page.goto(live_server + "/")
    page.set_input_files("#image", str(notes))
    page.click("#submit")
    page.wait_for_selector("#error-message")
    assert "not an image" in page.inner_text("#error-message")
    page.screenshot(path=str(ARTIFACTS / "error_page.png"))


def test_about_page_renders(live_server, page):
    page.goto(live_server + "/about")
    assert "ROC AUC" in page.inner_text("main")


def test_every_page_passes_the_axe_accessibility_checks(live_server, page, tmp_path):
    """axe-core (Deque's WCAG 2 rules and best practices, bundled by axe-playwright-python) on every page a
    clinician sees: the upload page on a desktop and a phone, both verdicts, a refusal, an error, about, not found."""
    import numpy as np
    from PIL import Image
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    noise = tmp_path / "noise.png"  # refused: not a lesion
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(noise)
    notes = tmp_path / "notes.txt"  # the error page
    notes.write_text("not an image\n")
    found = {}

    def check(name):
        violations = axe.run(page).response["violations"]
        found[name] = [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
                       for v in violations]

    page.goto(live_server + "/")
    check("upload")
    page.set_viewport_size({"width": 390, "height": 844})
    check("upload, phone")
    page.set_viewport_size({"width": 1100, "height": 900})
    for name, upload, shown in (("malignant", lesion_fixtures("malignant")[0], "#verdict"),
                                ("benign", lesion_fixtures("benign")[0], "#verdict"),
                                ("refused", noise, "#refusal-reason"), ("error", notes, "#error-message")):
        page.goto(live_server + "/")
        page.set_input_files("#image", str(upload))
        page.click("#submit")
        page.wait_for_selector(shown)
        check(name)
    page.goto(live_server + "/about")
    check("about")
    page.goto(live_server + "/no-such-page")
    check("not found")
    assert len(found) == 8 and not any(found.values()), found
    # and the checks can fail: an image without its text alternative is a violation axe reports
    page.goto(live_server + "/")
    page.set_input_files("#image", str(lesion_fixtures("malignant")[0]))
    page.click("#submit")
    page.wait_for_selector("#heatmap")
    page.evaluate("document.querySelector('#heatmap').removeAttribute('alt')")
    assert [v["id"] for v in axe.run(page).response["violations"]] == ["image-alt"]
