"""Error types raised by the library.

Every error a user can cause (a bad file, a wrong dimension, NaN voxels, an empty mask...) is an
:class:`InputError` whose message names the offending file or argument and the problem in one line.
The CLI prints it as ``deepreg: error: <message>`` and exits with a non-zero status.
"""

from __future__ import annotations


class DeepRegError(Exception):
    """Base class of all errors raised on purpose by DeepRegistrationLib."""


class InputError(DeepRegError, ValueError):
    """An input (file, image, transform, argument) is missing, unreadable or unsuitable.

    ``reason`` is the message without the leading ``<file>: `` (when there is one)."""

    @property
    def reason(self) -> str:
        text = str(self)
        head, sep, tail = text.partition(": ")
        return tail if sep and ("/" in head or "." in head) else text


class OutputError(InputError):
    """An output cannot be written (a missing or read-only folder, a full disk, an output that is an input);
    nothing of it is left behind."""


class UnsupportedTransformError(InputError):
    """A transform file holds a transform kind the library cannot represent."""


class RegistrationCancelled(DeepRegError):
    """Raised when a run's cancel flag is set; nothing is returned or written."""


class RegistrationDiverged(DeepRegError):
    """An optimisation produced a NaN or infinite loss (a step size or a weight out of range)."""
