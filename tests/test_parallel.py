"""TP=2 (sequence parallel) and CP=2 (reference attention, packed THD and unpacked) equal the
single-device run in loss and every gradient: two gloo processes (tests/mp/model_parity.py)."""

from __future__ import annotations

import pytest

from conftest import REPO, read_json, torchrun

FP32_TOL = 1e-5  # fp32; reductions in a different order across ranks give ~1e-7 here


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    work = tmp_path_factory.mktemp("parity")
    torchrun(REPO / "tests" / "mp" / "model_parity.py", 2, str(work / "out.json"), str(work))
    return read_json(work / "out.json")


@pytest.mark.parametrize("case", ["tp2_sp_thd", "cp2_thd", "cp2_sbhd"])
def test_parallel_layout_equals_single_device(parity, case):
    r = parity[case]
    assert abs(r["loss"] - r["ref_loss"]) <= FP32_TOL * abs(r["ref_loss"])
    assert r["grad_max_diff"] <= FP32_TOL
    assert parity["grad_scale"] > 1e-2  # gradients are not trivially zero
