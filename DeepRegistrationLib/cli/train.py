"""``deepreg train voxelmorph``: read images (files, folders or a CSV), put them on the model grid, train, save.

The result is a model folder (``weights.pt`` + ``model.json``, see :mod:`..io.models`) whose card records the
model grid, the training data (file names and sha256), the exact command, the steps, the augmentation and
the final validation Dice. Checkpoints go to ``<out>.checkpoints/`` while training; ``--resume`` continues
from there exactly; ``--init MODEL`` fine-tunes an existing model (its architecture and grid are kept).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import shlex
import sys
import time
from pathlib import Path

from ..errors import InputError
from ..io.checksums import file_sha256
from .parallel import add_parallel_arguments

__all__ = ["add_arguments", "run"]

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh")


def add_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--images", nargs="+", help="training images: files and/or folders (sorted by name)")
    data.add_argument("--labels", nargs="+", help="their label maps, in the same order (files and/or folders)")
    data.add_argument("--csv", help="CSV with columns 'image' and optionally 'labels' (paths relative to the CSV)")
    data.add_argument("--atlas", help="train atlas -> subject instead of random pairs: the atlas image")
    data.add_argument("--atlas-labels", help="the atlas' label map")
    data.add_argument("--val-images", nargs="+", help="validation images (each is registered from the first "
                      "two training subjects; their mean Dice is reported)")
    data.add_argument("--val-labels", nargs="+", help="their label maps")
    model = p.add_argument_group("model")
    model.add_argument("--out", required=True, help="model folder to write (weights.pt + model.json)")
    model.add_argument("--init", help="fine-tune this model folder (keeps its architecture and grid)")
    model.add_argument("--architecture", default="vm1-lite", help="vm1, vm2, vm1-lite (default) or vm1-lite-in (instance-normalised: trains faster)")
    model.add_argument("--no-diffeomorphic", action="store_true", help="predict the displacement directly")
    model.add_argument("--integration-steps", type=int, default=7)
    model.add_argument("--grid-size", type=int, nargs="+", default=[56, 64, 72],
                       help="model grid size along index axes i j (k), each a multiple of 8 (default 56 64 72)")
    model.add_argument("--spacing", type=float, default=3.0, help="model grid spacing in mm (default 3)")
    model.add_argument("--orientation", default="LIA", help="orientation code of the model grid (default LIA)")
    model.add_argument("--modality", default=None,
                       help="what the model's images are (stored in the card, shown in messages; default 'T1 brain "
                            "MRI, skull-stripped, affinely aligned', or the --init model's)")
    model.add_argument("--name", help="model name (default: the output folder's name)")
    model.add_argument("--description", default="")
    model.add_argument("--licence", default="Apache-2.0 (weights); see the training data's terms")
    train = p.add_argument_group("training")
    train.add_argument("--steps", type=int, default=2000)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--lncc-window", type=int, default=9)
    train.add_argument("--lncc-weight", type=float, default=1.0)
    train.add_argument("--dice-weight", type=float, default=0.0, help="> 0: semi-supervised (needs labels)")
    train.add_argument("--reg", type=float, default=1.0, help="weight of the diffusion regulariser (voxel units)")
    train.add_argument("--augment", action="store_true", help="random deformations and intensity augmentation")
    train.add_argument("--synth", type=float, default=0.0,
                       help="probability of synthesising a training image from its labels (SynthMorph; implies "
                            "--augment)")
    train.add_argument("--remap", type=float, default=0.0,
                       help="probability that a real training image goes through a random non-monotonic contrast "
                            "curve (contrast-agnostic training, with --synth; needs --dice-weight > 0 or "
                            "--similarity-on-reference)")
    train.add_argument("--similarity-on-reference", action="store_true",
                       help="compute LNCC between the real images under the pair's deformations (before synthesis, "
                            "remapping and intensity augmentation) for every pair, whatever contrast the network is "
                            "shown: contrast-agnostic training with a dense signal")
    train.add_argument("--map-moving-contrast", action="store_true",
                       help="show the network the fixed image in its real contrast and the moving image mapped into "
                            "it by the conditional mean (what a map_contrast stage shows it): a one-contrast model "
                            "made robust to the mapping, for multimodal pairs")
    train.add_argument("--known-pairs", type=float, default=0.0,
                       help="probability of a known pair: a subject and a random deformation of it, with a "
                            "supervised term on the known displacement (implies --augment)")
    train.add_argument("--supervised-weight", type=float, default=0.1,
                       help="weight of that term (mean squared displacement error in voxels^2)")
    train.add_argument("--max-grad-norm", type=float, default=0.0, help="clip the gradient norm (0: off)")
    train.add_argument("--no-self-pairs", action="store_true",
                       help="with augmentation, pair distinct subjects only (default: a subject may be paired with a "
                            "fresh deformation of itself)")
    train.add_argument("--rotation-deg", type=float, default=4.0,
                       help="random rotation of each augmented image, uniform +- this (degrees, default 4)")
    train.add_argument("--scaling", type=float, default=0.04,
                       help="random per-axis scaling, uniform 1 +- this (default 0.04)")
    train.add_argument("--translation-mm", type=float, default=4.0,
                       help="random translation, uniform +- this per axis (mm, default 4)")
    train.add_argument("--deformation-mm", type=float, default=2.0,
                       help="std of the random velocity at each control point (mm, default 2)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=100)
    train.add_argument("--validate-every", type=int, default=250)
    train.add_argument("--resume", action="store_true", help="continue from <out>.checkpoints/")
    train.add_argument("--max-minutes", type=float, default=0.0,
                       help="stop after this many minutes with a checkpoint (no model written; continue with "
                            "--resume), e.g. to fit a time-limited GPU lease (0: no limit)")
    train.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    train.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice; per process)")
    train.add_argument("--batch", type=int, default=1, help="pairs per step, over all processes (default 1)")
    add_parallel_arguments(train)


def add_supervised_arguments(p: argparse.ArgumentParser) -> None:
    """``deepreg train supervised``: the VoxelMorph network trained by regression of known displacements only
    (no image similarity): known pairs (a subject and a random deformation of it) and teacher pairs (two
    subjects and the displacement the engine's best preset found between them)."""
    add_arguments(p)
    p.add_argument("--teacher", nargs=3, action="append", default=[], metavar=("MOVING", "FIXED", "TRANSFORM"),
                   help="a teacher pair: two training images and the registration result between them (a transform "
                        "file written by 'deepreg register': FIXED -> MOVING); repeat for more pairs")
    p.add_argument("--teacher-probability", type=float, default=0.5,
                   help="share of steps on teacher pairs (the rest: known pairs; default 0.5)")
    p.set_defaults(lncc_weight=0.0, dice_weight=0.0, supervised_weight=1.0, known_pairs=1.0, reg=0.01,
                   objective="supervised")


def _expand(paths: list[str] | None) -> list[Path]:
    out: list[Path] = []
    for p in paths or []:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(f for f in path.iterdir() if f.name.lower().endswith(_IMAGE_SUFFIXES)))
        elif path.exists():
            out.append(path)
        else:
            raise InputError(f"{path}: file not found")
    return out


