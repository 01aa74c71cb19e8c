"""The model bundle: `<name>.keras` plus `<name>.json`, the model card the server reads everything from."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from model import architecture as _architecture  # noqa: F401  registers the pooling layers for load_model

CLASS_NAMES = ("benign", "malignant")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = REPO_ROOT / "model" / "shipped" / "melanoma_efficientnet.keras"


class BundleError(ValueError):
    """A bundle that cannot be used: the message says which file and what is wrong."""


class BundleNotFound(BundleError, FileNotFoundError):
    """The .keras file, or the model card that must sit beside it, is not there."""


class BundleUnreadable(BundleError):
    """A file of the bundle that this user may not read: the bundle is fine, the fix is its permissions."""


@dataclass
class Bundle:
    model: keras.Model
    card: dict
    path: Path

    @property
    def name(self) -> str:
        return self.card.get("name", self.path.stem)

    @property
    def version(self) -> str:
        return self.card.get("version", "unversioned")


def card_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def write_card(model_path: str | Path, card: dict, also=()) -> Path:
    """Write the model card beside `model_path` whole or not at all (`_write_whole`): written in place, the card was
    emptied first, so a full disk or a Ctrl-C in the middle left it cut short, and the bundle could not be loaded.
    `also`: (path, fill) pairs for the bundle's other files written with it, `fill(draft)` writing one: each draft is
    complete before any file is replaced, so a failure leaves the whole bundle as it was, never one part new."""
    target = card_path(model_path)

    def fill(draft: Path) -> None:
        draft.write_text(json.dumps(card, indent=2) + "\n")

    _write_whole([*also, (target, fill)], f"the bundle {model_path}" if also else f"the model card {target}")
    return target


def _write_whole(pairs, what: str) -> None:
    """For each (path, fill) pair, `fill(draft)` writes a new file beside `path`; once every draft is complete, each is
    renamed over its path, in order. Each file keeps the mode of the one it replaces (a new one: the umask's). A
    failure leaves every file as it was, no draft behind, and an OSError (a full disk, a file-size limit) becomes a
    BundleError, the commands' one sentence: "cannot write `what` (the reason); it is left as it was"."""
    drafts = []
    try:
        for path, write in pairs:
            path = Path(path)
            fd, draft = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)  # Keras: .keras
            os.close(fd)
            drafts.append(Path(draft))
            write(drafts[-1])
            # mkstemp makes it readable by this user only
            os.chmod(draft, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        for (path, _), draft in zip(pairs, drafts):
            os.replace(draft, path)
    except BaseException as exc:
        for draft in drafts:
            draft.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BundleError(f"cannot write {what} ({exc.strerror or exc}); it is left as it was") from None
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def weights_digest(model: keras.Model) -> str:
    """The sha256 of the network's weights (each array's shape and float32 bytes, in Keras's order): what a model card
    records as `weights_sha256`, so that the card's threshold and calibration are never served with another network.
    The weights, not the .keras file: Keras stamps each save with its date."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        array = np.ascontiguousarray(array, dtype=np.float32)
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_bundle(model: keras.Model, card: dict, path: str | Path) -> Path:
    """Save the network as `path` (.keras) and `card` beside it; the card (the dict given, too) records the weights'
    digest."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"A bundle is saved as a .keras file. Received: path={str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if getattr(model, "optimizer", None) is not None:  # ship weights only, not the training state
        lean = keras.Model.from_config(model.get_config())
        lean.set_weights(model.get_weights())
        model = lean
    card["weights_sha256"] = weights_digest(model)
    write_card(path, card, also=[(path, model.save)])  # the .keras file and its card replaced together
    return path


def copy_bundle(src: str | Path, dst: str | Path) -> Path:
    """Copy a bundle (.keras, card, gate features) to a new path, keeping the card's references right; the bundle there
    replaced whole or not at all (`write_card`): a full disk in the middle (`python -m train --output
    model/shipped/...`) cut the old .keras file short, and a .keras copied without its card was another network's."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    card = load_card(src)
    files = [(dst, copier(src))]
    gate = card.get("gate") or {}
    if gate.get("features_file"):
        files.append((dst.with_suffix(".gate.npz"), copier(src.parent / gate["features_file"])))
        gate["features_file"] = dst.with_suffix(".gate.npz").name
    write_card(dst, card, also=files)
    return dst


def copier(src: Path):
    """A `fill` for `write_card`'s `also`: copies `src`."""
    import shutil
    return lambda draft: shutil.copyfile(src, draft)


def bundle_in(folder: Path) -> Path:
    """The .keras file of the one bundle in `folder` (a .keras file with its card beside it); a BundleError where
    there is none, or several (before, the first by name was taken without a word, a checkpoint as soon as a bundle)."""
    found = sorted(p for p in folder.glob("*.keras") if card_path(p).is_file())
    if not found:
        raise BundleNotFound(f"No bundle in {folder}: a bundle is a .keras file with its model card (.json) beside it")
    if len(found) > 1:
        raise BundleError(f"{len(found)} bundles in {folder} ({', '.join(p.name for p in found[:4])}"
                          f"{', ...' if len(found) > 4 else ''}): give the .keras file of the one meant.")
    return found[0]


def bundle_files(path: str | Path) -> set[Path]:
    """The resolved paths of the files of the bundle at `path`: its .keras file, its card and its gate file."""
    path = Path(path)
    return {path.resolve(), *(path.with_suffix(suffix).resolve() for suffix in (".json", ".gate.npz"))}


def readable(file: Path) -> Path:
    """`file`, or a BundleError where this user may not read it (a bundle copied by root with mode 600, served by a
    service account): it was a PermissionError traceback for the card, and "damaged" for the .keras and gate files."""
    try:
        with open(file, "rb"):
            return file
    except PermissionError as exc:
        raise BundleUnreadable(f"{file} cannot be read by this user ({exc.strerror}): give the user who runs this "
                               f"read access to the bundle's files (for example chmod a+r on them).") from None


def load_card(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = bundle_in(path)
    card = card_path(path)
    if not card.is_file():
        if path.suffix == ".keras" and not path.exists():
            raise BundleNotFound(f"Model bundle not found: {path}")
        raise BundleNotFound(f"The model card {card} is missing: a bundle is the .keras file and its card beside it")
    try:
        return json.loads(readable(card).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"The model card {card} is not valid JSON ({exc})") from None


def _number(value) -> float | None:
    """value as a finite float, or None (booleans, text, NaN and infinity are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def check_card(card, path: str | Path) -> None:
    """A BundleError naming the card and the field, for a card that serving cannot use: one edited by hand, cut
    short or from another program. What `python -m train` writes always passes; fields older cards lack keep their
    defaults (temperature 1, no logit bias, one view, no gate)."""
    where = f"The model card {card_path(path)}"
    if not isinstance(card, dict):
        raise BundleError(f"{where} is not a JSON object: a card is what python -m train writes beside the .keras "
                          "file.")
    if tuple(card.get("class_names", ())) != CLASS_NAMES:
        raise BundleError(f"The model card must list class_names {list(CLASS_NAMES)}. "
                          f"Received: {card.get('class_names')}")
    problems = []
    if not isinstance(card.get("backbone"), str):
        problems.append(f"backbone must name the network (received {card.get('backbone')!r})")
    threshold = _number(card.get("threshold"))
    if threshold is None or not 0.0 <= threshold <= 1.0:
        problems.append(f"threshold must be a probability between 0 and 1 (received {card.get('threshold')!r})")
    spec = card.get("preprocessing")
    size = spec.get("image_size") if isinstance(spec, dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        problems.append("preprocessing must hold image_size, the input side in pixels, a whole number of at least 32 "
                        f"(received {size if isinstance(spec, dict) else spec!r})")
    if "temperature" in card and not (_number(card["temperature"]) or 0.0) > 0.0:
        problems.append(f"temperature must be a positive number (received {card['temperature']!r})")
    if "logit_bias" in card and _number(card["logit_bias"]) is None:
        problems.append(f"logit_bias must be a number (received {card['logit_bias']!r})")
    if card.get("tta_views", 1) not in (1, 2, 4, 8) or isinstance(card.get("tta_views"), bool):
        problems.append(f"tta_views must be 1, 2, 4 or 8 (received {card['tta_views']!r})")
    band = card.get("indeterminate_band")
    if band is not None:
        ends = [_number(v) for v in band] if isinstance(band, list) and len(band) == 2 else [None]
        if None in ends or not 0.0 <= ends[0] <= ends[1] <= 1.0:
            problems.append(f"indeterminate_band must be two probabilities, low then high (received {band!r})")
    digest = card.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                   and set(digest) <= set("0123456789abcdef")):
        problems.append(f"weights_sha256 must be 64 hexadecimal digits, as python -m train writes it (received "
                        f"{digest!r})")
    gate = card.get("gate")
    if gate is not None and not isinstance(gate, dict):
        problems.append(f"gate must be an object (received {gate!r})")
    elif gate and gate.get("features_file") and not (Path(path).parent / str(gate["features_file"])).is_file():
        problems.append(f"gate.features_file {gate['features_file']!r} is not beside the .keras file: copy it with "
                        "the bundle, or the not-a-lesion gate cannot run")
    if problems:
        raise BundleError(f"{where} cannot be used: " + "; ".join(problems) + ".")


def check_gate_file(card: dict, path: Path) -> None:
    """A BundleError for a gate file that is damaged, or not the one the card was written for: its k and distance
    threshold are the card's gate.k and gate.distance_threshold, exactly, when `python -m train.gate` writes the two.
    Another bundle's gate file (left beside a .keras file and card copied over) judged images by another network's
    features without a word."""
    gate = card.get("gate") or {}
    if not gate.get("features_file"):
        return
    file = Path(path).parent / str(gate["features_file"])
    if file.exists():  # a missing one is said below
        readable(file)
    try:
        with np.load(file) as z:
            k, threshold = int(z["k"]), float(z["threshold"])
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise BundleError(f"The gate file {file} is damaged or not a gate file ({exc}): copy the bundle again, its "
                          "three files together.") from None
    if "distance_threshold" in gate and (k, threshold) != (gate.get("k"), gate.get("distance_threshold")):
        raise BundleError(f"The gate file {file} is not the one the model card {card_path(path).name} was written for "
                          f"(k {k} and distance threshold {threshold:.6g}; the card's: {gate.get('k')} and "
                          f"{gate.get('distance_threshold')}): it belongs to another bundle. Keep the three files that "
                          "python -m train wrote together.")


def load_bundle(path: str | Path = DEFAULT_BUNDLE) -> Bundle:
    """Load a bundle from its .keras file (or a folder holding one); the card must sit beside it."""
    path = Path(path)
    if path.is_dir():
        path = bundle_in(path)
    if not path.is_file():
        raise BundleNotFound(f"Model bundle not found: {path}")
    card = load_card(path)
    check_card(card, path)
    if not zipfile.is_zipfile(readable(path)):
        raise BundleError(f"{path} is damaged or not a .keras file (a .keras file is a zip archive): copy the bundle "
                          "again.")
    try:
        model = keras.models.load_model(path, compile=False)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path} is not a Keras model file this version can load ({exc})") from None
    check_gate_file(card, path)
    size, shape = card["preprocessing"]["image_size"], tuple(model.input_shape[1:3])
    if shape != (size, size) and None not in shape:  # was a Keras traceback at the first image judged
        raise BundleError(f"{path} takes {shape[0]}x{shape[1]}-pixel inputs, but its model card "
                          f"{card_path(path).name} says {size}x{size}: the two files are not a bundle; keep the .keras "
                          f"file and the card that python -m train wrote together.")
    if card.get("weights_sha256") not in (None, weights_digest(model)):
        raise BundleError(f"{path} is not the network its model card {card_path(path).name} was written for (the "
                          "card's weights_sha256 differs from the file's weights): its threshold and calibration "
                          "belong to another network. A .keras file was replaced without its card, or the other way "
                          "round; keep the two files that python -m train wrote together.")
    return Bundle(model, card, path)


def main(argv=None) -> int:
    """`python -m model.bundle --seal BUNDLE.keras`: record the digest of a bundle's weights in its card, for a bundle
    saved before cards carried it (python -m train records it itself). From then on, loading the bundle refuses a
    .keras file that is not the network the card was written for."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m model.bundle", description=main.__doc__.split("\n")[0])
    parser.add_argument("--seal", required=True, metavar="BUNDLE", help="the bundle's .keras file (or its folder)")
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.seal)
        card = bundle.card
        if card.get("weights_sha256"):
            print(f"{card_path(bundle.path)} already records its weights ({card['weights_sha256'][:12]}...): unchanged")
            return 0
        card["weights_sha256"] = weights_digest(bundle.model)
        write_card(bundle.path, card)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{card_path(bundle.path)} now records the weights of {bundle.path.name} ({card['weights_sha256'][:12]}...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
