"""Unsupervised VoxelMorph training: ``-LNCC(F, M o phi) + lambda ||grad u||^2`` (+ optional Dice on warped labels).

Subjects are tensors on one model grid (``(1, *shape)`` images in [0, 1], optional ``(1, *shape)`` label
maps). Each step draws a random ordered pair (or atlas -> subject when ``atlas`` is given) from a seeded
generator, so a run is reproducible and a run resumed from its checkpoint continues exactly as if it had
not stopped (the checkpoint holds the weights, the optimiser, the step and the generator state).

With an :class:`~.augment.AugmentConfig`, both images of a pair are fresh random deformations of their
subjects (so a subject may be paired with itself) with intensity augmentation, and a share of them is
synthesised from the label maps (SynthMorph). A share of pairs can be *known pairs*: one subject and a
random deformation of it, whose displacement the network must reproduce (a supervised term, the
"regression of known transforms" idea, which gets a network out of its initial near-zero output far
faster than the unsupervised terms alone). The LNCC term is used only when both images are real (a
synthesised pair has unrelated contrasts); the Dice term supervises through the labels whatever the contrast.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ...errors import InputError
from ...geometry import Grid
from ...image import Image
from ...io.atomic import atomic_output
from ...metrics import overlap
from ...metrics.regularisers import diffusion_regulariser_batch
from ...metrics.similarity import LNCCLoss
from ...transforms.voxel import voxel_field_to_physical, warp_voxels
from ...warp import warp_image
from .augment import AugmentConfig, augment_subject
from .network import VoxelMorphNet

__all__ = ["TrainConfig", "Subject", "Teacher", "teacher_displacement", "train_voxelmorph", "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"


@dataclass
class Subject:
    """One training image on the model grid: ``image`` ``(1, *shape)`` float, ``labels`` ``(1, *shape)`` int or None;
    ``grid``: where that model grid was placed (LPS mm), when known."""

    image: torch.Tensor
    labels: torch.Tensor | None = None
    name: str = ""
    grid: Grid | None = None


@dataclass
class Teacher:
    """A pair of distinct subjects whose displacement is given by a teacher (the engine's best preset):
    ``displacement`` ``(1, dim, *shape)`` in voxels of the model grid (channel ``k`` along tensor axis ``k``), the
    network's own convention: ``moving(x + u(x))`` matches ``fixed(x)``."""

    moving: Subject
    fixed: Subject
    displacement: torch.Tensor
    name: str = ""


def teacher_displacement(transform, fixed_grid: Grid, moving_grid: Grid) -> torch.Tensor:
    """A registration result (``transform``: fixed -> moving, LPS mm) as the network's target on the model grids:
    ``u(x) = index_moving(T(point_fixed(x))) - x`` in voxels, ``(1, dim, *fixed_grid.shape)`` float32, channel ``k``
    along tensor axis ``k`` (the subjects' model grids differ by their placement, which this accounts for)."""
    import numpy as np

    points = fixed_grid.physical_points(dtype=torch.float64)  # (*shape, dim), LPS
    mapped = transform.map_points(points.reshape(-1, fixed_grid.dim))
    index = np.asarray(moving_grid.physical_to_index(np.asarray(mapped)), dtype=np.float64)  # (N, dim) as (i, j, k)
    base = np.asarray(fixed_grid.physical_to_index(points.reshape(-1, fixed_grid.dim).numpy()), dtype=np.float64)
    u = torch.as_tensor(index - base, dtype=torch.float32).flip(-1)  # array order (k, j, i)
    return u.T.reshape(1, fixed_grid.dim, *fixed_grid.shape).contiguous()


@dataclass
class TrainConfig:
    """Training parameters. ``regularisation_weight`` multiplies the mean squared voxel gradient of the
    displacement (voxel units); ``dice_weight`` > 0 adds ``1 - soft Dice`` of the warped one-hot labels
    (the papers' semi-supervised variant) when every subject has labels. ``supervised_weight`` multiplies
    the mean squared error (voxels^2) between the predicted and the known displacement of augmented
    known pairs (:attr:`AugmentConfig.known_pair_probability`) and of teacher pairs (drawn with probability
    ``teacher_probability`` when teachers are given; with augmentation the fixed image of a teacher pair is
    deformed by a random ``psi`` and the target becomes ``psi + u_T o (id + psi)``). ``max_grad_norm`` > 0 clips the gradient
    norm (a rare large gradient otherwise throws the network back to its near-zero output). ``self_pairs``: with
    augmentation, a subject may be paired with (a fresh deformation of) itself; False pairs distinct subjects only."""

    steps: int = 1000
    learning_rate: float = 1e-4
    lncc_window: int = 9
    lncc_weight: float = 1.0
    regularisation_weight: float = 1.0
    dice_weight: float = 0.0
    supervised_weight: float = 0.1
    teacher_probability: float = 0.0
    max_grad_norm: float = 0.0
    self_pairs: bool = True
    seed: int = 0
    checkpoint_every: int = 100
    validate_every: int = 100
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


def _one_hot(labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.stack([(labels[:, 0] == v) for v in values], 1).float()


def _soft_dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(2, a.dim()))
    return (2 * (a * b).sum(dims) / (a.sum(dims) + b.sum(dims)).clamp(min=1e-6)).mean()


def train_voxelmorph(net: VoxelMorphNet, subjects: list[Subject], config: TrainConfig, out_dir: str | os.PathLike,
                     atlas: Subject | None = None, validation: list[tuple[Subject, Subject]] | None = None,
                     resume: bool = False, device: str | torch.device = "cpu",
                     progress: Callable[[dict], None] | None = None, augment: AugmentConfig | None = None,
                     spacing_mm: float = 1.0, stop: Callable[[], bool] | None = None,
                     teachers: list[Teacher] | None = None) -> dict:
    """Train ``net`` in place; checkpoints go to ``out_dir/checkpoint.pt``. Returns the last figures.

    ``teachers``: pairs with a known inter-subject displacement (:class:`Teacher`), drawn with probability
    ``config.teacher_probability`` and trained with the supervised term.
    ``validation``: (moving, fixed) pairs with labels; their mean Dice is measured every ``validate_every``
    steps and at the end. ``resume``: continue from the checkpoint in ``out_dir`` (its step and random state).
    ``augment``: random deformations / intensities / synthesis of every training image (``spacing_mm``: the
    model grid's spacing, which gives the augmentation's physical scale). ``stop``: asked after every step;
    when it answers True the run checkpoints and returns early, with ``figures["stopped"] = True`` (a time
    limit; ``resume`` continues it).
    """
    if len(subjects) + (atlas is not None) < 2:
        raise InputError("training needs at least two subjects (or one subject and an atlas)")
    shapes = {tuple(s.image.shape) for s in subjects} | ({tuple(atlas.image.shape)} if atlas else set())
    if len(shapes) != 1:
        raise InputError(f"every training image must be on the model grid; found shapes {sorted(shapes)}")
    for s in subjects + ([atlas] if atlas else []):
        if not bool(torch.isfinite(s.image).all()):
            raise InputError(f"{s.name or 'a training image'}: has NaN or infinite voxels")
    if config.dice_weight > 0 and any(s.labels is None for s in subjects + ([atlas] if atlas else [])):
        raise InputError("dice_weight > 0 needs label maps for every subject")
    if config.dice_weight > 0 and not any(bool((s.labels != 0).any()) for s in subjects):
        raise InputError("dice_weight > 0 but every label map is empty")
    if augment is not None and augment.synth_probability > 0 and any(s.labels is None for s in subjects):
        raise InputError("synthesis from label maps needs a label map for every subject")
    if augment is not None and augment.synth_probability > 0 and config.dice_weight <= 0:
        raise InputError("synthesised images have random contrasts: training on them needs dice_weight > 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    gen = torch.Generator().manual_seed(config.seed)
    step = 0
    history: list[dict] = []
    if resume:
        path = out / CHECKPOINT
        if not path.is_file():
            raise InputError(f"{path}: no checkpoint to resume from")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["architecture"] != net.config:
            raise InputError(f"{path}: checkpoint of {state['architecture']}, not {net.config}")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, history = int(state["step"]), json.loads(state["history"])
    similarity = LNCCLoss(window=config.lncc_window)
    label_values = None
    if config.dice_weight > 0:
        label_values = torch.unique(torch.cat([s.labels.reshape(-1) for s in subjects]))
        label_values = label_values[label_values != 0]
    def on_device(s: Subject) -> Subject:
        return Subject(s.image.to(device), None if s.labels is None else s.labels.to(device), s.name, s.grid)

    subjects = [on_device(s) for s in subjects]  # augmentation runs where the network does
    atlas = on_device(atlas) if atlas is not None else None
    teachers = [Teacher(on_device(t.moving), on_device(t.fixed), t.displacement.to(device), t.name)
                for t in teachers or []]
    figures: dict = {}
    while step < config.steps:
        if atlas is not None:
            moving, fixed = atlas, subjects[int(torch.randint(len(subjects), (1,), generator=gen))]
        elif augment is not None and config.self_pairs:  # fresh deformations: a subject may be paired with itself
            i, j = torch.randint(len(subjects), (2,), generator=gen).tolist()
            moving, fixed = subjects[i], subjects[j]
        else:
            i, j = torch.randperm(len(subjects), generator=gen)[:2].tolist()
            moving, fixed = subjects[i], subjects[j]
        m_img, m_lab, f_img, f_lab, synthetic, known = moving.image, moving.labels, fixed.image, fixed.labels, False, None
        if teachers and float(torch.rand(1, generator=gen)) < config.teacher_probability:
            teacher = teachers[int(torch.randint(len(teachers), (1,), generator=gen))]
            moving, fixed, known = teacher.moving, teacher.fixed, teacher.displacement
            m_img, m_lab, f_img, f_lab = moving.image, moving.labels, fixed.image, fixed.labels
            if augment is not None:  # re-contrast both; deform the fixed one by psi: target psi + u_T(x + psi)
                m_img, m_lab, _, _ = augment_subject(m_img, m_lab, spacing_mm, augment, gen, deform=False)
                f_img, f_lab, _, psi = augment_subject(f_img, f_lab, spacing_mm, augment, gen)
                known = psi + warp_voxels(known, psi)
        elif augment is not None:
            if float(torch.rand(1, generator=gen)) < augment.known_pair_probability:
                fixed = moving  # fixed = the moving subject deformed: the answer is that deformation
                m_img, m_lab, m_syn, _ = augment_subject(m_img, m_lab, spacing_mm, augment, gen, deform=False)
                f_img, f_lab, f_syn, known = augment_subject(moving.image, moving.labels, spacing_mm, augment, gen)
            else:
                m_img, m_lab, m_syn, _ = augment_subject(m_img, m_lab, spacing_mm, augment, gen)
                f_img, f_lab, f_syn, _ = augment_subject(f_img, f_lab, spacing_mm, augment, gen)
            synthetic = m_syn or f_syn
        m, f = m_img[None].to(device).float(), f_img[None].to(device).float()
        opt.zero_grad()
        warped, u = net(m, f)
        sim = similarity(f, warped) if config.lncc_weight > 0 and not synthetic else warped.new_zeros(())
        reg = diffusion_regulariser_batch(u)
        loss = config.lncc_weight * sim + config.regularisation_weight * reg
        supervised = None
        if known is not None and config.supervised_weight > 0:
            supervised = ((u - known.to(device)) ** 2).sum(1).mean()
            loss = loss + config.supervised_weight * supervised
        dice = None
        if label_values is not None:
            ml = _one_hot(m_lab[None].to(device), label_values)
            fl = _one_hot(f_lab[None].to(device), label_values)
            dice = _soft_dice(warp_voxels(ml, u), fl)
            loss = loss + config.dice_weight * (1 - dice)
        loss.backward()
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.max_grad_norm)
        opt.step()
        step += 1
        figures = {"step": step, "loss": float(loss.detach()), "similarity": float(sim.detach()),
                   "regularisation": float(reg.detach()), "synthetic": synthetic,
                   "pair": [moving.name, fixed.name]}
        if supervised is not None:
            figures["supervised_mse"] = float(supervised.detach())
        if dice is not None:
            figures["soft_dice"] = float(dice.detach())
        if validation and (step % config.validate_every == 0 or step == config.steps):
            figures["validation_dice"] = validation_dice(net, validation, device)
            net.train()
        history.append(figures)
        if progress is not None:
            progress(figures)
        stopping = stop is not None and step < config.steps and stop()
        if step % config.checkpoint_every == 0 or step == config.steps or stopping:
            with atomic_output(out / CHECKPOINT) as tmp:
                torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                            "step": step, "history": json.dumps(history), "architecture": net.config,
                            "config": json.dumps(config.to_dict()),
                            "augment": json.dumps(augment.to_dict() if augment else None)}, tmp)
        if stopping:
            figures["stopped"] = True
            break
    if not figures and history:  # resumed at its last step (e.g. to write the model of a run stopped early)
        figures = dict(history[-1])
        if validation and "validation_dice" not in figures:
            figures["validation_dice"] = validation_dice(net, validation, device)
    net.eval()
    return figures


@torch.no_grad()
def validation_dice(net: VoxelMorphNet, pairs: list[tuple[Subject, Subject]], device="cpu") -> float:
    """Mean over pairs of the library's mean Dice (:func:`~DeepRegistrationLib.metrics.overlap`) of the moving
    labels warped (nearest neighbour) by the predicted field onto the fixed labels."""
    net.eval()
    scores = []
    for moving, fixed in pairs:
        if moving.labels is None or fixed.labels is None:
            raise InputError("validation pairs need label maps")
        _, u = net(moving.image[None].to(device).float(), fixed.image[None].to(device).float())
        grid = Grid(tuple(reversed(u.shape[2:])))  # the model grid in voxel units (1 mm, identity)
        field = voxel_field_to_physical(u[0].double().cpu(), grid)
        warped = warp_image(Image(moving.labels, grid), field, grid, "nearest")
        per_label = overlap(Image(fixed.labels, grid), warped)
        scores.append(sum(v["dice"] for v in per_label.values()) / max(len(per_label), 1))
    return sum(scores) / len(scores)
