"""Data mixtures: which prefixes, with which weights, and the interleaving of their samples.

Owns parsing a blend ("WEIGHT PATH" or "PATH" entries, inline in `data.data_path` or one per line in
a blend file for hundreds of shards), the per-prefix sample budgets, and `BlendedSamples`, the
deterministic interleaving of per-prefix datasets.

Why not megatron-core's BlendedMegatronDatasetBuilder for several prefixes: with weights and a
`split` it asserts on the test split (`size_is_none => weights_are_none`), and without weights it
builds one epoch of each prefix and caps the blend there (asked for 10,000 samples it returned
912 on the fixture), so a run dies at its end. Here every prefix is its own epoch-aware dataset
sized for its share (as many epochs as that takes), and the blend uses megatron's C++ greedy
`build_blending_indices` (sample k goes to the prefix furthest behind its share), so the realised
share of prefix i after any k samples is within 1/k of w_i and the order depends on nothing but
the weights: same config, same samples, and a resumed run reads on from `consumed_samples`.

Unweighted blends weigh each prefix by its tokens, i.e. they read like one concatenated corpus.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from megaindex.config import ConfigError


def parse_blend(entries: list[str], what: str) -> tuple[list[str], list[float] | None]:
    """["0.3 a", "0.7 b"] -> (["a", "b"], [0.3, 0.7]); ["a", "b"] -> (["a", "b"], None).

    An entry "@FILE" reads FILE: one "WEIGHT PATH" or "PATH" per line, `#` comments, paths relative
    to the file's directory. Mixed inline entries and files are concatenated.
    """
    paths: list[str] = []
    weights: list[float] = []
    for e in entries:
        text = str(e).strip()
        if text.startswith("@"):
            fpaths, fweights = read_blend_file(text[1:])
            paths += fpaths
            weights += fweights or []
            if fweights is None and weights:
                raise ConfigError(f"{what}: blend file {text[1:]} has no weights but other entries do; weigh all or none.")
            continue
        parts = text.split()
        if len(parts) == 2:
            weights.append(_weight(parts[0], f"{what} entry {e!r}"))
            paths.append(parts[1])
        elif len(parts) == 1:
            paths.append(parts[0])
        else:
            raise ConfigError(f"{what} entry {e!r}: expected 'WEIGHT PATH', 'PATH' or '@BLEND_FILE'.")
    if weights and len(weights) != len(paths):
        raise ConfigError(f"{what}: give a weight for every entry or for none.")
    return paths, (weights or None)


def _weight(text: str, where: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise ConfigError(f"{where}: weight {text!r} is not a number; expected 'WEIGHT PATH' or 'PATH'.") from None
    if not math.isfinite(w) or w <= 0:
        raise ConfigError(f"{where}: weight {text!r} must be a positive number.")
    return w


def read_blend_file(path: str | Path) -> tuple[list[str], list[float] | None]:
    """A blend file: "WEIGHT PATH" or "PATH" lines (all weighted or none), `#` comments, blank lines."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"blend file {path} does not exist.")
    paths, weights = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise ConfigError(f"{path}:{lineno}: expected 'WEIGHT PATH' or 'PATH', got {line!r}.")
        if len(parts) == 2:
            weights.append(_weight(parts[0], f"{path}:{lineno}"))
        p = Path(parts[-1])
        paths.append(str(p if p.is_absolute() else path.parent / p))
        if weights and len(weights) != len(paths):
            raise ConfigError(f"{path}:{lineno}: give a weight on every line or on none.")
    if not paths:
        raise ConfigError(f"blend file {path} lists no datasets.")
    return paths, (weights or None)


def normalise(weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def share_sizes(weights: np.ndarray, total: int) -> list[int]:
    """Samples to build per prefix so that the greedy blend of `total` never reads past one.

    The greedy rule keeps every prefix within one sample of w_i * k at every k, so ceil + 1 is enough.
    """
    return [int(math.ceil(w * total)) + 1 for w in weights]


class BlendedSamples(torch.utils.data.Dataset):
    """`size` samples interleaved from `datasets` by `weights` (megatron's greedy blending rule).

    `exhaustive=True` instead takes every sample of every dataset exactly once, interleaved in
    proportion to their lengths (used when data.num_epochs fixes the data, not train_iters).
    """

    def __init__(self, datasets: list, weights: list[float] | np.ndarray | None, size: int | None, *,
                 exhaustive: bool = False, name: str = "train"):
        from megatron.core.datasets import helpers

        self.datasets, self.name = list(datasets), name
        if len(self.datasets) > np.iinfo(np.int16).max:
            raise ConfigError(f"{len(self.datasets)} datasets in one blend; at most {np.iinfo(np.int16).max}.")
        if exhaustive:
            sizes = np.array([len(d) for d in self.datasets], dtype=np.int64)
            self.weights = sizes / max(sizes.sum(), 1)
            size = int(sizes.sum())
            self.dataset_index = np.zeros(size, dtype=np.int16)
            self.sample_index = np.zeros(size, dtype=np.int64)
            helpers.build_exhaustive_blending_indices(self.dataset_index, self.sample_index, sizes, len(self.datasets))
        else:
            self.weights = normalise(weights)
            self.dataset_index = np.zeros(size, dtype=np.int16)
            self.sample_index = np.zeros(size, dtype=np.int64)
            helpers.build_blending_indices(self.dataset_index, self.sample_index, self.weights,
                                           len(self.datasets), size, False)
        counts = np.bincount(self.dataset_index, minlength=len(self.datasets))
        for i, (n, d) in enumerate(zip(counts, self.datasets)):
            if n > len(d):  # share_sizes makes this impossible; a guard, not a path
                raise RuntimeError(f"{name} blend reads {n} samples of dataset {i}, which holds {len(d)}")

    def __len__(self) -> int:
        return len(self.dataset_index)

    def source(self, idx: int) -> tuple[int, int]:
        """(dataset number in the blend, sample index in it) of blended sample `idx`."""
        return int(self.dataset_index[idx]), int(self.sample_index[idx])

    def __getitem__(self, idx: int):
        j, i = self.source(idx)
        return self.datasets[j][i]
