"""Are two bundles the same? Weights, gate file and model card, compared bit for bit.

    python -m train.bundlediff runs/a/melanoma_efficientnet.keras runs/b/melanoma_efficientnet.keras

`python -m train` runs TensorFlow's deterministic ops (`--deterministic`, the default), so the same command, seed,
data, library versions, kind of CPU and number of cores should give the same bundle. This says whether two bundles
are that: it compares

- the network: its architecture (`config.json` inside the `.keras` file) and every weight array
  (`model.weights.h5`), read straight from the files, without building the model;
- the gate's feature bank beside it (`<name>.gate.npz`), array by array;
- the model card beside it (`<name>.json`): every field, except those that name the run rather than the model
  (the date, the version, the run folder, the training time, the machine and the checkout; see `RUN_FIELDS`),
  which are listed where they differ but do not count.

It prints one line per part and the verdict, writes the same as JSON with `--out`, and exits 0 when the bundles are
identical, 1 when they differ, 2 when a file cannot be read.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np

from model.bundle import BundleError, card_path
from train.cli import not_a_bundle_file, writable
from train.data import DataError

# card fields (and the fields under them) that belong to the run, not to the model: they differ between two runs of
# one command
RUN_FIELDS = ("created", "version", "training.command", "training.seconds", "training.cpu", "training.cpu_count",
              "training.code", "training.arguments.run_dir", "training.arguments.output", "test.seconds_per_image",
              "validation.seconds_per_image")
SHOWN = 12  # differing card fields printed; --out has them all
FIRST = ("test.roc_auc", "threshold", "temperature", "validation.roc_auc", "test.sensitivity", "test.specificity",
         "test.ece")  # printed before the other differing fields
MISSING = "<missing>"


def read_weights(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(architecture config, weight arrays by their path in model.weights.h5) of a .keras file."""
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            weights_file = io.BytesIO(z.read("model.weights.h5"))
        with h5py.File(weights_file, "r") as f:
            f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset)
                         else None)
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist") from None
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
        raise BundleError(f"{path} is not a Keras bundle (.keras file with config.json and model.weights.h5): "
                          f"{e}") from None
    return config, arrays


def read_card(path: Path) -> dict:
    card = card_path(path)
    try:
        return json.loads(card.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} has no model card beside it ({card.name})") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"the model card {card} cannot be read: {e}") from None


def read_gate(path: Path) -> dict[str, np.ndarray] | None:
    gate_path = path.with_suffix(".gate.npz")
    if not gate_path.exists():
        return None
    try:
        with np.load(gate_path) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as e:
        raise BundleError(f"the gate file {gate_path} cannot be read: {e}") from None


def flatten(value, prefix: str = "") -> dict:
    """A card as dotted keys to leaf values (lists stay whole)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def compare_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    """How many arrays of a and b differ (in shape or any element, NaN equal to NaN), and by how much at most."""
    names = sorted(set(a) | set(b))
    only = [n for n in names if (n in a) != (n in b)]
    different, largest = [], 0.0
    for name in names:
        if name in only:
            continue
        x, y = a[name], b[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            different.append(name)
        elif not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
            different.append(name)
            if x.dtype.kind in "fciu":
                largest = max(largest, float(np.nanmax(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return {"arrays": len(names), "only_in_one": only, "different": different, "largest_difference": largest,
            "identical": not only and not different}


def is_run_field(key: str) -> bool:
    return any(key == field or key.startswith(field + ".") for field in RUN_FIELDS)


def compare_cards(a: dict, b: dict) -> dict:
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    differ = [k for k in keys if fa.get(k, MISSING) != fb.get(k, MISSING)]
    counted = sorted((k for k in differ if not is_run_field(k)),
                     key=lambda k: (FIRST.index(k) if k in FIRST else len(FIRST), k))
    machines = [f"{f.get('training.cpu', 'an unrecorded CPU')}, "
                f"{f.get('training.cpu_count', '?')} core{'' if f.get('training.cpu_count') == 1 else 's'}"
                for f in (fa, fb)]
    return {"fields": len(keys), "different": {k: [fa.get(k, MISSING), fb.get(k, MISSING)] for k in counted},
            "run_fields_different": [k for k in differ if is_run_field(k)], "machines": machines,
            "identical": not counted}


def _short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def compare(first: Path, second: Path) -> dict:
    (config_a, weights_a), (config_b, weights_b) = read_weights(first), read_weights(second)
    gate_a, gate_b = read_gate(first), read_gate(second)
    if gate_a is None and gate_b is None:
        gate = {"present": False, "identical": True}
    elif gate_a is None or gate_b is None:
        gate = {"present": "one", "identical": False}
    else:
        gate = {"present": True, **compare_arrays(gate_a, gate_b)}
    parts = {"architecture": {"identical": config_a == config_b},
             "weights": compare_arrays(weights_a, weights_b),
             "gate": gate,
             "card": compare_cards(read_card(first), read_card(second))}
    return {"bundles": [str(first), str(second)], **parts,
            "identical": all(part["identical"] for part in parts.values())}


def describe(result: dict) -> list[str]:
    """The lines a person reads."""
    lines = [f"architecture  {'identical' if result['architecture']['identical'] else 'DIFFERENT'}"]
    for part in ("weights", "gate"):
        r = result[part]
        if part == "gate" and r["present"] is False:
            lines.append("gate          no gate file beside either bundle")
        elif part == "gate" and r["present"] == "one":
            lines.append("gate          DIFFERENT: a gate file beside one bundle only")
        elif r["identical"]:
            lines.append(f"{part:<13} identical: all {r['arrays']} arrays, bit for bit")
        else:
            only = f", {len(r['only_in_one'])} in one bundle only" if r["only_in_one"] else ""
            lines.append(f"{part:<13} DIFFERENT: {len(r['different'])} of {r['arrays']} arrays{only}, largest "
                         f"difference {r['largest_difference']:.3g}")
    card = result["card"]
    if card["identical"]:
        lines.append(f"card          identical: {card['fields'] - len(card['run_fields_different'])} fields")
    else:
        lines.append(f"card          DIFFERENT: {len(card['different'])} fields")
        shown = list(card["different"].items())
        lines += [f"  {key}: {_short(a)} against {_short(b)}" for key, (a, b) in shown[:SHOWN]]
        if len(shown) > SHOWN:
            lines.append(f"  ... and {len(shown) - SHOWN} more (--out writes them all)")
    if card["run_fields_different"]:
        lines.append(f"              (not compared, they name the run: {', '.join(card['run_fields_different'])})")
    if not result["identical"] and card["machines"][0] != card["machines"][1]:
        lines.append(f"trained on {card['machines'][0]} against {card['machines'][1]}: deterministic ops give one "
                     "bundle per kind of CPU and number of cores, so another machine gives another bundle")
    lines.append("verdict: identical bundles" if result["identical"] else "verdict: the bundles differ")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.bundlediff", description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="bundle .keras file (its .json card beside it)")
    parser.add_argument("second", type=Path, help="the other bundle .keras file")
    parser.add_argument("--out", type=Path, help="also write the comparison here as JSON")
    args = parser.parse_args(argv)
    try:
        if args.out:
            writable(args.out.parent, given=args.out)
            not_a_bundle_file(args.out, [args.first, args.second])
        result = compare(args.first, args.second)
    except (BundleError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(describe(result)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
