"""megaindex.atomic: a replaced file is the old one or the new one, never half of one."""

from __future__ import annotations

import numpy as np
import pytest

from megaindex import atomic


def test_replace_keeps_old_file_on_error_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "latest"
    atomic.write_text(target, "step_00000004\n")
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(target) as tmp:
            tmp.write_text("step_000")  # half written, then the writer dies
            raise RuntimeError("killed")
    assert target.read_text() == "step_00000004\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_temporary_keeps_the_suffix_numpy_needs(tmp_path):
    target = tmp_path / "index.npy"
    with atomic.atomic_file(target, durable=False) as tmp:
        np.save(tmp, np.arange(3))  # np.save appends .npy to names without it
    assert np.load(target).tolist() == [0, 1, 2] and sorted(p.name for p in tmp_path.iterdir()) == ["index.npy"]
