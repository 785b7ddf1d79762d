"""Error types raised by the library.

Every error a user can cause (a bad file, a wrong dimension, NaN voxels, an empty mask...) is an
:class:`InputError` whose message names the offending file or argument and the problem in one line.
The CLI prints it as ``deepreg: error: <message>`` and exits with a non-zero status.
"""

from __future__ import annotations


class DeepRegError(Exception):
    """Base class of all errors raised on purpose by DeepRegistrationLib."""


class InputError(DeepRegError, ValueError):
    """An input (file, image, transform, argument) is missing, unreadable or unsuitable."""


class UnsupportedTransformError(InputError):
    """A transform file holds a transform kind the library cannot represent."""


class RegistrationCancelled(DeepRegError):
    """Raised when a run's cancel flag is set; nothing is returned or written."""


class RegistrationDiverged(DeepRegError):
    """An optimisation produced a NaN or infinite loss (a step size or a weight out of range)."""