def _from_csv(path: Path) -> tuple[list[Path], list[Path]]:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "image" not in rows[0]:
        raise InputError(f"{path}: needs a header with an 'image' column (and optionally 'labels')")
    images = [path.parent / r["image"] for r in rows]
    labels = [path.parent / r["labels"] for r in rows if r.get("labels")]
    if labels and len(labels) != len(images):
        raise InputError(f"{path}: 'labels' is given for {len(labels)} of {len(images)} rows (all or none)")
    return images, labels


def _load_teachers(triplets: list, images: list[Path], subjects: list) -> list:
    """Teacher pairs (:class:`~..methods.voxelmorph.training.Teacher`) of ``--teacher MOVING FIXED TRANSFORM``:
    both images must be training images (their subjects, and the model grids they were placed on, are reused);
    the transform is read and put on those grids."""
    if not triplets:
        return []
    from ..io import read_transform
    from ..methods.voxelmorph.training import Teacher, teacher_displacement

    by_path = {p.resolve(): k for k, p in enumerate(images)}
    teachers = []
    for moving, fixed, transform in triplets:
        ks = []
        for path in (Path(moving), Path(fixed)):
            if path.resolve() not in by_path:
                raise InputError(f"--teacher: {path} is not one of the training images (--images)")
            ks.append(by_path[path.resolve()])
        if ks[0] == ks[1]:
            raise InputError(f"--teacher: {moving} is both the moving and the fixed image")
        t = read_transform(transform)
        u = teacher_displacement(t, subjects[ks[1]].grid, subjects[ks[0]].grid)
        if not bool(u.isfinite().all()):
            raise InputError(f"{transform}: the teacher transform gives non-finite displacements on the model grid")
        teachers.append(Teacher(subjects[ks[0]], subjects[ks[1]], u, Path(transform).name))
    return teachers


def _sha(path: Path) -> str:
    return file_sha256(path)[:16]


