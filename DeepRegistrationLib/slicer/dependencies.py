"""Which Python packages the Slicer module still needs: read from its ``Resources/requirements.txt`` and checked
against what is installed, without importing them (so the panel can ask before anything heavy is imported).

No Slicer needed here: the module (``DeepRegistration.py``) asks the user and installs through
``slicer.pydeps.pip_ensure`` (Slicer >= 5.11; ``slicer.packaging`` in some 5.10 previews, else
``slicer.util.pip_install``), and torch through the PyTorch extension with :data:`TORCH_REQUIREMENT`.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

__all__ = ["TORCH_REQUIREMENT", "read_requirements", "missing_requirements", "slicer_pip_module"]

#: The torch the library needs (as in ``pyproject.toml``), passed to PyTorchUtils' ``installTorch``.
TORCH_REQUIREMENT = "torch>=2.1"


def read_requirements(path: str | Path) -> list[str]:
    """Requirement lines of a ``requirements.txt`` (comments and blank lines dropped)."""
    lines = [line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line]


def _split(requirement: str) -> tuple[str, str]:
    for i, c in enumerate(requirement):
        if c in "<>=!~;[ ":
            return requirement[:i], requirement[i:].strip()
    return requirement, ""


def missing_requirements(requirements: list[str]) -> list[str]:
    """The requirements not satisfied by the installed distributions (checked by metadata; nothing is imported).

    Version specifiers are checked with ``packaging`` when it is available (it is in Slicer); without it only
    presence is checked."""
    missing = []
    for requirement in requirements:
        name, spec = _split(requirement)
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        try:
            from packaging.requirements import Requirement
        except ImportError:
            continue
        if spec and not Requirement(requirement).specifier.contains(version, prereleases=True):
            missing.append(requirement)
    return missing


def slicer_pip_module():
    """Slicer's package-management module with ``pip_ensure`` (``slicer.pydeps``, or ``slicer.packaging`` in the
    versions that named it so), imported explicitly (``slicer.<name>`` is not an attribute until imported); ``None``
    when this Slicer has neither (then ``slicer.util.pip_install`` is the way)."""
    import importlib

    for name in ("slicer.pydeps", "slicer.packaging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "pip_ensure"):
            return module
    return None
