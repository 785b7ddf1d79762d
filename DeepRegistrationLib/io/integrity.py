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
import itertools
import os
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from .formats import TRANSFORM_SUFFIXES

__all__ = ["check_complete", "quiet_stderr", "nifti_header", "FileScan"]

_GZIP_SUFFIXES = (".nii.gz", ".mgz", ".gz")
_SITK_CHECKED = (".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_BLOCK = 1 << 22  # bytes read at a time


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


def nifti_header(head: bytes, path: Path):
    """The NIfTI-1 or NIfTI-2 header (nibabel) in the first bytes of a file."""
    import nibabel as nib

    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            return cls.from_fileobj(io.BytesIO(head), check=False)
        except Exception:  # noqa: BLE001 - wrong header kind; try the next
            continue
    raise InputError(f"{path}: not a NIfTI file (no valid NIfTI-1/2 header)")


def _mgh_header(head: bytes, path: Path):
    import nibabel as nib

    try:
        return nib.freesurfer.mghformat.MGHHeader.from_fileobj(io.BytesIO(head[:284].ljust(284, b"\0")))
    except Exception as err:  # noqa: BLE001 - nibabel raises several kinds for bad headers
        raise InputError(f"{path}: not an MGH/MGZ file ({err})") from None


@dataclass
class FileScan:
    """What one pass over a NIfTI or MGH file found: its header and, when counted, the number of NaN or
    infinite values in its (floating-point) data."""

    header: object
    nonfinite: int = 0


def _blocks(path: Path, compressed: bool) -> Iterator[bytes]:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                yield block
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        raise InputError(f"{path}: truncated or corrupt compressed file ({err or type(err).__name__})") from None


def _scan(path: Path, suffix: str, count_nonfinite: bool) -> FileScan:
    """One pass over the (decompressed) bytes: the header, the size against what it promises, and the
    non-finite values of floating-point data (ITK reads NaN voxels of a NIfTI as 0, so they must be counted
    here, in the raw data)."""
    blocks = _blocks(path, suffix in _GZIP_SUFFIXES)
    head = b""
    for block in blocks:
        head += block
        if len(head) >= 544:
            break
    nifti = suffix in (".nii", ".nii.gz")
    header = nifti_header(head[:544], path) if nifti else _mgh_header(head, path)
    offset = int(header["vox_offset"]) if nifti else 284
    dtype = header.get_data_dtype()
    expected = offset + int(np.prod(header.get_data_shape(), dtype=np.int64)) * dtype.itemsize
    count = count_nonfinite and np.issubdtype(dtype, np.floating)
    nonfinite, size, carry = 0, 0, b""
    for block in itertools.chain([head], blocks):  # what was read for the header, then the rest of the stream
        if count:  # the data bytes of this block, in whole values
            lo, hi = max(offset - size, 0), min(expected - size, len(block))
            if hi > lo:
                data = carry + block[lo:hi]
                whole = len(data) - len(data) % dtype.itemsize
                values = np.frombuffer(data[:whole], dtype=dtype)
                nonfinite += int(values.size - np.count_nonzero(np.isfinite(values)))
                carry = data[whole:]
        size += len(block)
    if size < expected:
        raise InputError(f"{path}: truncated file: {size} of the {expected} bytes its header promises")
    return FileScan(header, nonfinite)


def check_complete(path: str | os.PathLike, count_nonfinite: bool = False) -> FileScan | None:
    """Raise :class:`InputError` (naming ``path`` and the problem) unless the file holds everything its
    header promises. NIfTI and MGH files are read once, as a stream: the returned :class:`FileScan` holds the
    header and (``count_nonfinite``) the NaN/infinite values of floating-point data. Other formats are
    read back by ITK (None is returned); formats this module does not know are not checked."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in (".nii", ".nii.gz", ".mgh", ".mgz"):
        return _scan(path, suffix, count_nonfinite)
    if suffix in _SITK_CHECKED:
        _read_back(path, "ReadImage", "file")
    elif suffix in TRANSFORM_SUFFIXES:
        _read_back(path, "ReadTransform", "transform file")
    return None


def _read_back(path: Path, reader: str, what: str) -> None:
    """``SimpleITK.<reader>(path)`` without its messages on the terminal; a clean error if it fails."""
    import SimpleITK as sitk

    with quiet_stderr():
        try:
            getattr(sitk, reader)(str(path))
        except RuntimeError:
            raise InputError(f"{path}: truncated or corrupt {what} (ITK cannot read it back)") from None
