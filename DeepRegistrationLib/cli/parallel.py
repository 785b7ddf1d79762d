"""Data-parallel training runs for every ``deepreg train`` command: in this process, in ``--nproc`` processes
spawned here, or as one process of a group that ``torchrun`` started (``WORLD_SIZE`` > 1 in the environment).

Each process joins a ``torch.distributed`` group (NCCL with one GPU per process, else gloo) and calls the same
training function with its rank; the trainers split every batch by rank and keep the results equal to one
process's with the whole batch (``methods/*/training.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from ..errors import InputError

__all__ = ["run_data_parallel", "add_parallel_arguments"]

#: ``train(args, rank, device_index)``: one process's run; ``device_index`` is its GPU (None on CPUs).
Trainer = Callable[[argparse.Namespace, int, "int | None"], int]


def add_parallel_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (PyTorch DistributedDataParallel: one per GPU with "
                        "NCCL, else gloo on the CPU); --batch must be a multiple of it. Under torchrun, leave it at 1: "
                        "the process group torchrun starts is used")


def run_data_parallel(train: Trainer, args: argparse.Namespace, cuda: bool) -> int:
    """Run ``train`` as ``args.nproc`` processes (or under torchrun's group, or alone); returns process 0's status."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.nproc < 1:
        raise InputError("--nproc must be at least 1")
    if args.batch < 1 or args.batch % max(args.nproc, world):
        raise InputError(f"--batch ({args.batch}) must be a positive multiple of the number of processes")
    if world > 1:  # under torchrun: join its process group
        return _run_in_group(int(os.environ["RANK"]), world, train, args, cuda, None)
    if args.nproc == 1:
        return train(args, 0, None)
    if cuda and torch.cuda.device_count() < args.nproc:
        raise InputError(f"{args.nproc} processes on CUDA need {args.nproc} GPUs; this machine has "
                         f"{torch.cuda.device_count()}")
    import socket

    with socket.socket() as probe:  # a free port for the group's rendezvous on this machine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        torch.multiprocessing.spawn(_spawned, args=(args.nproc, train, args, cuda, port), nprocs=args.nproc,
                                    join=True)
    except torch.multiprocessing.ProcessRaisedException as err:  # the process's own error, without the traceback
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        raise InputError(f"a training process failed: {lines[-1] if lines else err}") from None
    return 0


def _spawned(rank: int, world: int, train: Trainer, args: argparse.Namespace, cuda: bool, port: int) -> None:
    """A spawned process of the group. After a clean run it leaves with ``os._exit(0)``, skipping the interpreter's
    teardown: there a gloo process occasionally aborted ("terminate called without an active exception",
    SIGABRT) after the group was destroyed and the model written, which failed a finished training."""
    _run_in_group(rank, world, train, args, cuda, port)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run_in_group(rank: int, world: int, train: Trainer, args: argparse.Namespace, cuda: bool,
                  port: int | None) -> int:
    """One process of a data-parallel group: join it (NCCL on a GPU per process, else gloo), train, leave it."""
    import torch.distributed as dist

    if port is not None:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        status = train(args, rank, int(os.environ.get("LOCAL_RANK", rank)) if cuda else None)
        dist.barrier()  # no process leaves while another (process 0 writing the model) still holds the group
        return status
    finally:
        dist.destroy_process_group()
