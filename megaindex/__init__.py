"""megaindex: the Index-1.9B-32K long-context recipe (continued pretraining at 32K with document
packing, then long SFT) as a thin, typed layer on megatron-core and Transformer Engine."""

__version__ = "0.1.0"
