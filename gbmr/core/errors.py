"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GbmrError(Exception):
    """A problem with the user's input (config, environment id, run folder), not a bug."""


def unknown_choice(kind: str, name: str, choices: Iterable[str], listing: str | None = None) -> GbmrError:
    """Error for an unknown name that lists the valid ones (or ``listing``, a summary of too many to print)
    and suggests the closest."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return GbmrError(f"unknown {kind} '{name}'.{hint} Valid choices: {listing or ', '.join(choices)}")
