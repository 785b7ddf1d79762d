"""Read and write images with their exact geometry.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``),
FreeSurfer MGH/MGZ (``.mgh``, ``.mgz``, through nibabel), 2D PNG/JPEG/TIFF/BMP, and DICOM series
folders (a path without a file suffix). Everything but MGH and DICOM writing goes through SimpleITK,
so the geometry is ITK's (LPS). Writes are atomic.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError, OutputError
from ..geometry import Grid
from .formats import (DETACHED_SUFFIXES, IMAGE_SUFFIXES, MGH_SUFFIXES, SITK_IMAGE_SUFFIXES,  # noqa: F401 (re-exported)
                      TWO_D_ONLY_SUFFIXES)
from .atomic import atomic_output, atomic_output_dir, full_suffix
from .integrity import check_complete, quiet_stderr

if TYPE_CHECKING:  # the Image class (torch) is imported where images are made: describe_image_file needs neither
    from ..image import Image

__all__ = ["read_image", "write_image", "single_slice_as_2d", "IMAGE_SUFFIXES", "TWO_D_ONLY_SUFFIXES"]

_SITK_SUFFIXES = SITK_IMAGE_SUFFIXES
_MGH_SUFFIXES = MGH_SUFFIXES
_DETACHED_SUFFIXES = DETACHED_SUFFIXES
_2D_ONLY_SUFFIXES = TWO_D_ONLY_SUFFIXES


def read_image(
    path: str | os.PathLike,
    dim: int | None = None,
    grayscale: bool = False,
    allow_nonfinite: bool = False,
    series_id: str | None = None,
) -> Image:
    """Read an image file or a DICOM series folder.

    Args:
        path: the file, or a folder holding one DICOM series.
        dim: required dimension (2 or 3). A 3D file with a single slice is accepted as 2D.
        grayscale: convert multi-channel (e.g. RGB) images to one luminance channel.
        allow_nonfinite: accept NaN/Inf voxels (refused by default).
        series_id: which series to read when a DICOM folder holds several.

    Raises:
        InputError: missing, unreadable or corrupt file; wrong dimension; NaN/Inf voxels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    scan = None
    if path.is_dir():
        image = _read_dicom_series(path, series_id)
    else:
        scan = _check_file(path, count_nonfinite=not allow_nonfinite)
        if full_suffix(path) in _MGH_SUFFIXES:
            image = _read_mgh(path)
        else:
            image = _read_sitk(path)
    if dim is not None:
        image = _to_dimension(image, dim)
    if grayscale:
        image = image.to_grayscale()
    if not allow_nonfinite:
        if scan is not None and scan.nonfinite:
            raise InputError(f"{path}: {scan.nonfinite} voxels are NaN or infinite")
        image.check_finite()
    return image