def load_subject(image_path: Path, labels_path: Path | None, model):
    """One :class:`~.training.Subject` on its model grid (a :class:`~.model_input.ModelInput` placed on the
    image): normalised, smoothed and resampled image; nearest-resampled labels."""
    from ..io import read_image
    from ..methods.voxelmorph.model_grid import check_network_input, normalised, to_model_grid
    from ..methods.voxelmorph.training import Subject

    image = read_image(image_path)
    image.check_finite()
    check_network_input(image, model, "training")
    image_n = normalised(image)
    grid = model.grid_for(image_n)
    labels = None
    if labels_path is not None:
        lab = read_image(labels_path).as_label_map()
        lab.check_not_empty_labels()
        labels = to_model_grid(lab, grid, interpolation="nearest").round().long()
        if not bool(labels.ne(0).any()):
            raise InputError(f"{labels_path}: no label inside the model grid (not on {image_path.name}'s grid?)")
    return Subject(to_model_grid(image_n, grid), labels, image_path.name, grid)


def run(args: argparse.Namespace) -> int:
    """``deepreg train voxelmorph|supervised``, alone or data-parallel (:mod:`.parallel`)."""
    from ..devices import resolve_device
    from .parallel import run_data_parallel

    return run_data_parallel(_train, args, resolve_device(args.device).type == "cuda")


