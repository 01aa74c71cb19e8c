"""The model bundle: `<name>.keras` plus `<name>.json`, the model card the server reads everything from."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras

from model import architecture as _architecture  # noqa: F401  registers the pooling layers for load_model

CLASS_NAMES = ("benign", "malignant")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = REPO_ROOT / "model" / "shipped" / "melanoma_efficientnet.keras"


class BundleError(ValueError):
    """A bundle that cannot be used: the message says which file and what is wrong."""


class BundleNotFound(BundleError, FileNotFoundError):
    """The .keras file, or the model card that must sit beside it, is not there."""


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


def save_bundle(model: keras.Model, card: dict, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"A bundle is saved as a .keras file. Received: path={str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if getattr(model, "optimizer", None) is not None:  # ship weights only, not the training state
        lean = keras.Model.from_config(model.get_config())
        lean.set_weights(model.get_weights())
        model = lean
    model.save(path)
    card_path(path).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return path


def copy_bundle(src: str | Path, dst: str | Path) -> Path:
    """Copy a bundle (.keras, card, gate features) to a new path, keeping the card's references right."""
    import shutil

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    card = load_card(src)
    gate = card.get("gate") or {}
    if gate.get("features_file"):
        shutil.copyfile(src.parent / gate["features_file"], dst.with_suffix(".gate.npz"))
        gate["features_file"] = dst.with_suffix(".gate.npz").name
    card_path(dst).write_text(json.dumps(card, indent=2) + "\n")
    return dst


def load_card(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = next(iter(sorted(path.glob("*.keras"))), path / "missing.keras")
    card = card_path(path)
    if not card.is_file():
        if path.suffix == ".keras" and not path.exists():
            raise BundleNotFound(f"Model bundle not found: {path}")
        raise BundleNotFound(f"The model card {card} is missing: a bundle is the .keras file and its card beside it")
    try:
        return json.loads(card.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"The model card {card} is not valid JSON ({exc})") from None


def load_bundle(path: str | Path = DEFAULT_BUNDLE) -> Bundle:
    """Load a bundle from its .keras file (or a folder holding one); the card must sit beside it."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.keras"))
        if not found:
            raise BundleNotFound(f"No .keras file in {path}")
        path = found[0]
    if not path.is_file():
        raise BundleNotFound(f"Model bundle not found: {path}")
    card = load_card(path)
    if tuple(card.get("class_names", ())) != CLASS_NAMES:
        raise BundleError(f"The model card must list class_names {list(CLASS_NAMES)}. "
                          f"Received: {card.get('class_names')}")
    try:
        model = keras.models.load_model(path, compile=False)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path} is not a Keras model file this version can load ({exc})") from None
    return Bundle(model, card, path)
