"""megatron-core on a machine without CUDA: the adaptations, in one place, active only there.

megatron-core is written for GPUs. On CPU (gloo) its layers, schedules, DDP and checkpointing run
correctly once a few CUDA-only call sites are redirected (measured against single-process
references; see the tests). This module owns all of those redirections:

* devices: `torch.cuda.current_device()` answers the CPU device, and a TorchFunctionMode maps every `device=`
  that names CUDA (``"cuda"``, ``"cuda:N"``, an int, a cuda `torch.device`) to the CPU, and makes
  `Tensor.cuda()` a no-op.
* streams/events/synchronize: stand-ins with the methods megatron calls (grad buffers, timers).
* RNG: megatron's "CUDA" RNG tracker (dropout, recompute replay, init under TP) is replaced by
  one that forks and restores the CPU generator; megatron's private get/set-state helpers follow.
* a tripwire: every other path into CUDA (`torch.cuda._lazy_init` / `_lazy_call`, which each CUDA
  runtime entry point goes through) raises `UncoveredCudaCall` naming the caller, so megatron
  reaching a CUDA-only site this module does not cover fails loudly instead of silently queueing
  (`torch.cuda.manual_seed` without a GPU would otherwise be a no-op) or failing somewhere deep.

`activate()` is a no-op when CUDA is available; the GPU path never sees any of this.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_ACTIVE = False
_MODE: TorchFunctionMode | None = None


class UncoveredCudaCall(RuntimeError):
    """megatron (or megaindex) reached a CUDA-only call site the CPU backend does not redirect."""


def is_active() -> bool:
    return _ACTIVE


def _caller() -> str:
    """The innermost stack frame outside torch and this module: where the CUDA call came from."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        f = frame.filename
        if "/torch/" not in f and not f.endswith("cpu_backend.py"):
            return f"{f}:{frame.lineno} ({frame.name}): {frame.line}"
    return "<unknown>"


def _tripwire(name: str):
    def _raise(*args: Any, **kwargs: Any):
        raise UncoveredCudaCall(
            f"CUDA call ({name}) reached on a machine without CUDA at {_caller()}. "
            f"megaindex.cpu_backend does not redirect this call site; add it there "
            f"(and a test) or avoid the path on CPU."
        )

    return _raise


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True  # a bare int is a CUDA ordinal for torch
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


class _CudaToCpu(TorchFunctionMode):
    """Maps device arguments that name CUDA to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dev = kwargs.get("device")
        if dev is not None and _is_cuda_device(dev):
            kwargs = {**kwargs, "device": "cpu"}
        if kwargs.get("pin_memory"):  # pinning needs the CUDA driver; host memory is all there is
            kwargs = {**kwargs, "pin_memory": False}
        if func is torch.Tensor.cuda or func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # megatron's optimizers accept only 'torch.cuda.*Tensor' type names
            name = func(*args)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _Stream:
    """Stand-in for torch.cuda.Stream: CPU work is synchronous, so every method is a no-op."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> "_Event":
        return event or _Event()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _Event:
    """Stand-in for torch.cuda.Event that measures wall time (timers call elapsed_time)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._t: float | None = None

    def record(self, stream: Any = None) -> None:
        import time

        self._t = time.perf_counter()

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: "_Event") -> float:
        return 1000.0 * ((end._t or 0.0) - (self._t or 0.0))


def _install_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """megatron's RNG tracker semantics on the CPU generator (named states, fork/restore)."""

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def manual_seed(seed: int, *, tp_rank: int, expert_rank_offset: int) -> None:
    """CPU twin of megatron's `model_parallel_cuda_manual_seed` (same named states and offsets;
    distributed.seed_everything passes this rank's TP rank and 100 x EP rank + expert-TP rank)."""
    from megatron.core.tensor_parallel import random as mrandom

    tracker = mrandom.get_cuda_rng_tracker()
    tracker.reset()
    torch.manual_seed(seed)
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(
        mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME,
        seed + 1024 + expert_rank_offset,
    )


def _install_tripwires() -> None:
    """Make every remaining path into the CUDA runtime raise, wherever it was imported by name."""
    import torch.cuda as tc

    originals = {"_lazy_init": tc._lazy_init, "_lazy_call": tc._lazy_call}
    for modname, mod in list(sys.modules.items()):
        if mod is None or not (modname.startswith("torch.cuda") or modname.startswith("megatron")):
            continue
        for attr, orig in originals.items():
            if getattr(mod, attr, None) is orig:
                setattr(mod, attr, _tripwire(f"torch.cuda.{attr}"))


def activate() -> bool:
    """Install the CPU adaptations once per process; returns True when they are active."""
    global _ACTIVE, _MODE
    if _ACTIVE:
        return True
    if torch.cuda.is_available():
        return False
    import megatron.core.tensor_parallel  # noqa: F401  (load megatron before patching its names)
    import torch.cuda as tc

    # A device object, not the ordinal 0: autograd runs backward without torch-function modes,
    # so `device=torch.cuda.current_device()` inside a backward must already name the CPU.
    tc.current_device = lambda: torch.device("cpu")
    tc.set_device = lambda device: None
    tc.synchronize = lambda device=None: None
    tc.empty_cache = lambda: None
    # torch.manual_seed seeds every CUDA device too; with no device the CPU seed is all there is.
    tc.manual_seed_all = lambda seed: None
    tc.current_stream = lambda device=None: _Stream()
    tc.default_stream = lambda device=None: _Stream()
    tc.Stream = _Stream
    tc.Event = _Event
    tc.stream = lambda s=None: contextlib.nullcontext()
    tc.memory_allocated = lambda device=None: 0
    tc.max_memory_allocated = lambda device=None: 0
    tc.reset_peak_memory_stats = lambda device=None: None
    _install_rng()
    _install_tripwires()
    _MODE = _CudaToCpu()
    _MODE.__enter__()
    _ACTIVE = True
    return True
