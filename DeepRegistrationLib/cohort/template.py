"""Unbiased group-wise template construction (the scheme of ANTs' ``antsMultivariateTemplateConstruction``):

1. start from the voxel-wise mean of the images (each scaled to [0, 1]) on the first image's grid;
2. register every image onto the current template (a cohort run, :func:`~.engine.run_batch`: transforms
   ``T_i``, template -> image, LPS mm);
3. average the warped images (each scaled to [0, 1]) into ``A``, and the displacements ``u_i(x) = T_i(x) - x``
   into ``u_mean`` on the template grid;
4. the new template is ``A`` moved by the inverse of the mean transform: ``template(z) = A(phi^-1(z))`` with
   ``phi = id + u_mean``, so that the mean of the next registrations is the identity (no image's shape is
   favoured); repeat from 2.

Resumable: iteration ``k`` keeps its cohort run in ``WORK/iteration_k/`` (itself resumable) and its template in
``WORK/template_k.nii.gz``; a rerun starts after the last template written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from ..errors import InputError
from ..io.atomic import full_suffix
from .pairs import PairSpec, _safe_id

if TYPE_CHECKING:
    from ..image import Image

__all__ = ["build_template", "mean_image", "unbiased_update"]


def _read(path) -> "Image":
    """An image file; a single-slice volume (how a 2D template is stored as NIfTI) as the 2D image it is."""
    from ..io import read_image
    from ..io.images import single_slice_as_2d

    image = read_image(path)
    return single_slice_as_2d(image) or image


def _unit(image):
    from ..intensity import normalise_unit_range

    return normalise_unit_range(image)


def mean_image(images: Iterable["Image"], grid) -> "Image":
    """Voxel-wise mean of ``images`` (each scaled to [0, 1]) resampled onto ``grid`` through the identity; the
    images are taken one at a time (a generator keeps one in memory)."""
    from ..image import Image
    from ..warp import warp_image

    total = torch.zeros((1, *grid.shape), dtype=torch.float32)
    count = 0
    for image in images:
        total += warp_image(_unit(image), None, grid).data.float()
        count += 1
    return Image(total / count, grid, name="template")


def unbiased_update(average: "Image", u_mean: torch.Tensor) -> tuple["Image", float]:
    """``average`` moved by the inverse of ``id + u_mean`` (the mean displacement, ``(dim, *grid.shape)`` LPS mm on
    the average's grid); returns the new template and the largest mean-displacement length (mm)."""
    from ..transforms import DisplacementField, inverse_transform
    from ..warp import warp_image

    shift = float(u_mean.norm(dim=0).max())
    inverse = inverse_transform(DisplacementField(u_mean.double(), average.grid), reference=average.grid)
    moved = warp_image(average, inverse, average.grid)
    moved.name = "template"
    return moved, shift


def build_template(images: list[str | os.PathLike], out: str | os.PathLike, iterations: int = 3,
                   preset: str = "deformable-fast", work_dir: str | os.PathLike | None = None,
                   scheduler: str | None = None, cluster=None, device: str = "auto",
                   progress: Callable[[str], None] | None = None, threads: int | None = None) -> dict:
    """Build a template of ``images`` (at least 2 files) in ``iterations`` rounds (see the module's description)
    and write it to ``out``; returns per-iteration figures (images registered, largest mean displacement in mm,
    RMS change of the template); ``threads``: torch threads per pair (see :func:`~.engine.run_batch`). ``work_dir``
    (default ``OUT_NAME.work`` beside ``out``) keeps the iterations."""
    from ..image import Image
    from ..io import read_transform
    from ..transforms import to_displacement_field
    from .engine import close_client, local_cluster_spec, open_client, run_batch
    from .manifest import Manifest

    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    paths = [Path(p).resolve() for p in images]
    if len(paths) < 2:
        raise InputError("a template needs at least two images")
    if iterations < 1:
        raise InputError("iterations must be at least 1")
    out = Path(out)
    if full_suffix(out.name) not in (".nii.gz", ".nii", ".nrrd", ".mha"):
        raise InputError(f"{out}: write the template as .nii.gz, .nii, .nrrd or .mha")
    if out.resolve() in paths:
        raise InputError(f"{out}: would overwrite an input image")
    work = Path(work_dir) if work_dir else out.parent / (out.name[: -len(full_suffix(out.name))] + ".work")
    work.mkdir(parents=True, exist_ok=True)
    template_path = work / "template_0.nii.gz"
    if not template_path.is_file():
        mean_image((_read(p) for p in paths), _read(paths[0]).grid).write(template_path)
    figures: list[dict] = []
    client = None
    shape = None if scheduler else (cluster or local_cluster_spec())
    try:
        for k in range(1, iterations + 1):
            previous, template_path = template_path, work / f"template_{k}.nii.gz"
            if template_path.is_file():
                say(f"iteration {k}/{iterations}: done in an earlier run")
                continue
            if client is None:
                client = open_client(scheduler, shape)
            pairs = [PairSpec(id=f"{i:03d}_{_safe_id(p.name.split('.')[0])}", fixed=str(previous), moving=str(p),
                              preset=preset) for i, p in enumerate(paths)]
            summary = run_batch(pairs, work / f"iteration_{k}", client=client, cluster=shape, device=device,
                                progress=say, threads=threads)
            if summary.done < 2:
                raise InputError(f"iteration {k}: only {summary.done} image(s) registered onto the template "
                                 f"({'; '.join(f'{i}: {e}' for i, e in summary.failures.items())})")
            current = _read(previous)
            folder = work / f"iteration_{k}"
            records = Manifest.load(folder).records
            done = [records[pair.id]["outputs"] for pair in pairs if records[pair.id]["status"] == "done"]
            # running sums, one image and one field in memory at a time (a cohort of hundreds fits)
            total = torch.zeros((1, *current.grid.shape), dtype=torch.float32)
            u_sum = torch.zeros((current.dim, *current.grid.shape), dtype=torch.float32)
            for outputs in done:
                total += _unit(_read(folder / outputs["warped"])).data.float()
                transform = read_transform(folder / outputs["transform"], reference=current.grid)
                u_sum += to_displacement_field(transform, current.grid).field.float()
            average = Image(total / len(done), current.grid, name="average")
            template, shift = unbiased_update(average, u_sum / len(done))
            change = float(((template.data - current.data) ** 2).mean().sqrt())
            template.write(template_path)
            figures.append({"iteration": k, "registered": len(done), "failed": summary.failed,
                            "max_mean_displacement_mm": shift, "rms_change": change})
            say(f"iteration {k}/{iterations}: {len(done)} image(s) registered ({summary.failed} failed); "
                f"largest mean displacement {shift:.2f} mm; template RMS change {change:.4f}")
    finally:
        if client is not None:
            close_client(client)
    _read(template_path).write(out)
    return {"template": str(out), "work": str(work), "iterations": figures}
