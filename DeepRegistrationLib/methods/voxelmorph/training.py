"""Unsupervised VoxelMorph training: ``-LNCC(F, M o phi) + lambda ||grad u||^2`` (+ optional Dice on warped labels).

Subjects are tensors on one model grid (``(1, *shape)`` images in [0, 1], optional ``(1, *shape)`` label
maps). Each step draws ``batch`` random ordered pairs (or atlas -> subject when ``atlas`` is given), example ``k`` of
step ``s`` from a generator seeded by ``(seed, s, k)``, so a run is reproducible, a run resumed from its checkpoint
continues exactly as if it had not stopped (the checkpoint holds the weights, the optimiser and the step), and a
batch split over processes draws the same examples as one process.

Data-parallel training: when a ``torch.distributed`` process group is running (``deepreg train ... --nproc N``, or
``torchrun``), process ``r`` of ``N`` takes examples ``r, r + N, ...`` of every batch, the network is wrapped in
``DistributedDataParallel`` (gloo on CPUs, NCCL on GPUs), and the loss is scaled so that the averaged gradient is the
one of the whole batch: the same run as one process with the whole batch, up to the order of floating-point sums.
Only process 0 validates, reports progress and writes checkpoints.

With an :class:`~.augment.AugmentConfig`, both images of a pair are fresh random deformations of their
subjects (so a subject may be paired with itself) with intensity augmentation, and a share of them is
synthesised from the label maps (SynthMorph). A share of pairs can be *known pairs*: one subject and a
random deformation of it, whose displacement the network must reproduce (a supervised term, the
"regression of known transforms" idea, which gets a network out of its initial near-zero output far
faster than the unsupervised terms alone). The LNCC term is used only when both images are real (a
synthesised pair has unrelated contrasts); the Dice term supervises through the labels whatever the contrast.
With ``similarity_on_reference`` the LNCC term compares the pair's *references* instead (the real images under the
same deformations, :class:`~.augment.Augmented`), for every pair whatever contrasts the network is shown: a
contrast-agnostic model then learns from the same dense signal as a T1 model, not from the labels alone.
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
from ...intensity import ConditionalMean
from ...io.atomic import atomic_output
from ...metrics import overlap
from ...metrics.regularisers import diffusion_regulariser_batch
from ...metrics.similarity import LNCCLoss
from ...transforms.voxel import voxel_field_to_physical, warp_voxels
from ...warp import warp_image
from ..data_parallel import example_generator, process_group
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
    augmentation, a subject may be paired with (a fresh deformation of) itself; False pairs distinct subjects only.
    ``similarity_on_reference``: LNCC between the fixed reference and the moving reference warped by the predicted
    field (the real images before synthesis, remapping and intensity augmentation), for every pair, instead of
    between the network's inputs for pairs of real contrast only. ``map_moving_contrast``: the network is shown the
    fixed image in its real contrast and the (augmented, possibly remapped) moving image mapped into it by the
    conditional mean E[fixed | moving] over the pair's voxels (:func:`map_into_contrast`), as a ``map_contrast``
    stage shows it at inference: a model for one contrast made robust to the mapping's errors."""

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
    similarity_on_reference: bool = False
    map_moving_contrast: bool = False
    seed: int = 0
    batch: int = 1
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
    if config.batch < 1:
        raise InputError("the batch must hold at least one pair")
    _, world = process_group()
    if config.batch % world:
        raise InputError(f"the batch ({config.batch}) must split evenly over the {world} processes")
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
    trains_new_contrasts = config.dice_weight > 0 or (config.similarity_on_reference and config.lncc_weight > 0)
    if augment is not None and augment.synth_probability > 0 and not trains_new_contrasts:
        raise InputError("synthesised images have random contrasts: training on them needs dice_weight > 0 or the "
                         "similarity on the references")
    if augment is not None and augment.remap_probability > 0 and not trains_new_contrasts:
        raise InputError("remapped images have random contrasts: training on them needs dice_weight > 0 or the "
                         "similarity on the references")
    if augment is not None and augment.remap_probability > 0 and not config.similarity_on_reference \
            and any(s.labels is None for s in subjects):
        raise InputError("contrast remapping trains through the labels (Dice): every subject needs a label map "
                         "(or train with the similarity on the references)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
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
    rank, world = process_group()
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    local = list(range(rank, config.batch, world))  # this process's share of every step's batch
    figures: dict = {}

    def draw(step: int, k: int) -> dict:
        """Example ``k`` of step ``step``: from its own generator, so any split of a batch over processes draws the
        same examples as one process drawing the whole batch."""
        gen = example_generator(config.seed, step, k)
        if atlas is not None:
            moving, fixed = atlas, subjects[int(torch.randint(len(subjects), (1,), generator=gen))]
        elif augment is not None and config.self_pairs:  # fresh deformations: a subject may be paired with itself
            i, j = torch.randint(len(subjects), (2,), generator=gen).tolist()
            moving, fixed = subjects[i], subjects[j]
        else:
            i, j = torch.randperm(len(subjects), generator=gen)[:2].tolist()
            moving, fixed = subjects[i], subjects[j]
        m_img, m_lab, f_img, f_lab, synthetic, known = moving.image, moving.labels, fixed.image, fixed.labels, False, None
        m_ref, f_ref = m_img, f_img
        if teachers and float(torch.rand(1, generator=gen)) < config.teacher_probability:
            teacher = teachers[int(torch.randint(len(teachers), (1,), generator=gen))]
            moving, fixed, known = teacher.moving, teacher.fixed, teacher.displacement
            m_img, m_lab, f_img, f_lab = moving.image, moving.labels, fixed.image, fixed.labels
            m_ref, f_ref = m_img, f_img
            if augment is not None:  # re-contrast both; deform the fixed one by psi: target psi + u_T(x + psi)
                m_img, m_lab, _, _, m_ref = augment_subject(m_img, m_lab, spacing_mm, augment, gen, deform=False)
                f_img, f_lab, _, psi, f_ref = augment_subject(f_img, f_lab, spacing_mm, augment, gen)
                known = psi + warp_voxels(known, psi)
        elif augment is not None:
            if float(torch.rand(1, generator=gen)) < augment.known_pair_probability:
                fixed = moving  # fixed = the moving subject deformed: the answer is that deformation
                m_img, m_lab, m_syn, _, m_ref = augment_subject(m_img, m_lab, spacing_mm, augment, gen, deform=False)
                f_img, f_lab, f_syn, known, f_ref = augment_subject(moving.image, moving.labels, spacing_mm, augment,
                                                                    gen)
            else:
                m_img, m_lab, m_syn, _, m_ref = augment_subject(m_img, m_lab, spacing_mm, augment, gen)
                f_img, f_lab, f_syn, _, f_ref = augment_subject(f_img, f_lab, spacing_mm, augment, gen)
            synthetic = m_syn or f_syn
        if config.map_moving_contrast:  # what a map_contrast stage shows the network: any moving contrast mapped
            f_img = f_ref               # into the fixed image's real one by the conditional mean through the pair
            m_img = map_into_contrast(m_img, f_img)
        return {"m": m_img, "f": f_img, "m_lab": m_lab, "f_lab": f_lab, "known": known, "synthetic": synthetic,
                "m_ref": m_ref, "f_ref": f_ref, "pair": [moving.name, fixed.name]}

    while step < config.steps:
        examples = [draw(step, k) for k in local]
        m = torch.stack([e["m"] for e in examples]).to(device).float()
        f = torch.stack([e["f"] for e in examples]).to(device).float()
        opt.zero_grad()
        warped, u = model(m, f)
        # per example: similarity, regularisation, supervised error, Dice; summed here, averaged over the batch
        terms = torch.zeros(5, device=device, dtype=torch.float64)  # loss, similarity, regularisation, mse, dice
        total = warped.new_zeros(())
        for n, e in enumerate(examples):
            wk, uk, fk = warped[n:n + 1], u[n:n + 1], f[n:n + 1]
            if config.lncc_weight <= 0 or (e["synthetic"] and not config.similarity_on_reference):
                sim = wk.new_zeros(())
            elif config.similarity_on_reference:  # the real images, whatever contrast the network was shown
                sim = similarity(e["f_ref"][None].to(device).float(),
                                 warp_voxels(e["m_ref"][None].to(device).float(), uk, "bilinear", "zeros"))
            else:
                sim = similarity(fk, wk)
            reg = diffusion_regulariser_batch(uk)
            loss_k = config.lncc_weight * sim + config.regularisation_weight * reg
            mse = wk.new_zeros(())
            if e["known"] is not None and config.supervised_weight > 0:
                mse = ((uk - e["known"].to(device)) ** 2).sum(1).mean()
                loss_k = loss_k + config.supervised_weight * mse
            dice = wk.new_zeros(())
            if label_values is not None:
                ml = _one_hot(e["m_lab"][None].to(device), label_values)
                fl = _one_hot(e["f_lab"][None].to(device), label_values)
                dice = _soft_dice(warp_voxels(ml, uk), fl)
                loss_k = loss_k + config.dice_weight * (1 - dice)
            total = total + loss_k
            terms += torch.stack([loss_k, sim, reg, mse, dice]).detach().double()
        # DistributedDataParallel averages the gradients over the processes: scaled so that the step follows the
        # mean over the whole batch, as one process with the whole batch would
        (total * world / config.batch).backward()
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.max_grad_norm)
        opt.step()
        step += 1
        if world > 1:
            torch.distributed.all_reduce(terms)
        terms = (terms / config.batch).tolist()
        figures = {"step": step, "loss": terms[0], "similarity": terms[1], "regularisation": terms[2],
                   "synthetic": any(e["synthetic"] for e in examples), "pair": examples[0]["pair"]}
        if any(e["known"] is not None for e in examples) and config.supervised_weight > 0:
            figures["supervised_mse"] = terms[3]
        if label_values is not None:
            figures["soft_dice"] = terms[4]
        if rank == 0 and validation and (step % config.validate_every == 0 or step == config.steps):
            figures["validation_dice"] = validation_dice(net, validation, device)
            net.train()
        history.append(figures)
        if progress is not None and rank == 0:
            progress(figures)
        stopping = stop is not None and step < config.steps and stop()
        if world > 1:  # every process stops at the same step, as process 0 decides
            flag = torch.tensor([float(stopping)], device=device)
            torch.distributed.broadcast(flag, 0)
            stopping = bool(flag.item())
        if rank == 0 and (step % config.checkpoint_every == 0 or step == config.steps or stopping):
            with atomic_output(out / CHECKPOINT) as tmp:
                torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
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


def map_into_contrast(moving: torch.Tensor, fixed: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """``moving`` ``(1, *shape)`` mapped into ``fixed``'s contrast by the conditional mean E[fixed | moving] over the
    two images' voxels (same grid, roughly aligned; :class:`~DeepRegistrationLib.intensity.ConditionalMean`, the
    mapping a ``map_contrast`` stage applies through the transform so far), clamped to [0, 1]. Not differentiated."""
    mapping = ConditionalMean.fit(fixed.reshape(-1).float(), moving.reshape(-1).float(), bins=bins)
    return mapping(moving.detach().float()).clamp(0, 1)


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
