"""How many steps a run takes: train_iters, or derived from a token budget or from the epochs.

Owns the run-length rule (in this order): `train.train_tokens` set -> ceil(train_tokens /
global_batch_tokens) steps; `train.train_iters` null -> every full global batch that
`data.num_epochs` epochs hold; else `train.train_iters`. The LR schedule is built from the result, so
a token budget or an epoch count sets the schedule too. Also owns the check that ends a run cleanly
when its data runs out (`steps_in_data`).
"""

from __future__ import annotations

import dataclasses

from megaindex.config import Config, ConfigError


def resolve_before_data(cfg: Config) -> Config:
    """Apply train.train_tokens; check that a null train_iters has epochs to derive it from."""
    t, d = cfg.train, cfg.data
    if t.train_tokens is not None:
        if t.train_tokens <= 0:
            raise ConfigError(f"train.train_tokens is {t.train_tokens}; it must be positive.")
        steps = -(-t.train_tokens // d.global_batch_tokens)
        return dataclasses.replace(cfg, train=dataclasses.replace(t, train_iters=steps))
    if t.train_iters is None and d.num_epochs is None:
        raise ConfigError("train.train_iters is null but neither train.train_tokens nor data.num_epochs is set: "
                          "give one of the three to set the run length.")
    return cfg


def steps_in_data(dataset, cfg: Config) -> int:
    """Full global batches the (train) dataset holds."""
    return len(dataset) // cfg.data.global_batch_size


def resolve_after_data(cfg: Config, dataset) -> tuple[Config, str | None]:
    """Fill a null train_iters from the dataset built for data.num_epochs; (config, note for the log)."""
    if cfg.train.train_iters is not None:
        return cfg, None
    steps = steps_in_data(dataset, cfg)
    if steps == 0:
        raise ConfigError(f"data.num_epochs={cfg.data.num_epochs} holds {len(dataset)} samples, less than one global "
                          f"batch of {cfg.data.global_batch_size}; lower data.global_batch_tokens or add data.")
    note = (f"run length from the data: data.num_epochs={cfg.data.num_epochs} holds {len(dataset)} samples = "
            f"{steps} steps of {cfg.data.global_batch_size} (train.train_iters={steps})")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, train_iters=steps)), note
