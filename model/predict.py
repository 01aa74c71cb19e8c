"""Judge image files with a bundle, exactly as the app judges uploads, and list one row per file.

    python -m model.predict IMAGE_OR_FOLDER [...] [--model BUNDLE.keras] [--out predictions.csv] [--heatmaps DIR]

For images without labels (a clinic's own, a folder to triage); with labels, `python -m train.evaluate` measures.
Every file takes the app's path, `Predictor.assess`: decoding with EXIF orientation, the quality and not-a-lesion
gates, the network through the card's views, the card's calibration, threshold and indeterminate band, and the
cautions. Folders are searched recursively for JPEG, PNG, BMP, TIFF and WebP files (and HEIC, which is named, not
skipped); hidden files are left out. A file that cannot be read gets a row with its code and never stops the others.
Prints a table and a count; `--out` writes the rows as CSV as they come, so an interrupted run keeps those it wrote;
`--heatmaps DIR` saves the Grad-CAM picture the result page shows for each verdict, as PNG. Exit status 0, or 2 with
one sentence when the bundle or a path is not there, the CSV cannot be written, or no image file was found.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import sys
from pathlib import Path

from model.bundle import DEFAULT_BUNDLE, BundleError, bundle_files, load_bundle
from model.explain import HEATMAP_SIDE, GradCAM, shown_heatmap, thumbnail
from model.inference import Predictor
from model.preprocessing import IMAGE_SUFFIXES, ImageError, image_files_under

FIELDS = ("file", "verdict", "probability_malignant", "confidence", "threshold", "indeterminate", "cautions", "code",
          "reason", "heatmap")
CHUNK = 32  # images decoded and judged at a time: memory stays flat however many files


def image_files(paths: list[str]) -> list[Path]:
    """The files named, and the image files under the folders named (sorted, hidden ones left out)."""
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += image_files_under(path)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{name} is neither an image file nor a folder")
    return files


def judge(predictor, files: list[Path], heatmaps: Path | None = None):
    """One row per file, in order, yielded a chunk of rows at a time: a verdict, a refusal by the gate, or the reason
    the file could not be read; with `heatmaps`, each verdict's Grad-CAM picture saved there as
    `<row number>_<file name>.png`."""
    cam = GradCAM(predictor.bundle.model) if heatmaps else None
    rows = []
    for start in range(0, len(files), CHUNK):
        chunk, images, slots = files[start : start + CHUNK], [], []  # slots: rows' numbers, from the first file
        shown = []  # with heatmaps: each image shrunk to the heatmap's size; the full images are not kept
        for path in chunk:
            row = {"file": str(path)}
            try:
                image = predictor.decode(path.read_bytes())
                images.append(predictor.prepare(image))  # 32 full-size photos of 48 megapixels held 4.6 GB
                shown.append(thumbnail(image, HEATMAP_SIDE) if cam else None)
                slots.append(len(rows))
                del image
            except ImageError as exc:
                row.update(verdict="unreadable", code=exc.code, reason=exc.message)
            except OSError as exc:
                row.update(verdict="unreadable", code="unreadable_file", reason=f"The file could not be read ({exc}).")
            rows.append(row)
        for slot, prepared, picture_of, result in zip(slots, images, shown, predictor.assess(images)):
            if result.get("rejected"):
                rows[slot].update(verdict="refused", code=result["code"], reason=result["reason"])
            else:
                rows[slot].update(verdict=result["label"], probability_malignant=result["probability_malignant"],
                                  confidence=result["confidence"], threshold=result["threshold"],
                                  indeterminate=result["indeterminate"],
                                  cautions=";".join(c["code"] for c in result["cautions"]))
                if cam:
                    picture = heatmaps / f"{slot + 1:04d}_{Path(rows[slot]['file']).stem}.png"
                    shown_heatmap(cam, predictor, picture_of, HEATMAP_SIDE, prepared.square).save(picture)
                    rows[slot]["heatmap"] = str(picture)
        yield rows[start:]


def table(rows: list[dict]) -> str:
    width = max([len("file")] + [len(r["file"]) for r in rows])
    lines = [f"{'file':<{width}}  {'verdict':<10} {'P(melanoma)':>11}  note", "-" * (width + 36)]
    for r in rows:
        p = f"{r['probability_malignant']:.3f}" if "probability_malignant" in r else ""
        note = r.get("code") or ", ".join(filter(None, ["indeterminate" if r.get("indeterminate") else "",
                                                         r.get("cautions", "").replace(";", ", ")]))
        lines.append(f"{r['file']:<{width}}  {r['verdict']:<10} {p:>11}  {note}")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("malignant", "benign", "refused", "unreadable")}
    lines.append(f"{len(rows)} files: {counts['malignant']} malignant (suspicious), {counts['benign']} benign, "
                 f"{counts['refused']} refused by the gate, {counts['unreadable']} not readable as images")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m model.predict", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--model", default=str(DEFAULT_BUNDLE), help="bundle (default: the shipped model)")
    parser.add_argument("--out", default=None, metavar="CSV", help="also write the rows here, as CSV")
    parser.add_argument("--heatmaps", default=None, metavar="DIR",
                        help="save each verdict's Grad-CAM picture, as the result page shows it, here as PNG")
    parser.add_argument("--runtime", default="auto", choices=("auto", "openvino", "tensorflow"),
                        help="as the app's MELANOMA_RUNTIME (default: auto, OpenVINO where it converts the model)")
    args = parser.parse_args(argv)
    try:
        files = image_files(args.paths)
        if not files:
            raise FileNotFoundError(f"No image files ({', '.join(sorted(IMAGE_SUFFIXES))}) were found under "
                                    f"{', '.join(args.paths)}.")
        bundle = load_bundle(args.model)
    except (FileNotFoundError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    there = Path(args.out).resolve() if args.out else None  # the CSV, opened for writing, emptied what was there
    clash = ("one of the images to judge", "the image") if there in {f.resolve() for f in files} else (
        (f"a file of the bundle {bundle.path}", "it") if there in bundle_files(bundle.path) else None)
    if clash:
        print(f"error: --out {args.out} is {clash[0]}: writing the CSV there would replace {clash[1]}. Give the CSV a "
              "path of its own (e.g. predictions.csv).", file=sys.stderr)
        raise SystemExit(2)
    out, heatmaps = None, Path(args.heatmaps) if args.heatmaps else None
    searched = {Path(p).resolve() for p in args.paths if Path(p).is_dir()}  # and every folder under them
    beside = {f.resolve().parent for f in files}
    if heatmaps and (heatmaps.resolve() in beside or searched & {heatmaps.resolve(), *heatmaps.resolve().parents}):
        # among the images: the next run over the folder judged the heatmaps too, and a name could meet an image's
        print(f"error: --heatmaps {args.heatmaps} is among the images to judge: the heatmaps would mix with them (and "
              "be judged on the next run). Give them a folder of their own (e.g. heatmaps/).", file=sys.stderr)
        raise SystemExit(2)
    try:  # before the first image: the CSV is written chunk by chunk, so an interrupted run keeps its rows
        if heatmaps:
            heatmaps.mkdir(parents=True, exist_ok=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            out = open(args.out, "w", newline="")
    except OSError as exc:
        print(f"error: cannot write {exc.filename or args.out} ({exc.strerror or exc})", file=sys.stderr)
        raise SystemExit(2) from None
    rows = []
    with out or contextlib.nullcontext():
        writer = csv.DictWriter(out, fieldnames=FIELDS) if out else None
        if writer:
            writer.writeheader()
        try:
            for chunk in judge(Predictor(bundle, runtime=args.runtime), files, heatmaps):
                rows += chunk
                if writer:
                    writer.writerows(chunk)
                    out.flush()
                if len(files) > CHUNK:
                    print(f"{len(rows):,} of {len(files):,} files judged", file=sys.stderr, flush=True)
        except KeyboardInterrupt:  # Ctrl-C: what was judged is in the CSV, a line says so, no traceback
            kept = f"; {args.out} keeps their rows" if args.out else ""
            print(f"stopped (Ctrl-C) after {len(rows):,} of {len(files):,} files{kept}.", file=sys.stderr)
            raise SystemExit(130) from None
    print(f"{bundle.name} {bundle.version}, threshold {bundle.card['threshold']:.3f}")
    print(table(rows))
    if args.out:
        print(f"written: {args.out}")
    return rows


if __name__ == "__main__":
    main()
