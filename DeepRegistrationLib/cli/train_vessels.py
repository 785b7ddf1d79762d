"""``deepreg train vessels``: train the retinal vessel U-Net on pseudo-labels (:mod:`..methods.retina.vessel_training`)
and write a model folder (``weights.pt`` + ``model.json`` with the command, the images' checksums and polarities,
and the validation Dice against the pseudo-labels, on the images and on their inverted renderings).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..errors import InputError
from ..io.checksums import file_sha256

__all__ = ["add_arguments", "run", "training_vessel_maps", "add_vessel_map_arguments", "add_training_run_arguments",
           "add_training_loop_arguments"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", nargs="+", required=True, help="training photographs / angiograms (2D, colour or grey)")
    p.add_argument("--polarity", nargs="+", required=True,
                   help="each training image's vessels: dark (colour or red-free photograph) or bright (angiogram); "
                        "one value for all, or one per image")
    p.add_argument("--val-images", nargs="*", default=[], help="validation images (Dice against their pseudo-labels)")
    p.add_argument("--val-polarity", nargs="*", default=[], help="as --polarity, for the validation images")
    p.add_argument("--channel", default="green", help="what a colour image is read through (default: green)")
    p.add_argument("--working-size", type=int, default=768, help="pixels along the longer side of each image")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--name", help="model name (default: the folder's name)")
    p.add_argument("--description", default="")
    p.add_argument("--licence", default="Apache-2.0 (weights); see the training images' terms")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--invert-probability", type=float, default=0.5)
    p.add_argument("--validate-every", type=int, default=250)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop early with the model so far (0: no limit)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")


def _polarities(values: list[str], count: int, what: str) -> list[str]:
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise InputError(f"{what}: give one polarity for all images or one per image ({count}), got {len(values)}")
    return values


def add_vessel_map_arguments(p: argparse.ArgumentParser, working_size: int, working_help: str) -> None:
    """The arguments of a retinal matching network's training that say which vessel maps it learns from:
    images and their polarities, validation images, the vessel network, the channel and the working size."""
    p.add_argument("--images", nargs="+", required=True, help="photographs / angiograms whose vessel maps make pairs")
    p.add_argument("--polarity", nargs="+", default=["dark"],
                   help="each image's vessels for the Frangi filter (dark or bright; one for all or one per image); "
                        "unused with --vessel-model")
    p.add_argument("--val-images", nargs="*", default=[], help="images for the validation pairs")
    p.add_argument("--val-polarity", nargs="*", default=[])
    p.add_argument("--vessel-model", default="", help="vessel network for the maps (default: the Frangi filter)")
    p.add_argument("--channel", default="green")
    p.add_argument("--working-size", type=int, default=working_size, help=working_help)


def add_training_run_arguments(p: argparse.ArgumentParser) -> None:
    """Where a retinal network's training writes its model folder and card, and its steps, batch and learning
    rate."""
    p.add_argument("--out", required=True)
    p.add_argument("--name")
    p.add_argument("--description", default="")
    p.add_argument("--licence", default="Apache-2.0 (weights); see the training images' terms")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)


def add_training_loop_arguments(p: argparse.ArgumentParser) -> None:
    """The training loop's seed, validation interval, time budget and CPU threads."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--max-minutes", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=0)


def training_vessel_maps(args, network: str, sizes: list[int]) -> tuple[list[Path], list[str], list, list]:
    """The vessel maps (float32 [0, 1]) a retinal matching network trains and validates on: each of ``args.images``
    and ``args.val_images`` read as a training photograph, normalised, and mapped (``args.vessel_model``, or the
    Frangi filter with ``args.polarity`` / ``args.val_polarity``) at each working size of ``sizes``. Returns the
    training paths, their polarities, the training maps and the validation maps."""
    from ..intensity import normalise_unit_range
    from ..methods.retina.stage import feature_image

    photographs = _training_photographs(args, network)
    maps, val_maps = [], []
    for _, image, pol, validation in photographs:
        image = normalise_unit_range(image.float())
        for size in sizes:
            _, u8 = feature_image(image, "vessels", size, pol, vessel_model=args.vessel_model)
            (val_maps if validation else maps).append(u8.astype("float32") / 255.0)
    training = [(path, pol) for path, _, pol, validation in photographs if not validation]
    return [t[0] for t in training], [t[1] for t in training], maps, val_maps


