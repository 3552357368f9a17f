"""This process's rank, with or without a process group.

Owns the one answer to "which rank am I / am I the one that writes": torch.distributed's rank once
a group exists, else torchrun's RANK (before init or after the group is destroyed), else 0 (a
plain single process). Light on purpose (no megatron import), so checkpoint I/O, data caches and
the command line can ask it; the parallel layout itself is distributed.py's.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def rank() -> int:
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_rank0() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()
