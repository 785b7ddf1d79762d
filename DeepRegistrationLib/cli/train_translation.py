"""``deepreg train translation``: train a source -> target modality translator (NeMAR or CycleGAN,
:mod:`..methods.translation.training`) and write a model folder (``weights.pt`` + ``model.json``: the modalities,
the training spacing, the command, the images' checksums, the validation L1 and shift before and after).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..errors import InputError
from ..io.checksums import file_sha256

__all__ = ["add_arguments", "run", "read_pair"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", nargs="+", required=True, help="images of the source modality (the moving images "
                                                              "the model will translate), 2D or 3D")
    p.add_argument("--target", nargs="+", required=True,
                   help="images of the target modality, one per source image, of the same subject (NeMAR needs them "
                        "roughly aligned; resampled onto the source image's grid when their grids differ)")
    p.add_argument("--val-source", nargs="*", default=[], help="validation source images (aligned with --val-target)")
    p.add_argument("--val-target", nargs="*", default=[])
    p.add_argument("--source-modality", required=True, help="what the source images are, e.g. PD (for the card)")
    p.add_argument("--target-modality", required=True, help="what the target images are, e.g. T1")
    p.add_argument("--method", choices=["nemar", "cyclegan"], default="nemar")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--name", help="model name (default: the folder's name)")
    p.add_argument("--description", default="")
    p.add_argument("--licence", default="Apache-2.0 (weights); see the training images' terms")
    p.add_argument("--channels", type=int, default=16, help="generator width (first layer)")
    p.add_argument("--blocks", type=int, default=6, help="residual blocks")
    p.add_argument("--norm", choices=["batch", "instance"], default="batch",
                   help="normalisation in the generator (batch: fixed statistics at inference; default)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=96, help="crop size in pixels/voxels (multiple of 8)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lambda-paired", type=float, default=0.0,
                   help="NeMAR: weight of L1(T(source), target) on the un-moved crops, for training pairs known to be "
                        "aligned (fixes the translator's geometry; 0: NeMAR alone)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop early with the model so far (0: no limit)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")


def read_pair(source_path: Path, target_path: Path):
    """The :class:`~..methods.translation.training.TranslationPair` of two files: single channel (a colour image's
    luminance), intensities to [0, 1] (:func:`~..intensity.normalise_unit_range`), the target on the source's grid;
    and the source image's spacing. Clear errors for a NaN, a constant image or images of different dimensions."""
    from ..intensity import normalise_unit_range
    from ..io import read_image
    from ..methods.translation.training import TranslationPair
    from ..warp import warp_image

    images = []
    for path in (source_path, target_path):
        image = read_image(path)
        if image.num_channels > 1:
            image = image.to_grayscale()
        image.check_finite()
        if float(image.data.max() - image.data.min()) == 0:
            raise InputError(f"{path}: the image is constant")
        images.append(image)
    source, target = images
    if source.dim != target.dim:
        raise InputError(f"{target_path}: a {target.dim}D target for a {source.dim}D source image")
    if not target.grid.same_as(source.grid):
        target = warp_image(target, None, source.grid, "linear")
    source, target = normalise_unit_range(source), normalise_unit_range(target)
    return TranslationPair(source.data.float(), target.data.float(), source_path.name), source


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..devices import resolve_device
    from ..io.models import save_model
    from ..methods.translation.network import TranslationGenerator
    from ..methods.translation.training import TranslationTrainConfig, train_translation

    if args.threads:
        torch.set_num_threads(args.threads)
    for a, b, what in ((args.source, args.target, "--source/--target"),
                       (args.val_source, args.val_target, "--val-source/--val-target")):
        if len(a) != len(b):
            raise InputError(f"{what}: give one target image per source image ({len(a)} vs {len(b)})")
    sources, targets = [Path(p) for p in args.source], [Path(p) for p in args.target]
    pairs, spacings, dims = [], [], set()
    for s, t in zip(sources, targets):
        pair, image = read_pair(s, t)
        pairs.append(pair)
        spacings.append(np.asarray(image.grid.spacing, dtype=float))
        dims.add(image.dim)
    if len(dims) != 1:
        raise InputError(f"the training images mix dimensions {sorted(dims)}")
    val_pairs = [read_pair(Path(s), Path(t))[0] for s, t in zip(args.val_source, args.val_target)]
    config = TranslationTrainConfig(method=args.method, steps=args.steps, batch=args.batch, crop=args.crop,
                                    lr=args.lr, seed=args.seed, lambda_paired=args.lambda_paired,
                                    validate_every=args.validate_every, max_minutes=args.max_minutes).validate()
    torch.manual_seed(args.seed)
    net = TranslationGenerator(dims.pop(), args.channels, args.blocks, args.norm)
    device = resolve_device(args.device)
    start = time.perf_counter()
    figures = train_translation(net, pairs, val_pairs, config, device,
                                progress=lambda h: print(" ".join(f"{k} {v}" for k, v in h.items()), file=sys.stderr,
                                                         flush=True))
    out = Path(args.out)
    card = {
        "name": args.name or out.name,
        "description": args.description,
        "input": {"dim": net.dim, "source_modality": args.source_modality, "target_modality": args.target_modality,
                  "spacing_mm": [round(float(v), 4) for v in np.mean(spacings, axis=0)],
                  "intensity": "normalise_unit_range: the 0.5 / 99.5 percentiles clipped, then to [0, 1]",
                  "size_multiple": net.multiple},
        "training": {
            "command": "deepreg " + shlex.join(getattr(args, "argv", sys.argv[1:])),
            "method": args.method,
            "images": [{"source": s.name, "target": t.name, "source_sha256_16": file_sha256(s)[:16],
                        "target_sha256_16": file_sha256(t)[:16]} for s, t in zip(sources, targets)],
            "validation": [{"source": Path(s).name, "target": Path(t).name}
                           for s, t in zip(args.val_source, args.val_target)],
            "config": config.to_dict(), **figures, "time_s": round(time.perf_counter() - start, 1),
            "device": str(device), "torch": torch.__version__},
        "licence": args.licence,
    }
    save_model(net, out, card)
    final = figures["final_validation"]
    print(f"wrote {out} ({args.method}, {figures['steps_done']} steps; validation {final or 'none'})")
    return 0
