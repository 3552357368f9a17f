"""megaindex: the Index-1.9B-32K long-context recipe (continued pretraining at 32K with document
packing, then long SFT) as a thin, typed layer on megatron-core and Transformer Engine."""

import atexit
import gc

__version__ = "0.1.0"


def _freeze_heap() -> None:
    """At exit, before the interpreter's teardown: that teardown garbage-collects torch's and
    megatron's ~1M objects several times over (~1.2 s per process on CPU, 2026-11-28); frozen
    (gc.freeze), those passes skip them. Every process that imports megaindex (the CLI, tools/,
    benchmarks/, torchrun workers) exits that much sooner. Refcounted objects are still released
    and files flushed; only objects in reference cycles go unfinalised, which Python does not
    promise to finalise at exit anyway."""
    gc.freeze()


atexit.register(_freeze_heap)
