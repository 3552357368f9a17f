"""The Index model on megatron-core: layer specs, Norm-Head, reference attention, builders."""
