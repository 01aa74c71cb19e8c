"""What every command does with a mistake a person can fix, a data folder, bundle or weights file that is not there or
not right: one sentence on stderr and exit status 2, as argparse answers a bad option; no traceback."""
from __future__ import annotations

import functools
import sys

from model.architecture import WeightsError
from model.bundle import BundleError
from train.data import DataError

PERSON_CAN_FIX = (DataError, BundleError, WeightsError)


def command(main):
    """Wrap a command's `main(argv=None)` so that `PERSON_CAN_FIX` errors end it with their sentence."""
    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except PERSON_CAN_FIX as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return wrapped
