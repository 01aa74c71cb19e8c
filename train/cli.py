"""What every command does with a mistake a person can fix, a data folder, bundle or weights file that is not there or
not right: one sentence on stderr and exit status 2, as argparse answers a bad option; no traceback."""
from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import tempfile
from pathlib import Path

from model.architecture import WeightsError
from model.bundle import BundleError
from train.data import DataError

PERSON_CAN_FIX = (DataError, BundleError, WeightsError)


def ranged(convert, inside, what: str):
    """An argparse type: `convert` (int or float) of the text, refused with "`what`, not 'TEXT'" where it does not
    convert or `inside(value)` is false (NaN never is inside)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not inside(value):
            raise argparse.ArgumentTypeError(f"{what}, not {text!r}")
        return value
    return parse


# --bootstrap: fewer than 10 resamples give no 95% interval (NaN)
resamples = ranged(int, lambda v: v >= 10, "a whole number of resamples, 10 or more (e.g. 1000)")
# --target-sensitivity
share = ranged(float, lambda v: 0.0 < v < 1.0, "a share between 0 and 1 (e.g. 0.9)")
# --seed: NumPy takes 0 to 2**32 - 1, and training adds up to a few thousand to it for its augmentation layers and
# soup copies; a seed beyond was NumPy's ValueError traceback. 2**31 - 1 trains with every option (checked ad hoc)
random_seed = ranged(int, lambda v: 0 <= v < 2**31, "a seed, a whole number from 0 to 2147483647 (e.g. 42)")


def writable(folder, flag: str = "--out", given=None) -> Path:
    """`folder`, once a file could be written where it is to be: called before a command's work, so a place it cannot
    write ends the command at once with one sentence, not with a traceback after minutes of work. It tries a temporary
    file in the deepest part of the path that exists, which must be a folder; the command makes the missing folders
    when it writes. So it leaves nothing behind and never makes or removes a folder that another process may be using
    (the workers of one multi-worker training share --run-dir: the check removed the folder another worker had just
    made, and that worker's args.json had nowhere to go). `given`: what the person gave `flag`, where that is a file
    in `folder`."""
    folder = Path(folder)
    there = next(p for p in (folder, *folder.parents) if os.path.lexists(p))  # '.' or '/' at the latest
    try:
        if not there.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(there))
        with tempfile.TemporaryFile(dir=there):
            pass
    except OSError as e:
        raise DataError(f"cannot write {flag} {given or folder}: {e.strerror or e}") from None
    return folder


def not_a_bundle_file(out, bundles, flag: str = "--out") -> None:
    """A DataError where `out`, a file the command writes, is one of the files of `bundles` (.keras, card, gate file):
    written there, it replaced the file, and the bundle was lost (`train.bundlediff A B --out A.json`, checked: the
    card became the comparison, and the bundle was refused from then on)."""
    from model.bundle import bundle_files

    for bundle in bundles:
        if Path(out).resolve() in bundle_files(bundle):
            raise DataError(f"{flag} {out} is a file of the bundle {bundle}: writing there would replace it. Give the "
                            f"output a path of its own (e.g. runs/comparison.json).")


def writable_or_exit(parser: argparse.ArgumentParser, folder, flag: str = "--out") -> Path:
    """`writable(folder)` for the commands that do not run under `command` (their modules keep TensorFlow out of
    their imports): a place they cannot write is the parser's own error, its sentence and status 2."""
    try:
        return writable(folder, flag)
    except DataError as exc:
        parser.error(str(exc))


def command(main):
    """Wrap a command's `main(argv=None)` so that `PERSON_CAN_FIX` errors end it with their sentence."""
    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except PERSON_CAN_FIX as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:  # a person stopping it: one line, the shell's status for it, no traceback
            print("stopped (Ctrl-C) before the end.", file=sys.stderr)
            raise SystemExit(130) from None
    return wrapped