def describe_image_file(path: str | os.PathLike) -> dict | None:
    """Geometry, voxel type and value range of an image file, as ``deepreg info`` prints them, without torch
    (the same checks as :func:`read_image`: missing, empty, truncated, zero spacing, unreadable). ``None`` for
    what only :func:`read_image` reads (DICOM folders, MGH/MGZ)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir() or full_suffix(path) in _MGH_SUFFIXES:
        return None
    _check_file(path, count_nonfinite=False)
    import SimpleITK as sitk

    image = _read_sitk_image(path)
    try:
        grid = Grid.from_sitk(image)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    array = sitk.GetArrayViewFromImage(image)
    return {"kind": "image", **grid.describe(), "channels": image.GetNumberOfComponentsPerPixel(),
            "dtype": array.dtype.name, "range": [float(array.min()), float(array.max())] if array.size else None}


def _check_file(path: Path, count_nonfinite: bool):
    """The checks of an existing image file before any reader sees it: not empty and, for NIfTI and MGH, complete
    (one pass over the raw bytes: ITK reads a truncated NIfTI as valid, zeros for the missing part, and its NaN
    voxels as 0, checked with SimpleITK 2.5.7) with a known voxel size. Returns the scan (None for other formats)."""
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    suffix = full_suffix(path)
    if suffix not in (".nii", ".nii.gz", ".mgh", ".mgz"):
        return None
    try:
        scan = check_complete(path, count_nonfinite=count_nonfinite)
    except InputError as err:
        raise InputError(f"{path}: cannot read image: {err.reason}") from None
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_spacing(scan.header, path)
    return scan


def _check_nifti_spacing(header, path: Path) -> None:
    """ITK turns a voxel size (pixdim) of 0 into 1 mm without a word; refuse it instead."""
    ndim = min(3, len(header.get_data_shape()))
    zooms = [float(z) for z in header["pixdim"][1: 1 + ndim]]
    if any(not np.isfinite(z) or z == 0 for z in zooms):
        raise InputError(f"{path}: voxel size (pixdim) {zooms} holds 0 or a non-finite value; the spacing is "
                         "unknown (fix the header, e.g. with nibabel, and read it again)")


def write_image(image: Image, path: str | os.PathLike) -> None:
    """Write ``image`` to ``path`` (format from the suffix; no suffix = DICOM series folder), atomically."""
    path = Path(path)
    suffix = full_suffix(path)
    if suffix == "":
        _write_dicom_series(image, path)
        return
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unsupported image format {suffix!r} (use one of {sorted(IMAGE_SUFFIXES)})")
    if suffix in _2D_ONLY_SUFFIXES:
        image = _as_8_or_16_bit(image, path)
    if suffix in _DETACHED_SUFFIXES:
        _write_detached(image, path)
        return
    with atomic_output(path) as tmp:
        if suffix in _MGH_SUFFIXES:
            _write_mgh(image, tmp)
        else:
            import SimpleITK as sitk

            sitk.WriteImage(image.to_sitk(), str(tmp), useCompression=suffix in (".nii.gz", ".nrrd", ".mha"))


# ---------------------------------------------------------------------- SimpleITK formats
def _write_detached(image: Image, path: Path) -> None:
    """Header + data file: write both under their final names in a temporary folder, then move (data first)."""
    import SimpleITK as sitk

    with atomic_output_dir(path.parent / f".{path.name}.parts") as tmp:
        sitk.WriteImage(image.to_sitk(), str(tmp / path.name), useCompression=True)
        parts = sorted(tmp.iterdir(), key=lambda p: p.name == path.name)  # header last
        for part in parts:
            os.replace(part, path.parent / part.name)


def _read_sitk(path: Path) -> Image:
    image = _read_sitk_image(path)
    try:
        from ..image import Image

        return Image.from_sitk(image, name=str(path))
    except InputError as err:  # e.g. a non-orthonormal direction or a zero spacing in the header
        raise InputError(f"{path}: {err}") from None


def _read_sitk_image(path: Path):
    """The ``SimpleITK.Image`` of a 2D or 3D file, real-valued; unreadable files refused in one line."""
    import SimpleITK as sitk

    try:
        with quiet_stderr():  # MetaImage and NRRD readers print their complaints; the error says it in one line
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            ndim = reader.GetDimension()
            if ndim not in (2, 3):
                raise InputError(f"{path}: is a {ndim}D image; a 2D or 3D image is needed")
            image = reader.Execute()
    except InputError:
        raise
    except RuntimeError as err:
        raise InputError(f"{path}: cannot read image (corrupt, truncated or unsupported file): "
                         f"{_first_line(err)}") from None
    if "complex" in image.GetPixelIDTypeAsString():
        raise InputError(f"{path}: complex-valued images are not supported")
    return image


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    # ITK puts the useful sentence last ("ITK ERROR: ...: Could not create IO object ..."); a stale errno
    # ("Reason: No such file or directory") after a short read says nothing true about an existing file.
    lines = [ln for ln in lines if "No such file or directory" not in ln]
    return lines[-1][:200] if lines else "ITK could not read the data"


def single_slice_as_2d(image: Image) -> Image | None:
    """A 3D image one voxel thick along k whose slice normal is a physical axis, as the 2D image it is (the
    other two physical axes, in LPS order: a coronal slice keeps x and z); None for any other image."""
    if image.dim != 3 or image.grid.size[2] != 1:
        return None
    d3 = image.grid.direction_matrix()
    p = int(np.argmax(np.abs(d3[:, 2])))
    if not np.isclose(abs(d3[p, 2]), 1.0, atol=1e-6):
        return None
    keep = [a for a in range(3) if a != p]
    from ..image import Image

    g = image.grid
    grid = Grid(g.size[:2], np.asarray(g.origin)[keep], g.spacing[:2], d3[np.ix_(keep, [0, 1])])
    return Image(image.data[:, 0], grid, image.name)


def _to_dimension(image: Image, dim: int) -> Image:
    if image.dim == dim:
        return image
    if dim == 2:
        flat = single_slice_as_2d(image)
        if flat is not None:
            return flat
    raise InputError(f"{image.name}: a {dim}D image is needed, got a {image.dim}D image of size {image.grid.size}")


def _as_8_or_16_bit(image: Image, path: Path) -> Image:
    """PNG/JPEG/BMP hold 8- or 16-bit integers: convert losslessly or refuse."""
    if image.dim != 2:
        raise InputError(f"{path}: {full_suffix(path)} files hold 2D images, got a {image.dim}D image")
    data = image.data
    if data.is_floating_point():
        rounded = data.round()
        if not bool((rounded == data).all()):
            raise InputError(f"{path}: a floating-point image cannot be stored in {full_suffix(path)} without loss;"
                             " rescale it to 0..255 integers first or write .nii.gz/.nrrd/.mha")
        data = rounded
    lo, hi = float(data.min()), float(data.max())
    if lo < 0 or hi > 65535:
        raise InputError(f"{path}: values {lo}..{hi} do not fit an 8/16-bit {full_suffix(path)} file")
    dtype = np.uint8 if hi <= 255 or full_suffix(path) in (".jpg", ".jpeg", ".bmp") else np.uint16
    if dtype == np.uint8 and hi > 255:
        raise InputError(f"{path}: values up to {hi} do not fit an 8-bit {full_suffix(path)} file")
    arr = data.cpu().numpy().astype(dtype)
    from ..image import Image

    return Image(arr, image.grid, image.name) if image.num_channels == 1 else Image.from_numpy(arr, image.grid)


# ---------------------------------------------------------------------- FreeSurfer MGH / MGZ
def _read_mgh(path: Path) -> Image:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise InputError(f"{path}: cannot read MGH/MGZ image (corrupt file?): {_first_line(err)}") from None
    data = np.squeeze(data, axis=tuple(range(3, data.ndim))) if data.ndim > 3 else data
    if data.ndim != 3:
        raise InputError(f"{path}: is a {data.ndim}D image; a 3D image is needed")
    grid = Grid.from_affine(img.affine, data.shape, ras=True)
    from ..image import Image

    return Image(np.ascontiguousarray(np.transpose(data)), grid, str(path))


def _write_mgh(image: Image, path: Path) -> None:
    import nibabel as nib

    if image.dim != 3 or image.num_channels != 1:
        raise InputError(f"{path}: MGH/MGZ files hold single-channel 3D images")
    arr = np.transpose(image.numpy())
    allowed = {np.dtype(t) for t in (np.uint8, np.int16, np.int32, np.float32)}
    if arr.dtype not in allowed:
        arr = arr.astype(np.float32 if np.issubdtype(arr.dtype, np.floating) else np.int32)
    affine = image.grid.to_affine(ras=True)
    nib.save(nib.MGHImage(arr, affine), str(path))


# ---------------------------------------------------------------------- DICOM series
def _read_dicom_series(folder: Path, series_id: str | None) -> Image:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if series_id is None:
        if len(ids) > 1:
            raise InputError(f"{folder}: folder holds {len(ids)} DICOM series ({', '.join(ids)}); choose one with series_id")
        series_id = ids[0]
    elif series_id not in ids:
        raise InputError(f"{folder}: no DICOM series {series_id!r} (found {', '.join(ids)})")
    files = reader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise InputError(f"{folder}: cannot read DICOM series: {_first_line(err)}") from None
    from ..image import Image

    result = Image.from_sitk(image, name=str(folder))
    if result.data.dtype == __import__("torch").float64:
        result = result.float()
    return result


def _write_dicom_series(image: Image, folder: Path) -> None:
    """One DICOM file per slice (16-bit stored values, rescale slope/intercept for real-valued data)."""
    import SimpleITK as sitk

    if image.dim != 3 or image.num_channels != 1:
        raise InputError(f"{folder}: a DICOM series is written from a single-channel 3D image")
    arr = image.numpy()
    grid = image.grid
    uid_root = f"1.2.826.0.1.3680043.2.1125.{int(time.time() * 1e3)}.{os.getpid()}"
    shared = {
        "0020|000d": uid_root + ".1",  # study instance UID
        "0020|000e": uid_root + ".2",  # series instance UID
        "0008|0060": "OT",
        "0008|103e": "DeepRegistration",
        "0020|0037": "\\".join(f"{v:.10g}" for v in grid.direction_matrix()[:, :2].T.ravel()),
        "0018|0050": f"{grid.spacing[2]:.10g}",
    }
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(arr.min()), float(arr.max())
        slope = max((hi - lo) / 60000.0, 1e-12)
        shared.update({"0028|1052": f"{lo + 30000 * slope:.10g}", "0028|1053": f"{slope:.10g}", "0028|1054": "US",
                       "0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1"})
        arr = arr.astype(np.float32)
    elif arr.min() < -32768 or arr.max() > 32767:
        raise InputError(f"{folder}: integer values {arr.min()}..{arr.max()} do not fit 16-bit DICOM")
    else:
        arr = arr.astype(np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with atomic_output_dir(folder) as tmp:
        for k in range(arr.shape[0]):
            sl = sitk.GetImageFromArray(arr[k : k + 1])
            sl.SetSpacing(grid.spacing)
            sl.SetDirection(tuple(grid.direction_matrix().ravel()))
            origin = grid.index_to_physical(np.array([0.0, 0.0, k]))
            sl.SetOrigin(tuple(origin))
            for tag, value in shared.items():
                sl.SetMetaData(tag, value)
            sl.SetMetaData("0020|0013", str(k + 1))
            sl.SetMetaData("0008|0018", f"{uid_root}.3.{k + 1}")
            sl.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in origin))
            writer.SetFileName(str(tmp / f"slice_{k:04d}.dcm"))
            writer.Execute(sl)
