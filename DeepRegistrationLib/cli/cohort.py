"""``deepreg batch`` and ``deepreg template``: cohort work on Dask distributed (:mod:`DeepRegistrationLib.cohort`)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import InputError

__all__ = ["add_cluster_arguments", "add_batch_arguments", "add_template_arguments", "run_batch_command",
           "run_template_command"]


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (Dask distributed)")
    g.add_argument("--scheduler", help="address of a running Dask scheduler (e.g. tcp://host:8786); default: a "
                                       "local cluster that fits this machine")
    g.add_argument("--workers", type=int, help="local workers, each registering one pair at a time (default: one "
                                               "per GPU, else one per core, capped by memory at 3 GB a pair)")
    g.add_argument("--threads-per-worker", type=int, help="torch threads of each pair (default: the cores shared out "
                                                          "among the local workers; with --scheduler, the worker's "
                                                          "setting, which a Dask nanny makes 1)")
    g.add_argument("--memory-limit-gb", type=float, help="memory limit of each local worker (default: its share of "
                                                         "90 %% of the RAM); a worker above it is restarted")
    g.add_argument("--device", default="auto", help="auto (a GPU per worker when present), cpu or cuda")


def _cluster(args: argparse.Namespace):
    from ..cohort.engine import local_cluster_spec

    if args.scheduler:
        if args.workers or args.memory_limit_gb:
            raise InputError("--workers and --memory-limit-gb shape a local cluster; with --scheduler the cluster is "
                             "the one already running (--threads-per-worker still sets each pair's torch threads)")
        return None
    return local_cluster_spec(args.workers, args.threads_per_worker, args.memory_limit_gb)


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pairs", nargs="?", help="CSV table of pairs: columns fixed, moving (required), and optional id, "
                                            "preset, fixed_mask, moving_mask, fixed_labels, moving_labels, "
                                            "fixed_landmarks, moving_landmarks; paths relative to the table")
    p.add_argument("--template", help="all-to-one: register every image of --images onto this fixed image")
    p.add_argument("--images", help="with --template: a folder of images")
    p.add_argument("--out", required=True, help="output folder: manifest.json, pairs/<id>/, summary.csv, report.md")
    p.add_argument("--preset", default="deformable-fast", help="preset of rows without one (default deformable-fast)")
    p.add_argument("--retries", type=int, default=1, help="extra attempts of a pair after an unexpected error "
                                                          "(bad inputs are not retried)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_cluster_arguments(p)


def run_batch_command(args: argparse.Namespace) -> int:
    from ..cohort import all_to_one, read_pairs, run_batch

    if bool(args.pairs) == bool(args.template):
        raise InputError("give a pairs table, or --template with --images (not both)")
    if args.template and not args.images:
        raise InputError("--template needs --images (a folder of images)")
    pairs = read_pairs(args.pairs, args.preset) if args.pairs else all_to_one(args.template, args.images, args.preset)
    try:
        summary = run_batch(pairs, args.out, scheduler=args.scheduler, cluster=_cluster(args), device=args.device,
                            retries=args.retries, threads=args.threads_per_worker)
    except KeyboardInterrupt:  # the manifest keeps what finished; the same command resumes
        return 130
    if args.json:
        print(json.dumps({"done": summary.done, "failed": summary.failed, "skipped": summary.skipped,
                          "wall_s": summary.wall_s, "manifest": str(summary.manifest), "report": str(summary.report),
                          "failures": summary.failures}))
    return 0 if summary.failed == 0 else 4


def add_template_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, nargs="+", help="image files, or one folder of images")
    p.add_argument("--out", required=True, help="template to write (.nii.gz, .nii, .nrrd or .mha)")
    p.add_argument("--iterations", type=int, default=3, help="rounds of register-average-unbias (default 3)")
    p.add_argument("--preset", default="deformable-fast", help="registration preset of every round")
    p.add_argument("--work", help="folder of the iterations (default OUT_NAME.work beside --out); a rerun resumes")
    add_cluster_arguments(p)


def run_template_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cohort import all_to_one, build_template

    images = args.images
    if len(images) == 1 and Path(images[0]).is_dir():  # a folder: its image files, as all-to-one lists them
        images = [spec.moving for spec in all_to_one(Path(args.out).resolve(), images[0])]
    try:
        result = build_template(images, args.out, iterations=args.iterations, preset=args.preset,
                                work_dir=args.work, scheduler=args.scheduler, cluster=_cluster(args),
                                device=args.device, threads=args.threads_per_worker)
    except KeyboardInterrupt:  # finished iterations (and pairs) are kept; the same command resumes
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(f"template written to {result['template']} (iterations in {result['work']})")
    return 0
