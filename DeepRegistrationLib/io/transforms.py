"""Read and write ITK transform files, and convert transforms to and from SimpleITK.

* ``.h5``/``.hdf5``/``.tfm``/``.txt``/``.mat``: ITK transform files through ``SimpleITK.WriteTransform`` /
  ``ReadTransform`` (linear kinds keep their ITK type and parameters; dense fields become
  ``DisplacementFieldTransform_double``; composites become ``CompositeTransform``). Dense fields need
  ``.h5`` (ITK's text format cannot hold them).
* ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd``: a displacement field stored as a vector
  image (LPS mm vectors, ITK/ANTs convention).

Every transform read or written is a resampling transform fixed -> moving (ITK convention).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, OutputError, UnsupportedTransformError
from ..geometry import Grid
from ..transforms import (AffineTransform, CompositeTransform, DisplacementField, IdentityTransform, RigidTransform,
                          SimilarityTransform, StationaryVelocityField, Transform, TranslationTransform, compose,
                          to_displacement_field)
from ..transforms.linear import LinearTransform
from ..transforms.polynomial import PolynomialTransform
from .atomic import atomic_output, full_suffix
from .formats import DENSE_TRANSFORM_SUFFIXES, FIELD_IMAGE_SUFFIXES, TRANSFORM_SUFFIXES
from .integrity import quiet_stderr

__all__ = ["read_transform", "write_transform", "model_parameters_path", "write_model_parameters",
           "read_model_parameters", "read_fsl_displacement_field", "transform_to_sitk", "transform_from_sitk", "TRANSFORM_SUFFIXES",
           "DENSE_TRANSFORM_SUFFIXES", "FIELD_IMAGE_SUFFIXES"]

# ---------------------------------------------------------------------- library -> SimpleITK
def transform_to_sitk(transform: Transform):
    """A SimpleITK transform with exactly the same mapping (ITK composite order: last applied first)."""
    import SimpleITK as sitk

    if isinstance(transform, CompositeTransform):
        models = [p for p in transform.parts if isinstance(p, PolynomialTransform)]
        if models and models[0].domain is not None:  # a 2D model after a field: the whole mapping on its domain,
            domain = models[0].domain  # with nodes 4 px apart, or as close as the field's own nodes where finer
            factor = min([4] + [max(1, int(min(p.grid.spacing) / max(domain.spacing))) for p in transform.parts
                                if isinstance(p, DisplacementField)])
            transform = to_displacement_field(transform, domain.coarsened(factor), dtype=torch.float64)
        else:
            return sitk.CompositeTransform([transform_to_sitk(p) for p in reversed(transform.parts)])
    if isinstance(transform, StationaryVelocityField):
        transform = transform.exponential()
    if isinstance(transform, PolynomialTransform):  # no ITK type: sampled on its domain (4 px nodes)
        transform = transform.to_field()
    if isinstance(transform, DisplacementField):
        field = transform.field.detach().double().cpu().movedim(0, -1).numpy()
        image = sitk.GetImageFromArray(field, isVector=True)
        transform.grid.apply_to_sitk(image)
        return sitk.DisplacementFieldTransform(image)
    if not isinstance(transform, LinearTransform):
        raise UnsupportedTransformError(f"cannot convert a {transform.kind} to an ITK transform")
    d = transform.dim
    if isinstance(transform, IdentityTransform):
        return sitk.Transform(d, sitk.sitkIdentity)
    if isinstance(transform, TranslationTransform):
        return sitk.TranslationTransform(d, transform.translation.detach().tolist())
    center = transform.center.detach().tolist()
    trans = transform.translation.detach().tolist()
    if isinstance(transform, SimilarityTransform):
        t = sitk.Similarity2DTransform() if d == 2 else sitk.Similarity3DTransform()
        t.SetCenter(center)
        if d == 2:
            t.SetScale(float(transform.scale.detach()))
            t.SetAngle(float(transform.angles[0].detach()))
        else:
            t.SetMatrix(transform.matrix().detach().numpy().ravel().tolist())
        t.SetTranslation(trans)
        return t
    if isinstance(transform, RigidTransform):
        t = sitk.Euler2DTransform() if d == 2 else sitk.Euler3DTransform()
        t.SetCenter(center)
        if d == 2:
            t.SetAngle(float(transform.angles[0].detach()))
        else:
            t.SetRotation(*[float(a) for a in transform.angles.detach()])
        t.SetTranslation(trans)
        return t
    if isinstance(transform, AffineTransform):
        return sitk.AffineTransform(transform.matrix().detach().numpy().ravel().tolist(), trans, center)
    affine = transform.to_affine()
    return sitk.AffineTransform(affine.matrix().numpy().ravel().tolist(), affine.offset().tolist(), [0.0] * d)


# ---------------------------------------------------------------------- SimpleITK -> library
def transform_from_sitk(tx, reference: Grid | None = None, source: str = "transform") -> Transform:
    """The library transform equal to a SimpleITK transform.

    Kinds without a native equivalent (e.g. B-spline) are sampled as a displacement field on
    ``reference`` when one is given, and refused otherwise.
    """
    import SimpleITK as sitk

    tx = tx.Downcast() if hasattr(tx, "Downcast") else tx
    name = tx.GetName()
    d = tx.GetDimension()
    if d not in (2, 3):
        raise UnsupportedTransformError(f"{source}: {d}D transforms are not supported")
    if name == "CompositeTransform":
        parts = [transform_from_sitk(tx.GetNthTransform(i), reference, source) for i in range(tx.GetNumberOfTransforms())]
        if not parts:
            return IdentityTransform(d)
        return compose(*reversed(parts))
    if name == "IdentityTransform":
        return IdentityTransform(d)
    if name == "TranslationTransform":
        return TranslationTransform(tx.GetOffset())
    if name == "DisplacementFieldTransform":
        field_img = tx.GetDisplacementField()
        grid = Grid.from_sitk(field_img)
        arr = sitk.GetArrayFromImage(field_img)
        return DisplacementField(torch.from_numpy(np.moveaxis(arr, -1, 0).astype(np.float32)), grid)
    if hasattr(tx, "GetMatrix") and hasattr(tx, "GetCenter") and hasattr(tx, "GetTranslation"):
        matrix = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(d, d)
        center, translation = tx.GetCenter(), tx.GetTranslation()
        if name in ("Euler2DTransform", "Euler3DTransform", "VersorRigid3DTransform", "VersorTransform",
                    "Rigid2DTransform"):
            if name == "Euler3DTransform" and tx.GetComputeZYX():
                return AffineTransform(matrix, translation, center)
            return RigidTransform.from_matrix(matrix, translation, center)
        if name in ("Similarity2DTransform", "Similarity3DTransform"):
            return SimilarityTransform.from_matrix(matrix, translation, center)
        return AffineTransform(matrix, translation, center)
    if reference is not None:
        field = sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, reference.size, reference.origin,
                                                  reference.spacing, tuple(reference.direction_matrix().ravel()))
        return transform_from_sitk(sitk.DisplacementFieldTransform(field), None, source)
    raise UnsupportedTransformError(
        f"{source}: unsupported transform kind {name} (supported: translation, Euler/versor rigid, similarity, "
        "affine and other matrix-offset kinds, displacement field, composites of these)")


# ---------------------------------------------------------------------- files
def read_transform(path: str | os.PathLike, reference: Grid | None = None) -> Transform:
    """Read an ITK transform file or a displacement-field image (see module docstring)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffix = full_suffix(path)
    if suffix in FIELD_IMAGE_SUFFIXES:
        from .images import read_image

        image = read_image(path)
        if image.num_channels != image.dim or not image.data.is_floating_point():
            raise UnsupportedTransformError(
                f"{path}: not a displacement field (needs {image.dim} float components per voxel, "
                f"has {image.num_channels} {image.data.dtype})")
        return DisplacementField(image.data.float(), image.grid)
    if suffix not in TRANSFORM_SUFFIXES:
        raise InputError(f"{path}: unsupported transform file type {suffix!r} "
                         f"(use {sorted(TRANSFORM_SUFFIXES | FIELD_IMAGE_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    try:
        with quiet_stderr():  # HDF5 prints its whole error stack for a damaged .h5
            tx = sitk.ReadTransform(str(path))
    except RuntimeError as err:
        raise InputError(f"{path}: cannot read transform: {_transform_read_problem(path, err)}") from None
    return transform_from_sitk(tx, reference, str(path))


def _transform_read_problem(path: Path, err: RuntimeError) -> str:
    """One line on why ITK could not read a transform file."""
    suffix = full_suffix(path)
    if suffix in (".tfm", ".txt"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            text = ""
        kinds = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Transform:")]
        if not text.startswith("#Insight Transform File"):
            return "not an ITK transform file (it must start with '#Insight Transform File')"
        unknown = [k for k in kinds if f'"{k}"' in str(err)] or kinds
        if "Could not create an instance of" in str(err) and unknown:
            return f"unsupported transform type {unknown[0]} (ITK has no such transform)"
        return "corrupt or truncated ITK text transform"
    if suffix in (".h5", ".hdf5"):
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                return "not an HDF5 file"
        return "corrupt or truncated HDF5 transform file"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"corrupt or unsupported file ({lines[-1][:160] if lines else type(err).__name__})"


def write_transform(transform: Transform, path: str | os.PathLike) -> None:
    """Write ``transform`` atomically; ``SimpleITK.ReadTransform(path)`` then gives the same mapping."""
    import SimpleITK as sitk

    path = Path(path)
    suffix = full_suffix(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    if suffix in FIELD_IMAGE_SUFFIXES:
        field = transform.exponential() if isinstance(transform, StationaryVelocityField) else transform
        if not isinstance(field, DisplacementField):
            raise InputError(f"{path}: only a displacement field can be written as an image; sample the transform "
                             "first with to_displacement_field(transform, grid), or write .h5")
        from ..image import Image
        from .images import write_image

        write_image(Image(field.field.detach().float(), field.grid, "displacement field"), path)
        return
    if suffix not in TRANSFORM_SUFFIXES:
        raise InputError(f"{path}: unsupported transform file type {suffix!r} "
                         f"(use {sorted(TRANSFORM_SUFFIXES | FIELD_IMAGE_SUFFIXES)})")
    if suffix in (".tfm", ".txt", ".mat") and not transform.is_linear:
        raise InputError(f"{path}: ITK {suffix} files cannot hold a dense field; write .h5 instead")
    tx = transform_to_sitk(transform)
    if isinstance(transform, PolynomialTransform):  # the exact model beside its sampled field
        write_model_parameters(transform, model_parameters_path(path))
    with atomic_output(path) as tmp:  # verified by reading it back before it takes the name
        with quiet_stderr():
            try:
                sitk.WriteTransform(tx, str(tmp))
            except RuntimeError:
                if suffix in DENSE_TRANSFORM_SUFFIXES:
                    HDF5_STATE["write_failed"] = True
                raise


def model_parameters_path(path: str | os.PathLike) -> Path:
    """Where :func:`write_transform` puts a 2D global model's exact parameters: ``<transform file>.model.json``."""
    return Path(str(path) + ".model.json")


def write_model_parameters(transform: PolynomialTransform, path: str | os.PathLike) -> None:
    """A homography's or quadratic's parameters as JSON (atomically; read back by :func:`read_model_parameters`).
    Coordinates are LPS mm, the mapping fixed -> moving, as for every transform file of the library."""
    import json

    text = json.dumps({"convention": "resampling transform fixed -> moving, LPS mm (pixels for a photograph)",
                       **transform.parameters_dict()}, indent=1)
    with atomic_output(path, verify=False) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def read_model_parameters(path: str | os.PathLike) -> PolynomialTransform:
    """The exact 2D model written by :func:`write_model_parameters`."""
    import json

    from ..transforms.polynomial import polynomial_from_dict

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such model file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a model parameter file ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a model parameter file (a JSON object is expected)")
    try:
        return polynomial_from_dict(data)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None


#: ITK leaves an HDF5 file open when a write fails (a full disk); the HDF5 library then crashes at the
#: process's exit as it flushes it. The command line ends such a process without the exit handlers.
HDF5_STATE = {"write_failed": False}


def read_fsl_displacement_field(path: str | os.PathLike) -> DisplacementField:
    """An FSL displacement field (4D NIfTI ``X x Y x Z x 3``, mm) as a :class:`DisplacementField`.

    FSL stores the vectors with the x component negated relative to RAS (nitransforms'
    ``FSLDisplacementsField``); in LPS the vector is therefore ``(x_fsl, -y_fsl, z_fsl)``.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise InputError(f"{path}: cannot read FSL displacement field: {err}") from None
    data = data.reshape(data.shape[:3] + data.shape[-1:]) if data.ndim == 5 else data
    if data.ndim != 4 or data.shape[-1] != 3:
        raise InputError(f"{path}: an FSL displacement field is X x Y x Z x 3, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: holds NaN or infinite vectors")
    grid = Grid.from_affine(img.affine, data.shape[:3], ras=True)
    lps = data * np.array([1.0, -1.0, 1.0], dtype=np.float32)
    field = torch.from_numpy(np.ascontiguousarray(np.transpose(lps, (3, 2, 1, 0))))  # (3, k, j, i)
    return DisplacementField(field, grid)