def _training_photographs(args, network: str) -> list[tuple]:
    """Every photograph of ``args.images`` then ``args.val_images`` read (:func:`read_training_photograph`) as
    ``(path, image, polarity, is_validation)``: polarities from ``args.polarity`` / ``args.val_polarity`` (the
    validation ones default to dark vessels)."""
    paths, val_paths = [Path(p) for p in args.images], [Path(p) for p in args.val_images]
    polarity = _polarities(args.polarity, len(paths), "--polarity")
    val_polarity = _polarities(args.val_polarity or ["dark"], len(val_paths), "--val-polarity") if val_paths else []
    return [(path, read_training_photograph(path, args.channel, network), pol, validation)
            for group, pols, validation in ((paths, polarity, False), (val_paths, val_polarity, True))
            for path, pol in zip(group, pols)]


def read_training_photograph(path: Path, channel: str, network: str):
    """A 2D training image of a retinal network, one channel (``channel`` of a colour photograph): clear errors for
    another dimension, NaN/inf pixels and a constant image."""
    from ..io import read_image

    image = read_image(path)
    image = image.to_grayscale(channel) if image.num_channels in (3, 4) else image
    if image.dim != 2:
        raise InputError(f"{path}: the {network} trains on 2D images, got a {image.dim}D image")
    image.check_finite()
    if float(image.data.max()) <= float(image.data.min()):
        raise InputError(f"{path}: the image is constant")
    return image


def run(args: argparse.Namespace) -> int:
    import torch

    from ..io.models import save_model
    from ..methods.retina.vessel_net import VesselNet
    from ..methods.retina.vessel_training import VesselTrainConfig, train_vessel_net, vessel_example

    if args.threads:
        torch.set_num_threads(args.threads)
    photographs = _training_photographs(args, "vessel network")
    examples, val_examples = [], []
    for _, image, pol, validation in photographs:
        array = image.data[0].double().numpy()
        lo, hi = float(array.min()), float(array.max())
        (val_examples if validation else examples).append(
            vessel_example(((array - lo) / (hi - lo)).astype("float32"), pol, args.working_size))
    torch.manual_seed(args.seed)
    net = VesselNet()
    config = VesselTrainConfig(steps=args.steps, batch=args.batch, crop=args.crop, lr=args.lr, seed=args.seed,
                               invert_probability=args.invert_probability, validate_every=args.validate_every,
                               max_minutes=args.max_minutes)
    start = time.perf_counter()
    figures = train_vessel_net(net, examples, val_examples, config,
                               progress=lambda h: print(" ".join(f"{k} {v}" for k, v in h.items()), file=sys.stderr,
                                                        flush=True))
    out = Path(args.out)
    card = {
        "name": args.name or out.name,
        "description": args.description,
        "input": {"dim": 2, "channel": args.channel, "working_size": args.working_size,
                  "intensity": "the image to [0, 1] between its field of view's 1st and 99th percentiles",
                  "size_multiple": net.multiple},
        "training": {
            "command": "deepreg " + shlex.join(getattr(args, "argv", sys.argv[1:])),
            "labels": "pseudo-labels: each image's own Frangi vessel map (scikit-image) above its 88th percentile "
                      "in the field of view; no manual annotation",
            "images": [{"file": p.name, "polarity": q, "sha256_16": file_sha256(p)[:16]}
                       for p, _, q, validation in photographs if not validation],
            "validation": [{"file": p.name, "polarity": q} for p, _, q, validation in photographs if validation],
            "config": config.to_dict(), **figures, "time_s": round(time.perf_counter() - start, 1),
            "torch": torch.__version__},
        "licence": args.licence,
    }
    save_model(net, out, card)
    print(f"wrote {out} (validation Dice against the pseudo-labels {figures['initial_val_dice']:.3f} -> "
          f"{figures['final_val_dice']:.3f}; inverted {figures['final_val_dice_inverted']:.3f})")
    return 0
