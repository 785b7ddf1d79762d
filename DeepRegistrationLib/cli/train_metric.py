"""``deepreg train metric``: train a learned similarity metric (:mod:`..methods.learned_metric`) on images of one
modality or more, write a model folder (``weights.pt`` + ``model.json`` with the command, data checksums and the
validation losses) usable as ``similarity: "learned:<folder>"``.

Any image works: the second "modality" of each training example is a random intensity mapping of the first
(:func:`~..methods.learned_metric.pairs.random_contrast`), so no aligned multimodal pairs are needed. 3D images
give 2D slices (along all three axes) to a ``--dim 2`` model. With ``--labels`` (a label map per training image)
and ``--render P``, a share of the second modalities are random renderings of the labels instead: a contrast that
is no function of the first image.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..errors import InputError
from ..io.checksums import file_sha256
from .parallel import add_parallel_arguments

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", nargs="+", required=True, help="training images (2D or 3D files)")
    p.add_argument("--val-images", nargs="+", default=[], help="validation images (held-out loss)")
    p.add_argument("--labels", nargs="+", default=[],
                   help="label maps of the training images (one per image, on its grid, in the same order): with "
                        "--render, their random renderings become second modalities")
    p.add_argument("--render", type=float, default=0.0, metavar="P",
                   help="share of the mixed-contrast examples whose second image is a random rendering of the "
                        "labels (a contrast that is no function of the first image, with tissue-map edges)")
    p.add_argument("--renderings", type=int, default=8,
                   help="renderings made per labelled image (each later remapped by a random curve per example)")
    p.add_argument("--dim", type=int, choices=(2, 3), required=True, help="the network's dimension")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--name", help="model name (default: the folder's name)")
    p.add_argument("--description", default="")
    p.add_argument("--licence", default="Apache-2.0 (weights); see the training data's terms")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 16, 16], help="hidden encoder widths")
    p.add_argument("--features", type=int, default=8, help="feature channels per image")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=64, help="crop size in voxels")
    p.add_argument("--spacings", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0],
                   help="pyramid spacings (mm) the examples are drawn at")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--thick-slices", type=float, default=0.0, metavar="P",
                   help="share of examples with one image seen as thick slices (1 to --max-slice voxels along "
                        "one axis): for slabs of thick slices against fine images")
    p.add_argument("--max-slice", type=float, default=3.0, help="thickest slice drawn (voxels of the level)")
    p.add_argument("--blur", type=float, default=0.0, metavar="P",
                   help="share of examples with one image smoothed along every axis (sigma 0 to --max-blur voxels): "
                        "sharp against smooth, as scans of different resolution or a resampled moving image are")
    p.add_argument("--max-blur", type=float, default=1.2, help="largest smoothing sigma drawn (voxels of the level)")
    p.add_argument("--slope-weight", type=float, default=0.0, metavar="W",
                   help="weight of the slope term: each example is read again a small translation further and the "
                        "change of the score regressed onto the change of the target (0: off)")
    p.add_argument("--slope-offset", type=float, default=0.5, metavar="V",
                   help="largest translation of the slope term's second reading (voxels; lengths V/2 .. V)")
    p.add_argument("--outline", type=float, default=0.0, metavar="P",
                   help="share of the mixed-contrast examples whose second image maps a band along the object's "
                        "outline (1 to --max-outline voxels wide) by a second, independent curve (skin and scalp "
                        "relate between contrasts by no one function)")
    p.add_argument("--max-outline", type=int, default=6, help="widest outline band drawn (voxels of the level)")
    p.add_argument("--polarities", type=int, default=1,
                   help="how the model is to be applied, recorded on its card (inference.polarities): 2 also "
                        "scores the inverted images (1 - image) and averages the two scores (twice the cost)")
    p.add_argument("--init", help="fine-tune this learned metric model (a folder or a model name; its "
                                  "architecture is kept, --channels and --features are then not used; mixed "
                                  "contrasts from the first step, without the from-scratch curriculum)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop early with the model so far (0: no limit)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice; per process)")
    add_parallel_arguments(p)


def run(args: argparse.Namespace) -> int:
    """``deepreg train metric``, alone or as ``--nproc`` gloo processes (the metric trains on the CPU)."""
    from .parallel import run_data_parallel

    return run_data_parallel(_train, args, cuda=False)


def _train(args: argparse.Namespace, rank: int = 0, device_index: int | None = None) -> int:
    import torch

    from ..devices import resolve_device
    from ..io import read_image
    from ..methods.learned_metric.network import LearnedMetricNet
    from ..methods.learned_metric.pairs import PairConfig, level_images, level_renderings
    from ..methods.learned_metric.training import MetricTrainConfig, train_learned_metric
    from ..io.models import save_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0.0 <= args.thick_slices <= 1.0 or not args.max_slice >= 1.0:
        raise InputError(f"--thick-slices must be in [0, 1] and --max-slice >= 1, got {args.thick_slices} and "
                         f"{args.max_slice}")
    if not 0.0 <= args.blur <= 1.0 or not 0.0 < args.max_blur <= 4.0:
        raise InputError(f"--blur must be in [0, 1] and --max-blur in (0, 4] voxels, got {args.blur} and "
                         f"{args.max_blur}")
    if args.polarities not in (1, 2):
        raise InputError(f"--polarities must be 1 or 2, got {args.polarities}")
    if not 0.0 <= args.outline <= 1.0 or args.max_outline < 1:
        raise InputError(f"--outline must be in [0, 1] and --max-outline >= 1, got {args.outline} and "
                         f"{args.max_outline}")
    if not args.slope_weight >= 0 or not args.slope_offset > 0:
        raise InputError(f"--slope-weight must be >= 0 and --slope-offset > 0, got {args.slope_weight} and "
                         f"{args.slope_offset}")
    if not 0.0 <= args.render <= 1.0 or args.renderings < 1:
        raise InputError(f"--render must be in [0, 1] and --renderings >= 1, got {args.render} and {args.renderings}")
    if args.labels and len(args.labels) != len(args.images):
        raise InputError(f"--labels gives {len(args.labels)} label maps for {len(args.images)} --images (one each)")
    if args.render > 0 and not args.labels:
        raise InputError("--render needs --labels (the label maps of the training images)")
    pairs = PairConfig(crop=args.crop, spacings_mm=tuple(args.spacings), thick_slice_probability=args.thick_slices,
                       max_slice_voxels=args.max_slice, blur_probability=args.blur, max_blur_voxels=args.max_blur,
                       slope_offset_voxels=args.slope_offset if args.slope_weight > 0 else 0.0,
                       outline_probability=args.outline, max_outline_voxels=args.max_outline,
                       render_probability=args.render)
    paths = [Path(p) for p in args.images]
    val_paths = [Path(p) for p in args.val_images]
    items, val_items = [], []
    label_paths = [Path(p) for p in args.labels] if args.render > 0 else []
    for path, target in [(p, items) for p in paths] + [(p, val_items) for p in val_paths]:
        image = read_image(path, grayscale=True)
        image.check_finite()
        if image.dim < args.dim:
            raise InputError(f"{path}: a {image.dim}D image cannot train a {args.dim}D metric")
        target.append(level_images(image, pairs.spacings_mm, pairs.smoothing))
        if target is items and label_paths:
            i = len(items) - 1
            labels = read_image(label_paths[i], grayscale=True)
            labels.check_finite()
            if not torch.equal(labels.data, labels.data.round()) or int(labels.data.max()) < 1:
                raise InputError(f"{label_paths[i]}: not a label map (whole numbers, some above 0) of {path}")
            items[i].renderings = level_renderings(labels, image, pairs.spacings_mm, pairs.smoothing,
                                                   args.renderings, seed=args.seed * 1000 + i)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)  # the same initial weights for the same seed (every process of a group too)
    init = {}
    if args.init:
        from ..io.models import find_model, load_model

        folder = find_model(args.init)
        net, card0 = load_model(folder, "cpu", network="LearnedMetricNet")
        if net.dim != args.dim:
            raise InputError(f"--init {args.init}: a {net.dim}D metric, but --dim is {args.dim}")
        init = {"init": str(args.init), "init_sha256": card0["sha256"]}
        net.train()
    else:
        net = LearnedMetricNet(dim=args.dim, channels=args.channels, features=args.features)
    config = MetricTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                               validate_every=args.validate_every, max_minutes=args.max_minutes,
                               slope_weight=args.slope_weight, pairs=pairs,
                               contrast_warmup=0.0 if args.init else MetricTrainConfig.contrast_warmup)
    if device.type != "cpu" and rank == 0:
        print("note: the metric trains on the CPU (examples are drawn there; the network is small)", file=sys.stderr)
    start = time.perf_counter()
    figures = train_learned_metric(net, items, val_items, config,
                                   progress=lambda h: print(" ".join(f"{k} {v}" for k, v in h.items()),
                                                            file=sys.stderr, flush=True))
    if rank != 0:  # process 0 writes the model
        return 0
    out = Path(args.out)
    card = {
        "name": args.name or out.name,
        "description": args.description,
        "input": {"dim": args.dim, "intensity": "each image to [0, 1] between its 0.5 / 99.5 percentiles",
                  "scale_voxels": pairs.scale_voxels, "spacings_mm": list(pairs.spacings_mm),
                  "receptive_field_voxels": net.receptive_field},
        "inference": {"polarities": args.polarities},
        "training": {
            "command": "deepreg " + shlex.join(getattr(args, "argv", sys.argv[1:])),
            "images": [{"file": p.name, "sha256_16": file_sha256(p)[:16]} for p in paths],
            **({"labels": [{"file": Path(p).name, "sha256_16": file_sha256(Path(p))[:16]} for p in args.labels]}
               if args.labels else {}),
            "validation": [p.name for p in val_paths],
            **init,
            "config": config.to_dict(),
            **figures,
            "time_s": round(time.perf_counter() - start, 1),
            "torch": torch.__version__,
        },
        "licence": args.licence,
    }
    save_model(net, out, card)
    print(f"wrote {out} (validation loss {figures['initial_validation_loss']:.4f} -> "
          f"{figures['final_validation_loss']:.4f})")
    return 0
