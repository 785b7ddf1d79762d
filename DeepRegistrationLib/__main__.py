"""``python -m DeepRegistrationLib`` is the ``deepreg`` command line."""

from .cli import main

raise SystemExit(main())
