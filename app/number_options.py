"""The one check of a number option of the command-line entry points: finite, and above a bound
or at least it.

A nan compares false with everything, so a plain ``value < minimum`` lets it through (and inf
passes any lower bound): each entry point had grown its own check for it. They share this one,
and only how they report a problem is their own: ``deploy-docker.py`` and ``python -m app.deploy
smoke`` through argparse (:func:`bounded_number`, a usage error), ``monitor-docker.py`` as its
configuration error and ``movierec`` as click's ``BadParameter`` (both through
:func:`number_problem`); every one exits 2 naming the option.

Standard library only: ``deploy-docker.py`` and ``monitor-docker.py`` import it on hosts where
the service's dependencies may not be installed.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable


def number_problem(value: float, minimum: float, *, strict: bool = False, unit: str = "") -> str | None:
    """What is wrong with ``value`` for an option that takes a finite number above ``minimum``
    (``strict``) or at least it: ``"must be a finite number of seconds > 0"``; None when it fits."""
    if math.isfinite(value) and (value > minimum or (value == minimum and not strict)):
        return None
    of_unit = f" of {unit}" if unit else ""
    return f"must be a finite number{of_unit} {'>' if strict else '>='} {minimum:g}"


def bounded_number(minimum: float, *, strict: bool = False, unit: str = "") -> Callable[[str], float]:
    """An argparse ``type``: the option's text as a float that :func:`number_problem` accepts,
    else an ``ArgumentTypeError`` (argparse's usage error, exit 2, naming the option)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        problem = number_problem(value, minimum, strict=strict, unit=unit)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{text!r} {problem}")
        return value

    return parse


def whole_seconds(text: str | None) -> int | None:
    """A uwsgi option's text (``harakiri``, ``worker-reload-mercy``, ``UWSGI_HARAKIRI``) as the
    whole number of seconds it is, or None when it is not one. Only plain ASCII digits: uwsgi's
    atoi reads a word as 0 and "15s" as 15, and ``str.isdigit()`` took "²" and other scripts'
    digits, which uwsgi reads as 0; on digits alone uwsgi and this code agree."""
    if text is None or not _DIGITS.fullmatch(text.strip()):
        return None
    return int(text)


_DIGITS = re.compile(r"[0-9]+")
