"""``python -m DeepRegistrationLib`` is the ``deepreg`` command line."""

from .cli import run

run()
