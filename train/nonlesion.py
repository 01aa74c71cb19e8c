"""Build the non-lesion image set the gate is measured on, from what is reachable offline.

    python -m train.nonlesion --out runs/nonlesion

Writes PNG/JPEG files plus MANIFEST.csv (file, family, source). Families:
- photos: the sample photographs that scikit-image, scikit-learn and matplotlib ship (cat, coffee,
  astronaut, rocket, retina, histology, coins, textures, ...);
- documents: rendered pages of text, tables and forms;
- screenshots: mock-ups of web pages and app windows drawn here, plus real screenshots of this
  project's own pages where Chromium and Playwright are installed (optional);
- drawings: shapes, lines and doodles on paper-coloured backgrounds;
- synthetic: uniform colours (skin tones included), gradients and several kinds of noise.
Deterministic (seeded); no network.
"""
from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = ("patient lesion report clinic follow-up dermatology referral image upload results summary table "
         "date name number total review history treatment consent signature page section figure").split()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def library_photos() -> list[tuple[str, Image.Image]]:
    import matplotlib
    import skimage
    import sklearn.datasets

    sources = []
    sk = Path(skimage.__file__).parent / "data"
    for name in ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "chessboard_RGB.png",
                 "clock_motion.png", "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png", "horse.png",
                 "hubble_deep_field.jpg", "ihc.png", "logo.png", "microaneurysms.png", "moon.png",
                 "motorcycle_left.png", "page.png", "phantom.png", "retina.jpg", "rocket.jpg", "text.png"):
        sources.append((f"scikit-image:{name}", sk / name))
    skl = Path(sklearn.datasets.__file__).parent / "images"
    sources += [(f"scikit-learn:{n}", skl / n) for n in ("china.jpg", "flower.jpg")]
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    sources += [(f"matplotlib:{n}", mpl / n) for n in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png")]
    out = []
    for source, path in sources:
        if path.exists():
            with Image.open(path) as img:
                out.append((source, img.convert("RGB")))
    return out


def document(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(500, 900)), int(rng.integers(600, 1100))
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(235, 256, 3)))
    d = ImageDraw.Draw(img)
    y = 30
    d.text((30, y), " ".join(rng.choice(WORDS, 3)).title(), fill=(0, 0, 0), font=_font(28))
    y += 60
    while y < h - 40:
        if rng.uniform() < 0.15:  # a table
            for r in range(int(rng.integers(3, 7))):
                for c in range(4):
                    x0 = 30 + c * (w - 60) // 4
                    d.rectangle([x0, y, x0 + (w - 60) // 4, y + 24], outline=(60, 60, 60))
                    d.text((x0 + 4, y + 5), str(rng.choice(WORDS)), fill=(20, 20, 20), font=_font(13))
                y += 24
            y += 20
        else:
            line = " ".join(rng.choice(WORDS, int(rng.integers(6, 12))))
            d.text((30, y), line, fill=(30, 30, 30), font=_font(16))
            y += 24
    return img


def screenshot(rng: np.random.Generator) -> Image.Image:
    w, h = [(1280, 800), (1366, 768), (390, 844), (1920, 1080)][int(rng.integers(0, 4))]
    bg = tuple(int(v) for v in rng.integers(225, 256, 3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    bar = tuple(int(v) for v in rng.integers(0, 120, 3))
    d.rectangle([0, 0, w, 60], fill=bar)
    d.text((20, 18), " ".join(rng.choice(WORDS, 2)).title(), fill=(255, 255, 255), font=_font(22))
    y = 90
    while y < h - 80:
        kind = rng.uniform()
        if kind < 0.3:
            d.rounded_rectangle([20, y, min(w - 20, 20 + int(rng.integers(120, 300))), y + 40], 8,
                                fill=tuple(int(v) for v in rng.integers(0, 200, 3)))
            y += 60
        elif kind < 0.5:
            d.rectangle([20, y, w - 20, y + int(rng.integers(80, 200))], outline=(200, 200, 200),
                        fill=tuple(int(v) for v in rng.integers(180, 250, 3)))
            y += 220
        else:
            d.text((20, y), " ".join(rng.choice(WORDS, int(rng.integers(5, 14)))), fill=(40, 40, 40), font=_font(15))
            y += 26
    return img


def drawing(rng: np.random.Generator) -> Image.Image:
    size = int(rng.integers(300, 700))
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(230, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 15))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = sorted(rng.integers(0, size, 2).tolist()) + sorted(rng.integers(0, size, 2).tolist())
        x0, x1 = sorted((x0, y0))
        y0, y1 = sorted((x1 + 1, y1 + 2))
        shape = rng.integers(0, 3)
        if shape == 0:
            d.ellipse([x0, y0, x1 + 5, y1 + 5], outline=colour, width=int(rng.integers(2, 8)))
        elif shape == 1:
            d.rectangle([x0, y0, x1 + 5, y1 + 5], fill=colour)
        else:
            d.line(rng.integers(0, size, 8).tolist(), fill=colour, width=int(rng.integers(2, 10)))
    return img


def synthetic(rng: np.random.Generator, kind: str) -> Image.Image:
    size = int(rng.integers(256, 640))
    if kind == "uniform":
        skin_tones = [(224, 172, 150), (198, 134, 66), (141, 85, 36), (255, 219, 172), (120, 80, 60)]
        colour = skin_tones[int(rng.integers(0, len(skin_tones)))] if rng.uniform() < 0.5 else rng.integers(0, 256, 3)
        arr = np.ones((size, size, 3)) * np.asarray(colour)
    elif kind == "gradient":
        t = np.linspace(0, 1, size)
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        g = t[None, :, None] if rng.uniform() < 0.5 else t[:, None, None]
        arr = a * (1 - g) + b * g + np.zeros((size, size, 1))
    elif kind == "gaussian_noise":
        arr = rng.normal(128, 60, (size, size, 3))
    elif kind == "uniform_noise":
        arr = rng.uniform(0, 255, (size, size, 3))
    elif kind == "salt_pepper":
        arr = (rng.uniform(size=(size, size, 1)) < 0.5) * 255.0 * np.ones((1, 1, 3))
    else:  # blurred colour blobs ("plasma")
        small = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def browser_screenshots(out: Path) -> list[tuple[str, Path]]:
    """Real screenshots of this project's pages, where Chromium and Playwright are available."""
    import shutil
    import threading

    chromium = shutil.which("chromium")
    if not chromium:
        return []
    try:
        from playwright.sync_api import sync_playwright
        from werkzeug.serving import make_server

        from app import create_app
    except ImportError:
        return []
    server = make_server("127.0.0.1", 0, create_app({"TESTING": False}), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    shots = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
            for i, (path, size) in enumerate([("/", (1280, 800)), ("/about", (1280, 900)), ("/", (390, 844)),
                                              ("/about", (390, 844)), ("/missing", (1024, 700))]):
                page = browser.new_page(viewport={"width": size[0], "height": size[1]})
                page.goto(base + path)
                target = out / f"screenshot_browser_{i:02d}.png"
                page.screenshot(path=str(target))
                shots.append((f"chromium:{path}@{size[0]}x{size[1]}", target))
                page.close()
            browser.close()
    finally:
        server.shutdown()
    return shots


def build(out: Path, seed: int = 0, with_browser: bool = True) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []

    def save(img: Image.Image, family: str, source: str, name: str):
        path = out / name
        img.save(path)
        rows.append({"file": name, "family": family, "source": source})

    for i, (source, img) in enumerate(library_photos()):
        save(img, "photos", source, f"photo_{i:02d}.png")
    for i in range(12):
        save(document(rng), "documents", "rendered text", f"document_{i:02d}.png")
    for i in range(12):
        save(screenshot(rng), "screenshots", "drawn web-page mock-up", f"screenshot_mock_{i:02d}.png")
    for i in range(10):
        save(drawing(rng), "drawings", "random shapes", f"drawing_{i:02d}.png")
    kinds = ("uniform", "gradient", "gaussian_noise", "uniform_noise", "salt_pepper", "plasma")
    for i in range(24):
        kind = kinds[i % len(kinds)]
        save(synthetic(rng, kind), "synthetic", kind, f"synthetic_{kind}_{i:02d}.png")
    if with_browser:
        for source, path in browser_screenshots(out):
            rows.append({"file": path.name, "family": "screenshots", "source": source})
    with open(out / "MANIFEST.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "family", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv=None):
    from train.cli import random_seed, writable_or_exit  # here: the module itself needs no TensorFlow

    parser = argparse.ArgumentParser(prog="python -m train.nonlesion", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/nonlesion", help="output folder (default: runs/nonlesion)")
    parser.add_argument("--seed", type=random_seed, default=0, help="(default: 0)")
    parser.add_argument("--no-browser", action="store_true", help="skip the real Chromium screenshots")
    args = parser.parse_args(argv)
    writable_or_exit(parser, args.out)
    rows = build(Path(args.out), args.seed, not args.no_browser)
    families = {}
    for r in rows:
        families[r["family"]] = families.get(r["family"], 0) + 1
    print(f"{len(rows)} images in {args.out}: {families}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
