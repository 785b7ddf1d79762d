"""``deepreg train correlation``: train the retinal correlation network (:mod:`..methods.retina.correlation_training`)
on synthetic pairs of real vessel maps and write a model folder (``weights.pt`` + ``model.json``)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..io.checksums import file_sha256
from .train_vessels import add_training_loop_arguments, add_training_run_arguments, add_vessel_map_arguments

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_vessel_map_arguments(p, 512, "pixels along each image's longer side")
    p.add_argument("--size", type=int, default=128, help="the network's input size (multiple of 8)")
    add_training_run_arguments(p)
    p.add_argument("--registration-weight", type=float, default=1.0,
                   help="weight of the vessel-map registration loss (Dice + cross-entropy + reverse hinge + Chamfer) "
                        "of the regressed homography, beside the matching loss; 0: matching only")
    add_training_loop_arguments(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..io.models import save_model
    from ..methods.retina.correlation_net import CorrelationNet
    from ..methods.retina.correlation_training import CorrelationTrainConfig, train_correlation_net
    from .train_vessels import training_vessel_maps

    if args.threads:
        torch.set_num_threads(args.threads)
    paths, polarity, maps, val_maps = training_vessel_maps(args, "correlation network", [args.working_size])
    val_paths = [Path(p) for p in args.val_images]
    torch.manual_seed(args.seed)
    net = CorrelationNet(size=args.size)
    config = CorrelationTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                                    registration_weight=args.registration_weight,
                                    validate_every=args.validate_every, max_minutes=args.max_minutes)
    start = time.perf_counter()
    figures = train_correlation_net(net, maps, val_maps, config,
                                    progress=lambda h: print(" ".join(f"{k} {v}" for k, v in h.items()),
                                                             file=sys.stderr, flush=True))
    out = Path(args.out)
    card = {
        "name": args.name or out.name,
        "description": args.description,
        "input": {"dim": 2, "channel": args.channel, "working_size": args.working_size, "size": args.size,
                  "vessel_model": args.vessel_model,
                  "square": "each image's working image padded to a square (bottom, right) and resized to size"},
        "training": {
            "command": "deepreg " + shlex.join(getattr(args, "argv", sys.argv[1:])),
            "pairs": f"synthetic: a {config.window[0]:g}-{config.window[1]:g} window of a vessel map and the same map "
                     f"through a random homography (rotation <= {config.max_rotation_deg:g} deg, scale "
                     f"1 +- {config.max_scale:g}, shift <= {config.max_shift:g} half-widths, perspective <= 0.05), "
                     "vessel dropout, gain, noise",
            "loss": "dual-softmax cross-entropy at the true matches of the vessel cells"
                    + (f" + {config.registration_weight:g} x (Dice + cross-entropy + reverse hinge + Chamfer) of the "
                       "fixed map and the moving map warped by the regressed homography"
                       if config.registration_weight > 0 else ""),
            "images": [{"file": p.name, "polarity": q, "sha256_16": file_sha256(p)[:16]}
                       for p, q in zip(paths, polarity)],
            "validation": [p.name for p in val_paths],
            "config": config.to_dict(), **figures, "time_s": round(time.perf_counter() - start, 1),
            "torch": torch.__version__},
        "licence": args.licence,
    }
    save_model(net, out, card)
    v0, v1 = figures["initial_validation"], figures["final_validation"]
    print(f"wrote {out} (validation: match accuracy {v0['match_accuracy']:.3f} -> {v1['match_accuracy']:.3f}, "
          f"corner error {v0['corner_error_px']:.2f} -> {v1['corner_error_px']:.2f} network pixels)")
    return 0
