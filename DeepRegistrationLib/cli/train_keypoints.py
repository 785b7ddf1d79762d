"""``deepreg train keypoints``: train the retinal keypoint network (:mod:`..methods.retina.keypoint_training`)
self-supervised (homographic adaptation of SIFT keypoints, synthetic homographies) and write a model folder
(``weights.pt`` + ``model.json``)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..errors import InputError
from ..io.checksums import file_sha256
from .train_vessels import add_training_loop_arguments, add_training_run_arguments

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", nargs="+", required=True, help="fundus photographs (colour or grey)")
    p.add_argument("--val-images", nargs="*", default=[], help="images for the validation pairs")
    p.add_argument("--channel", default="green")
    p.add_argument("--working-size", type=int, default=512, help="pixels along each image's longer side")
    p.add_argument("--size", type=int, default=192, help="the training windows' size (multiple of 8)")
    add_training_run_arguments(p)
    p.add_argument("--adaptation-warps", type=int, default=32, help="homographies of the pseudo-label adaptation")
    p.add_argument("--descriptor-weight", type=float, default=1.0)
    add_training_loop_arguments(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .train_vessels import read_training_photograph
    from ..io.models import save_model
    from ..methods.retina.keypoint_net import KeypointNet
    from ..methods.retina.keypoint_training import KeypointTrainConfig, keypoint_example, train_keypoint_net

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.size % 8 or args.size < 64:
        raise InputError(f"--size must be a multiple of 8 of at least 64, got {args.size}")
    config = KeypointTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, size=args.size,
                                 adaptation_warps=args.adaptation_warps, descriptor_weight=args.descriptor_weight,
                                 validate_every=args.validate_every, max_minutes=args.max_minutes)
    paths, val_paths = [Path(p) for p in args.images], [Path(p) for p in args.val_images]
    examples, val_examples = [], []
    for k, (path, target) in enumerate([(p, examples) for p in paths] + [(p, val_examples) for p in val_paths]):
        image = read_training_photograph(path, args.channel, "keypoint network")
        array = image.data[0].float().numpy()
        array = (array - array.min()) / max(float(array.max() - array.min()), 1e-6)
        target.append(keypoint_example(array, args.working_size, np.random.default_rng([args.seed, k]), config))
    torch.manual_seed(args.seed)
    net = KeypointNet()
    start = time.perf_counter()
    figures = train_keypoint_net(net, examples, val_examples, config,
                                 progress=lambda h: print(" ".join(f"{k} {v}" for k, v in h.items()),
                                                          file=sys.stderr, flush=True))
    out = Path(args.out)
    card = {
        "name": args.name or out.name,
        "description": args.description,
        "input": {"dim": 2, "channel": args.channel, "working_size": args.working_size,
                  "image": "the CLAHE-enhanced working image (keypoint stage features: enhanced)"},
        "training": {
            "command": "deepreg " + shlex.join(getattr(args, "argv", sys.argv[1:])),
            "labels": f"self-supervised: homographic adaptation of SIFT keypoints ({config.adaptation_warps} random "
                      f"homographies per image, kept when found again in {config.adaptation_share:.0%} of them); no "
                      "manual annotation",
            "pairs": f"synthetic: {config.size} px windows of the enhanced images through random homographies "
                     f"(rotation <= {config.max_rotation_deg:g} deg, scale 1 +- {config.max_scale:g}, shift <= "
                     f"{config.max_shift:g} half-widths), gain, gamma, noise",
            "loss": f"detector cross-entropy (65 classes per 8x8 cell) + {config.descriptor_weight:g} x dual-softmax "
                    "cross-entropy of the cell descriptors at the true correspondences",
            "images": [{"file": p.name, "sha256_16": file_sha256(p)[:16], "pseudo_keypoints": len(e.points)}
                       for p, e in zip(paths, examples)],
            "validation": [p.name for p in val_paths],
            "config": config.to_dict(), **figures, "time_s": round(time.perf_counter() - start, 1),
            "torch": torch.__version__},
        "licence": args.licence,
    }
    save_model(net, out, card)
    v0, v1 = figures["initial_validation"], figures["final_validation"]
    print(f"wrote {out} (validation: corner error {v0['corner_error_px']:.2f} -> {v1['corner_error_px']:.2f} px, "
          f"correct matches {v0['correct_matches']:.3f} -> {v1['correct_matches']:.3f})")
    return 0
