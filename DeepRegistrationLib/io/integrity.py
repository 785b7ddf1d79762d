"""Is a file complete? Checks that readers and writers run before they trust a file.

ITK reads a truncated NIfTI of integers as valid (it fills the missing part with zeros), and its NIfTI
writer does not raise on a full disk. :func:`check_complete` catches both: it checks that the bytes a
file's header promises are all there (NIfTI-1/2, MGH), that a gzip stream ends with its checksum
(``.nii.gz``, ``.mgz``), and, for the other formats, that ITK reads the file back without error.

:func:`quiet_stderr` keeps what C libraries print (HDF5's error stack, MetaImage's notes) off the
user's terminal; the error itself is raised as one clean line.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError

__all__ = ["check_complete", "quiet_stderr", "nifti_header"]

_GZIP_SUFFIXES = (".nii.gz", ".mgz", ".gz")
_SITK_CHECKED = (".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")


@contextlib.contextmanager
def quiet_stderr() -> Iterator[io.StringIO]:
    """Send what C code writes to file descriptor 2 into a buffer (yielded, filled at exit)."""
    captured = io.StringIO()
    fd = 2  # C libraries write to the process's descriptor 2, whatever Python's sys.stderr is
    try:
        os.fstat(fd)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # no descriptor 2 (e.g. inside some GUIs)
        yield captured
        return
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            captured.write(sink.read().decode("utf-8", "replace"))


def _suffix(path: Path) -> str:
    from .atomic import full_suffix

    return full_suffix(path)


def _gunzipped_size(path: Path) -> tuple[int, bytes]:
    """Decompressed size and first 544 bytes of a gzip file; raises InputError when it is cut off or corrupt."""
    size, head = 0, b""
    try:
        with gzip.open(path, "rb") as fh:
            while True:
                block = fh.read(1 << 22)
                if not block:
                    break
                if len(head) < 544:
                    head += block[: 544 - len(head)]
                size += len(block)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        raise InputError(f"{path}: truncated or corrupt compressed file ({err or type(err).__name__})") from None
    return size, head


def nifti_header(head: bytes, path: Path):
    """The NIfTI-1 or NIfTI-2 header (nibabel) in the first bytes of a file."""
    import nibabel as nib

    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            return cls.from_fileobj(io.BytesIO(head), check=False)
        except Exception:  # noqa: BLE001 - wrong header kind; try the next
            continue
    raise InputError(f"{path}: not a NIfTI file (no valid NIfTI-1/2 header)")


def _expected_nifti_bytes(head: bytes, path: Path) -> int:
    hdr = nifti_header(head, path)
    shape = hdr.get_data_shape()
    nbytes = int(np.prod(shape, dtype=np.int64)) * hdr.get_data_dtype().itemsize
    return int(hdr["vox_offset"]) + nbytes


def _expected_mgh_bytes(head: bytes, path: Path) -> int:
    import nibabel as nib

    try:
        hdr = nib.freesurfer.mghformat.MGHHeader.from_fileobj(io.BytesIO(head[:284].ljust(284, b"\0")))
    except Exception as err:  # noqa: BLE001 - nibabel raises several kinds for bad headers
        raise InputError(f"{path}: not an MGH/MGZ file ({err})") from None
    shape = hdr.get_data_shape()
    return 284 + int(np.prod(shape, dtype=np.int64)) * hdr.get_data_dtype().itemsize


def check_complete(path: str | os.PathLike) -> None:
    """Raise :class:`InputError` (naming ``path`` and the problem) unless the file holds everything its
    header promises. Formats this module does not know are not checked."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in (".nii", ".mgh"):
        with open(path, "rb") as fh:
            head = fh.read(544)
        size = path.stat().st_size
    elif suffix in _GZIP_SUFFIXES:
        size, head = _gunzipped_size(path)
    elif suffix in _SITK_CHECKED:
        _check_with_sitk(path)
        return
    elif suffix in _TRANSFORM_SUFFIXES:
        _check_transform(path)
        return
    else:
        return
    if suffix in (".nii", ".nii.gz"):
        expected = _expected_nifti_bytes(head, path)
    elif suffix in (".mgh", ".mgz"):
        expected = _expected_mgh_bytes(head, path)
    else:
        return
    if size < expected:
        raise InputError(f"{path}: truncated file: {size} of the {expected} bytes its header promises")


def _check_with_sitk(path: Path) -> None:
    import SimpleITK as sitk

    with quiet_stderr():
        try:
            sitk.ReadImage(str(path))
        except RuntimeError:
            raise InputError(f"{path}: truncated or corrupt file (ITK cannot read it back)") from None


def _check_transform(path: Path) -> None:
    import SimpleITK as sitk

    with quiet_stderr():
        try:
            sitk.ReadTransform(str(path))
        except RuntimeError:
            raise InputError(f"{path}: truncated or corrupt transform file (ITK cannot read it back)") from None
