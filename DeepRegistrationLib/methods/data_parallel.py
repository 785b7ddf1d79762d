"""What every trainer shares for data-parallel runs (``deepreg train ... --nproc N`` or torchrun): the process's place
in the group, and the generator of one training example, so that any split of a batch over processes draws the same
examples as one process drawing the whole batch."""

from __future__ import annotations

import torch

__all__ = ["process_group", "example_generator"]


def process_group() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless a torch.distributed process group is running."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def example_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The CPU generator of example ``index`` of step ``step`` of a run seeded with ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + index)
