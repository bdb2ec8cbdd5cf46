"""Command lines: each module parses its arguments, calls one ``medseg.workflows`` function and prints.
Nothing in medseg imports this package; ``python -m medseg.<cmd>`` runs ``medseg.cli.<cmd>.main``."""

from __future__ import annotations

import argparse
import math


def minutes(allow_zero: bool = False):
    """An argparse ``type`` for a number of minutes: finite and positive (or 0 when ``allow_zero``); ``nan`` and
    ``inf`` parse as floats, and a budget of either never ends."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{text}: give a {'non-negative' if allow_zero else 'positive'} "
                                             "finite number of minutes")
        return value

    return parse
