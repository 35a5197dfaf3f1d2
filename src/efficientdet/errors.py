"""User-facing errors.

Every problem caused by the user's input (a file, a field, an option) is raised as an
:class:`EfficientDetError` whose message is one line naming the file (and record or line), what is
wrong and how to fix it. The command line prints that line to stderr and exits non-zero without a
traceback (``--debug`` shows it). Library users can catch the subclasses.
"""

from __future__ import annotations


class EfficientDetError(Exception):
    """Base class: a clear, one-line, user-facing error."""

    exit_code = 2


class ConfigError(EfficientDetError, ValueError):
    """An invalid option or model override (unknown name, out-of-range value)."""


class DataError(EfficientDetError, ValueError):
    """A bad image or annotation file (missing, unreadable, malformed, inconsistent)."""


class WeightsError(EfficientDetError):
    """A checkpoint that cannot be used (truncated, unsafe, wrong model, not downloadable)."""


class TrainingStopped(EfficientDetError):
    """Training cannot go on (diverged: too many non-finite steps, or non-finite weights)."""

    exit_code = 1


def closest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ' (did you mean X?)' for the closest valid name, or '' when nothing is close."""
    import difflib

    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""
