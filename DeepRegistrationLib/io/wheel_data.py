"""Real data files carried inside pinned PyPI wheels: fetched once with ``pip download``, checked, cached.

A fresh machine reaches PyPI even where it reaches nothing else, and several well-kept packages ship
real images in their wheels (nilearn: the ICBM152 2009a template and tissue maps; nitransforms: a real
nonlinear inter-subject warp; dipy: a T1 slice; scikit-image: a fundus photograph). The demo and the
test suite take their data from there, so neither needs ``../shared``.

Every file is pinned by its package version *and* the SHA-256 of its bytes: a changed wheel, a
truncated download or a damaged cache is refused, never used.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .checksums import file_sha256

__all__ = ["WheelFile", "WHEEL_FILES", "fetch_wheel_files", "default_cache_dir"]


@dataclass(frozen=True)
class WheelFile:
    """One file inside a wheel: ``requirement`` (``name==version``), the ``member`` path in the wheel and
    the ``sha256`` of its bytes."""

    requirement: str
    member: str
    sha256: str


_ICBM = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

#: The files this project uses, by the name they are cached under.
WHEEL_FILES: dict[str, WheelFile] = {
    "icbm152_t1.nii.gz": WheelFile("nilearn==0.14.1", _ICBM.format("t1"),
                                   "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6"),
    "icbm152_gm.nii.gz": WheelFile("nilearn==0.14.1", _ICBM.format("gm"),
                                   "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed"),
    "icbm152_wm.nii.gz": WheelFile("nilearn==0.14.1", _ICBM.format("wm"),
                                   "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db"),
    "warp_fsl.nii.gz": WheelFile("nitransforms==25.1.0",
                                 "nitransforms/tests/data/ds-005_sub-01_from-OASIS_to-T1_warp_fsl.nii.gz",
                                 "f8d5778b2bfcc149df18d3c99333681ba2d32bd17a433f98dfbf63f66bfe6207"),
    "dipy_t1_coronal_slice.npy": WheelFile("dipy==1.12.1", "dipy/data/files/t1_coronal_slice.npy",
                                           "6ae15c125c97e11e1ba478ff252c1774d2c31db242a8a61daa93e7b43c873c7b"),
    "skimage_retina.jpg": WheelFile("scikit-image==0.26.0", "skimage/data/retina.jpg",
                                    "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"),
}


def default_cache_dir() -> Path:
    """``$DEEPREG_CACHE``, else ``~/.cache/deepregistration``."""
    return Path(os.environ.get("DEEPREG_CACHE", Path.home() / ".cache" / "deepregistration"))


def _download(requirement: str, wheels: Path) -> Path:
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        print(f"downloading {requirement} from PyPI (data files, once)...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:", requirement,
               "-d", str(wheels)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob(pattern))
        if result.returncode != 0 or not found:
            last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no wheel"
            raise InputError(f"could not download {requirement} from PyPI ({last})")
    return found[0]


def fetch_wheel_files(names: list[str] | None = None, cache_dir: Path | None = None) -> dict[str, Path]:
    """The cached paths of ``names`` (keys of :data:`WHEEL_FILES`; all when None), downloading and
    extracting what is missing. Raises :class:`InputError` when a download fails or a checksum differs."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    files, wheels = cache / "wheel_data", cache / "wheels"
    out: dict[str, Path] = {}
    for name in names or list(WHEEL_FILES):
        spec = WHEEL_FILES[name]
        path = files / name
        if not (path.is_file() and file_sha256(path) == spec.sha256):
            wheels.mkdir(parents=True, exist_ok=True)
            files.mkdir(parents=True, exist_ok=True)
            wheel = _download(spec.requirement, wheels)
            try:
                with zipfile.ZipFile(wheel) as zf:
                    data = zf.read(spec.member)
            except (zipfile.BadZipFile, KeyError, OSError) as err:
                wheel.unlink(missing_ok=True)  # a damaged download is fetched again next time
                raise InputError(f"{wheel}: cannot extract {spec.member} ({err}); run again to download it anew") \
                    from None
            digest = hashlib.sha256(data).hexdigest()
            if digest != spec.sha256:
                raise InputError(f"{spec.requirement} {spec.member}: SHA-256 {digest} differs from the pinned "
                                 f"{spec.sha256}; refusing to use it")
            tmp = files / f".{name}.part"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        out[name] = path
    return out
