"""The ``deepreg`` command line: every subcommand (register, apply, evaluate, info, presets, demo, train).

``run()`` is the console entry point (it also tunes the process's allocator); ``main(argv)`` runs one command
in-process and returns its exit status (what tests call).
"""

from .commands import build_parser, main, run

__all__ = ["main", "run", "build_parser"]