def _train(args: argparse.Namespace, rank: int = 0, device_index: int | None = None) -> int:
    import torch

    from ..devices import resolve_device
    from ..methods.voxelmorph.augment import AugmentConfig
    from ..methods.voxelmorph.model_grid import ModelInput
    from ..io.models import load_model, save_model
    from ..methods.voxelmorph.network import VoxelMorphNet
    from ..methods.voxelmorph.training import TrainConfig, train_voxelmorph

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.csv:
        if args.images:
            raise InputError("give --csv or --images, not both")
        images, labels = _from_csv(Path(args.csv))
    else:
        images, labels = _expand(args.images), _expand(args.labels)
    if not images:
        raise InputError("no training images (give --images files/folders or --csv)")
    if labels and len(labels) != len(images):
        raise InputError(f"{len(images)} images but {len(labels)} label maps (they pair up in order)")
    val_images, val_labels = _expand(args.val_images), _expand(args.val_labels)
    if len(val_images) != len(val_labels):
        raise InputError("validation needs one label map per validation image (--val-images, --val-labels)")
    if val_images and not labels:
        raise InputError("validation Dice needs training label maps too")
    out = Path(args.out)
    inputs = images + labels + val_images + val_labels
    if any(out.resolve() == p.resolve() for p in inputs):
        raise InputError(f"{out}: output would overwrite an input")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (args.resume and (out / "model.json").is_file()):
            raise InputError(f"{out}: exists; choose another --out (or --resume, which replaces the model it wrote)")
    device = resolve_device(args.device)
    if device_index is not None:
        device = torch.device("cuda", device_index)
        torch.cuda.set_device(device)
    if device.type == "cuda":  # every step has the same shapes: let cuDNN pick its fastest convolutions once
        torch.backends.cudnn.benchmark = True

    if args.init:
        net, card0 = load_model(args.init, device)
        model = ModelInput.from_dict(card0["input"])
        if args.modality:  # fine-tuning for other images (e.g. any contrast) says so on the card
            model = dataclasses.replace(model, modality=args.modality)
        base = {"init": str(args.init), "init_sha256": card0["sha256"]}
    else:
        dim = len(args.grid_size)
        model = ModelInput(tuple(args.grid_size), (args.spacing,) * dim, args.orientation,
                           args.modality or "T1 brain MRI, skull-stripped, affinely aligned")
        torch.manual_seed(args.seed)  # the same initial weights for the same seed (every process of a group too)
        net = VoxelMorphNet(dim, args.architecture, diffeomorphic=not args.no_diffeomorphic,
                            integration_steps=args.integration_steps)
        base = {}
    t0 = time.perf_counter()
    subjects = [load_subject(i, labels[k] if labels else None, model) for k, i in enumerate(images)]
    atlas = load_subject(Path(args.atlas), Path(args.atlas_labels) if args.atlas_labels else None, model) \
        if args.atlas else None
    validation = []
    for vi, vl in zip(val_images, val_labels):
        target = load_subject(vi, vl, model)
        validation.extend((s, target) for s in subjects[:2])
    if rank == 0:
        print(f"loaded {len(subjects)} training subjects{' + atlas' if atlas else ''}, {len(val_images)} validation "
              f"on the model grid {list(model.size)} x {model.spacing[0]:g} mm {model.orientation} "
              f"({time.perf_counter() - t0:.1f} s); training on {device}", file=sys.stderr)

    augment = None
    if args.augment or args.synth > 0 or args.remap > 0 or args.known_pairs > 0:
        augment = AugmentConfig(deformation_mm=args.deformation_mm, rotation_deg=args.rotation_deg,
                                scaling=args.scaling, translation_mm=args.translation_mm, synth_probability=args.synth,
                                remap_probability=args.remap, known_pair_probability=args.known_pairs)
    teachers = _load_teachers(getattr(args, "teacher", []), images, subjects)
    objective = getattr(args, "objective", "unsupervised")
    if objective == "supervised" and not (teachers or (augment and augment.known_pair_probability > 0)):
        raise InputError("supervised training needs known pairs (--known-pairs > 0) or teacher pairs (--teacher)")
    config = TrainConfig(steps=args.steps, learning_rate=args.lr, lncc_window=args.lncc_window,
                         lncc_weight=args.lncc_weight, regularisation_weight=args.reg, dice_weight=args.dice_weight,
                         supervised_weight=args.supervised_weight, max_grad_norm=args.max_grad_norm,
                         teacher_probability=getattr(args, "teacher_probability", 0.0) if teachers else 0.0,
                         self_pairs=not args.no_self_pairs,
                         similarity_on_reference=getattr(args, "similarity_on_reference", False),
                         map_moving_contrast=getattr(args, "map_moving_contrast", False),
                         seed=args.seed, batch=args.batch, checkpoint_every=args.checkpoint_every, validate_every=args.validate_every)
    bar = _ProgressBar(args.steps) if rank == 0 else None
    start = time.perf_counter()
    deadline = start + 60 * args.max_minutes if args.max_minutes > 0 else None
    checkpoints = Path(str(out) + ".checkpoints")
    figures = train_voxelmorph(net, subjects, config, checkpoints, atlas=atlas,
                               validation=validation or None, resume=args.resume, device=device, progress=bar,
                               augment=augment, spacing_mm=float(model.spacing[0]),
                               stop=(lambda: time.perf_counter() > deadline) if deadline else None,
                               teachers=teachers or None)
    if rank != 0:  # process 0 writes the model
        return 0
    bar.finish()
    if figures.get("stopped"):
        print(f"stopped at step {figures['step']} of {args.steps} after {args.max_minutes:g} min; checkpoint in "
              f"{checkpoints}; no model written: run the same command with --resume to continue")
        return 0
    card = {
        "name": args.name or out.name,
        "description": args.description,
        "input": model.to_dict(),
        "training": {
            **base,
            "objective": objective,
            "teachers": [{"moving": Path(m).name, "fixed": Path(f).name, "transform": Path(t).name,
                          "sha256_16": _sha(Path(t))} for m, f, t in getattr(args, "teacher", [])],
            "command": "deepreg " + shlex.join(getattr(args, "argv", sys.argv[1:])),
            "images": [{"file": p.name, "sha256_16": _sha(p)} for p in images],
            "labels": [{"file": p.name, "sha256_16": _sha(p)} for p in labels],
            "validation": [p.name for p in val_images],
            "atlas": Path(args.atlas).name if args.atlas else None,
            "steps": args.steps,
            "config": config.to_dict(),
            "augment": augment.to_dict() if augment else None,
            "final": {k: v for k, v in figures.items() if k != "synthetic"},
            "validation_dice": figures.get("validation_dice"),
            "device": str(device),
            "time_s": round(time.perf_counter() - start, 1),
            "torch": torch.__version__,
        },
        "licence": args.licence,
    }
    if out.exists() and any(out.iterdir()):  # --resume of a finished run: swap the new model in at the end
        import shutil

        fresh = save_model(net, out.with_name(out.name + ".new"), card)
        old = out.with_name(out.name + ".old")
        out.rename(old)
        fresh.rename(out)
        shutil.rmtree(old)
    else:
        save_model(net, out, card)
    dice = figures.get("validation_dice")
    print(f"wrote {out} (validation Dice {dice:.3f})" if dice is not None else f"wrote {out}")
    return 0


class _ProgressBar:
    """One line on stderr: step, loss, Dice, validation Dice, seconds per step, time left."""

    def __init__(self, total: int) -> None:
        self.total, self.start, self.tty = total, time.perf_counter(), sys.stderr.isatty()
        self.first_step: int | None = None
        self.last_validation: float | None = None

    def __call__(self, f: dict) -> None:
        step = f["step"]
        if self.first_step is None:
            self.first_step, self.start = step - 1, time.perf_counter()
        if "validation_dice" in f:
            self.last_validation = f["validation_dice"]
        rate = (time.perf_counter() - self.start) / max(step - self.first_step, 1)
        left = rate * (self.total - step)
        width = 24
        done = int(width * step / max(self.total, 1))
        line = (f"[{'#' * done}{'.' * (width - done)}] {step}/{self.total} loss {f['loss']:.4f}"
                + (f" dice {f['soft_dice']:.3f}" if "soft_dice" in f else "")
                + (f" val {self.last_validation:.3f}" if self.last_validation is not None else "")
                + f" {rate:.2f} s/step, {int(left // 60)}:{int(left % 60):02d} left")
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif step % 50 == 0 or step == self.total or "validation_dice" in f:
            print(line, file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.tty:
            print(file=sys.stderr)
