"""The files that ship inside the package: registration presets and bundled network models.

``presets/<name>.json`` (the ``RegistrationConfig`` format of :mod:`..registration`) and
``models/<name>/`` (weights and model card) are package data: a wheel, an editable install, the source tree
and the Slicer extension (which installs this package folder as it is) all read the same files, through
:mod:`importlib.resources`. The one lookup of each is here; :mod:`..registration.presets` and
:mod:`..methods.voxelmorph.inference` put the user's folders (``$DEEPREG_PRESETS``, the Slicer settings
folder, ``$DEEPREG_MODELS``) before it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["bundled_presets_dir", "bundled_models_dir"]


def _folder(name: str) -> Path:
    """The package-data folder ``name`` as a file-system path (packages are installed unzipped)."""
    return Path(str(resources.files(__name__) / name))


def bundled_presets_dir() -> Path:
    """Folder of the presets that ship with the package."""
    return _folder("presets")


def bundled_models_dir() -> Path:
    """Folder of the network models that ship with the package (``<name>/`` each)."""
    return _folder("models")
