"""Process groups: the only module that initialises torch.distributed and megatron's parallel_state.

`init_distributed(cfg)` reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT; one process without MASTER_PORT gets a free port), picks NCCL on GPU and gloo on CPU (activating megaindex.cpu_backend there), builds
megatron's TP/PP/CP/DP groups for the config's layout and seeds the RNGs the way megatron expects
(different per TP rank for model-parallel regions, same across DP).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megaindex import cpu_backend
from megaindex.config import Config


@dataclass(frozen=True)
class ParallelLayout:
    """This rank's place in the TP x PP x CP x DP grid, read once from megatron's parallel_state
    after the groups exist and passed to the code that needs it (data, loss, checkpointing)."""

    rank: int
    world_size: int
    tp: int
    pp: int
    cp: int
    dp: int
    vpp: int | None
    tp_rank: int = 0
    pp_rank: int = 0
    cp_rank: int = 0
    dp_rank: int = 0
    tp_src_rank: int = 0  # global rank of TP rank 0 of this rank's TP group
    tp_group: Any = field(default=None, compare=False, repr=False)
    cp_group: Any = field(default=None, compare=False, repr=False)

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    def holds_first_layer(self, vp_stage: int | None) -> bool:
        """Whether the model chunk of virtual stage `vp_stage` on this rank holds the embedding."""
        return self.is_first_stage and (not self.vpp or vp_stage == 0)

    def holds_last_layer(self, vp_stage: int | None) -> bool:
        """Whether the model chunk of virtual stage `vp_stage` on this rank holds the output layer."""
        return self.is_last_stage and (not self.vpp or vp_stage == self.vpp - 1)


def current_layout() -> ParallelLayout:
    """The layout of the groups megatron's parallel_state holds now (init_distributed returns it)."""
    return ParallelLayout(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        cp=ps.get_context_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(),
        vpp=ps.get_virtual_pipeline_model_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        cp_rank=ps.get_context_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        tp_src_rank=ps.get_tensor_model_parallel_src_rank(),
        tp_group=ps.get_tensor_model_parallel_group(),
        cp_group=ps.get_context_parallel_group(),
    )


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


ALLOC_CONF_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


def use_expandable_segments() -> None:
    """Let torch's CUDA allocator grow segments in place (unless the user configured it): long
    packed sequences allocate many large, differently sized buffers, and with fixed segments the
    reserved memory ran 10-29% over the allocated peak at 32K (benchmarks/RESULTS_train.md).
    Takes effect when set before the first CUDA allocation, as here."""
    if not any(os.environ.get(v) for v in ALLOC_CONF_VARS):
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


def init_distributed(cfg: Config, *, timeout_minutes: int = 30) -> ParallelLayout:
    """Initialise torch.distributed (if needed) and megatron's parallel groups for `cfg`."""
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        cpu_backend.activate()
    else:
        use_expandable_segments()
    if not dist.is_initialized():
        rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        if on_gpu:
            torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
        timeout = datetime.timedelta(minutes=timeout_minutes)
        backend = "nccl" if on_gpu else "gloo"
        if world == 1 and "MASTER_PORT" not in os.environ:
            # One process outside torchrun: a store on a port the OS picks, so that two runs on
            # one machine never collide on a fixed port.
            store = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), 0, 1, is_master=True, timeout=timeout)
            dist.init_process_group(backend=backend, store=store, rank=0, world_size=1, timeout=timeout)
        else:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout)
    world = dist.get_world_size()
    cfg.validate(world)
    p = cfg.parallel
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size,
        context_parallel_size=p.context_parallel_size,
        hierarchical_context_parallel_sizes=p.hierarchical_context_parallel_sizes,
    )
    seed_everything(cfg.train.seed)
    return current_layout()


def seed_everything(seed: int) -> None:
    """Seed torch and megatron's model-parallel RNG tracker (offset per PP stage like Megatron-LM)."""
    seed = seed + 100 * ps.get_pipeline_model_parallel_rank()
    torch.manual_seed(seed)
    if cpu_backend.is_active():
        expert = 100 * ps.get_expert_model_parallel_rank() + ps.get_expert_tensor_parallel_rank()
        cpu_backend.manual_seed(seed, tp_rank=ps.get_tensor_model_parallel_rank(), expert_rank_offset=expert)
    else:
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def init_single_process(seed: int = 1234) -> None:
    """A one-rank gloo group (in-process store) for tools that build a model outside torchrun,
    seeded like init_distributed (TE and megatron draw initial weights from the RNG tracker)."""
    if not torch.cuda.is_available():
        cpu_backend.activate()
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel()
        seed_everything(seed)
