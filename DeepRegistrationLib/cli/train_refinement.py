"""``deepreg train refinement``: train the retinal dense refinement network (:mod:`..methods.retina.flow_training`)
on synthetic residual displacements of real vessel maps and write a model folder (``weights.pt`` + ``model.json``)."""

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
    add_vessel_map_arguments(p, 768, "pixels along each image's longer side (the stage's finest working size)")
    p.add_argument("--coarse-sizes", type=int, nargs="*", default=[],
                   help="more working sizes whose maps join the training pairs (for the stage's coarse levels)")
    p.add_argument("--size", type=int, default=192, help="training window (pixels, a multiple of 16)")
    add_training_run_arguments(p)
    p.add_argument("--max-corner-px", type=float, default=8.0,
                   help="largest corner shift of the random residual homography (pixels)")
    p.add_argument("--max-elastic-px", type=float, default=4.0, help="largest smooth random displacement (pixels)")
    p.add_argument("--smoothness", type=float, default=1.0, help="weight of the flow's diffusion regulariser")
    p.add_argument("--supervised-weight", type=float, default=0.1,
                   help="weight of the end-point error to the synthetic truth (pixels) beside the vessel-map loss; "
                        "0: the vessel-map loss alone")
    add_training_loop_arguments(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..io.models import save_model
    from ..methods.retina.flow_net import FlowRefinementNet
    from ..methods.retina.flow_training import FlowTrainConfig, train_flow_net
    from .train_vessels import training_vessel_maps

    if args.threads:
        torch.set_num_threads(args.threads)
    paths, polarity, maps, val_maps = training_vessel_maps(args, "refinement network",
                                                           [args.working_size, *args.coarse_sizes])
    val_paths = [Path(p) for p in args.val_images]
    torch.manual_seed(args.seed)
    net = FlowRefinementNet()
    config = FlowTrainConfig(steps=args.steps, batch=args.batch, size=args.size, lr=args.lr, seed=args.seed,
                             max_corner_px=args.max_corner_px, max_elastic_px=args.max_elastic_px,
                             smoothness=args.smoothness, supervised_weight=args.supervised_weight,
                             validate_every=args.validate_every, max_minutes=args.max_minutes)
    start = time.perf_counter()
    figures = train_flow_net(net, maps, val_maps, config,
                             progress=lambda h: print(" ".join(f"{k} {v}" for k, v in h.items()), file=sys.stderr,
                                                      flush=True))
    out = Path(args.out)
    card = {
        "name": args.name or out.name,
        "description": args.description,
        "input": {"dim": 2, "channel": args.channel, "working_size": args.working_size,
                  "trained_sizes": sorted({args.working_size, *args.coarse_sizes}),
                  "vessel_model": args.vessel_model,
                  "pair": "the fixed vessel map and the moving one resampled onto it through the previous transform, "
                          "both at the working size; output: the residual flow in fixed working pixels"},
        "training": {
            "command": "deepreg " + shlex.join(getattr(args, "argv", sys.argv[1:])),
            "pairs": f"synthetic: a {config.size} px window of a vessel map and the map read through a random "
                     f"residual displacement (a homography moving the corners by <= {config.max_corner_px:g} px plus "
                     f"a smooth field of <= {config.max_elastic_px:g} px), vessel dropout, blur, gain, noise",
            "loss": "Dice + cross-entropy + reverse hinge + Chamfer of the fixed map and the moving map warped by the "
                    f"flow, + {config.smoothness:g} x diffusion of the flow"
                    + (f" + {config.supervised_weight:g} x end-point error to the synthetic truth (pixels)"
                       if config.supervised_weight > 0 else ""),
            "images": [{"file": p.name, "polarity": q, "sha256_16": file_sha256(p)[:16]}
                       for p, q in zip(paths, polarity)],
            "validation": [p.name for p in val_paths],
            "config": config.to_dict(), **figures, "time_s": round(time.perf_counter() - start, 1),
            "torch": torch.__version__},
        "licence": args.licence,
    }
    save_model(net, out, card)
    v0, v1 = figures["initial_validation"], figures["final_validation"]
    print(f"wrote {out} (validation: end-point error on vessels {v0['epe_vessels_px']:.2f} -> "
          f"{v1['epe_vessels_px']:.2f} px; no flow {v1['epe_no_flow_px']:.2f} px)")
    return 0
