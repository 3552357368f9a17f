"""benchmarks/gpu_tests.sh on CPU, where every gpu test skips: the script collects the gpu-marked
tests and finds each in one of its groups (a new gpu test must be given a group and a cost estimate
there), runs a group as one verbose pytest under a time limit, reports the skips, and writes the log,
junit XML and summary to $OUT; a wrong group name is one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU node the group would really run (use the script there)")
def test_gpu_tests_script_lists_every_gpu_test_and_reports_skips(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "OUT": str(tmp_path / "out")}
    bad = subprocess.run(["bash", "benchmarks/gpu_tests.sh"], cwd=REPO, env={**env, "ONLY": "te_kernels bogus"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("ONLY: unknown group 'bogus'; the groups are: te_kernels model")
    assert bad.stderr.count("\n") == 1

    r = subprocess.run(["bash", "benchmarks/gpu_tests.sh"], cwd=REPO, env={**env, "ONLY": "te_kernels"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary in r.stdout
    # every gpu-marked test of the suite is in a group (30+ today), none listed that does not exist
    assert re.search(r"collect: (\d+) gpu tests collected; every one is in a group\n", summary), summary
    assert int(re.search(r"(\d+) gpu tests", summary)[1]) >= 30 and "stale" not in summary
    assert re.search(r"  te_kernels: ok in \d+ s \(3 skipped in [\d.]+s\)", summary), summary
    assert "skipped:\n  3 x needs a CUDA GPU (run on the GPU node)\n" in summary and "not run" not in summary
    log = (tmp_path / "out" / "gpu_tests.log").read_text()
    assert "tests/test_data_batch.py::test_cp_slices_match_transformer_engine SKIPPED" in log
    assert "slowest durations" in log and "test_tp_broadcast" not in log  # -m gpu: the file's CPU tests stay out
    suites = ET.parse(tmp_path / "out" / "junit.xml").getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == ["te_kernels"]
    cases = suites[0].findall("testcase")
    assert [c.get("name") for c in cases] == ["test_cp_slices_match_transformer_engine",
                                              "test_micro_batch_reaches_the_gpu_without_waiting_for_its_queue",
                                              "test_doctor_sees_transformer_engine"]
    assert all(c.find("skipped") is not None for c in cases)


def test_gpu_tests_script_fails_when_collection_fails(tmp_path):
    """A gpu test file that does not import is in no group and runs in none: its collection error must fail
    the script and be in the summary (it was only in the log, and the script exited 0 or 4). The collection
    error is simulated by a PYTHON that answers `pytest --collect-only` with pytest's collection-error exit
    status 2 after the real collection; no group runs (BUDGET_S=0), so this costs one collection."""
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case " $* " in *" --collect-only "*)
  {sys.executable} "$@"; echo "ERROR tests/test_new_gpu.py - ModuleNotFoundError: No module named 'x'"; exit 2 ;;
esac
exec {sys.executable} "$@"
""")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "PYTHONPATH": str(REPO), "OUT": str(tmp_path / "out"), "BUDGET_S": "0",
           "ONLY": "te_kernels"}
    r = subprocess.run(["bash", "benchmarks/gpu_tests.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert r.returncode == 1, (r.returncode, summary)
    assert re.search(r"collect: collection FAILED \(pytest rc=2.*\)", summary), summary
    assert "te_kernels: not run" in summary


def _stand_ins(tmp_path, first: str = "PASSED"):
    """A PATH with a stand-in `python` whose collection lists te_kernels' two tests (anything else runs the real
    interpreter) and a stand-in `timeout` that reports the stop (rc 124) after the first test ended with
    `first` and the second started, writing the limit it was given to tmp_path/limits."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(f"""#!/usr/bin/env bash
case " $* " in *" --collect-only "*)
  echo tests/test_data_batch.py::test_cp_slices_match_transformer_engine
  echo tests/test_gpu_train.py::test_doctor_sees_transformer_engine; exit 0 ;;
esac
exec {sys.executable} "$@"
""")
    counts = "1 passed" if first == "PASSED" else "1 failed"
    (fake / "timeout").write_text(f"""#!/usr/bin/env bash
echo "$5" >> {tmp_path}/limits  # timeout -s INT -k 30 LIMIT ...
echo "tests/test_data_batch.py::test_cp_slices_match_transformer_engine {first}     40.0s"
echo "tests/test_gpu_train.py::test_doctor_sees_transformer_engine "
echo "======================== {counts} in 45.00s ========================"
exit 124
""")
    for f in fake.iterdir():
        f.chmod(0o755)
    return {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": str(fake / "python"), "ONLY": "te_kernels"}


def test_a_group_stopped_by_the_budget_is_left_for_the_next_call(tmp_path):
    """2026-11-28, 2 x H200: layouts_2gpu_tp_pp_dp started with 198 s of the budget left (its estimate,
    180 s, fitted), was stopped there in pp2_vpp2, and the summary's command for the next call named only
    layouts_2gpu_cp, as if pp2_vpp2 and dp2 had run, and failed the run. A group whose limit the budget
    cut and that is stopped there is now left over (in the command, exit 4, a skipped junit case); one
    stopped by its own limit (here LIMIT_S) still fails. Instant: a stand-in `timeout` reports the
    stop (rc 124) after one test passed and one started, and a stand-in collection lists the group's tests."""
    env = _stand_ins(tmp_path)
    running = "running: tests/test_gpu_train.py::test_doctor_sees_transformer_engine; 1 passed in 45.00s"

    cut = subprocess.run(["bash", "benchmarks/gpu_tests.sh"], cwd=REPO, env={**env, "OUT": str(tmp_path / "cut"),
                         "BUDGET_S": "130"}, capture_output=True, text=True, timeout=120)
    summary = (tmp_path / "cut" / "summary.txt").read_text()
    assert cut.returncode == 4, (cut.returncode, summary)
    left = int((tmp_path / "limits").read_text().split()[0])
    # te_kernels: estimate 45, own limit 120, cut to the budget left (130 - 20 - elapsed: the script's start-up,
    # seconds on a loaded 2-core CI machine; BUDGET_S=66 left one second of slack and the group went unstarted)
    assert 45 <= left <= 110
    assert f"te_kernels: STOPPED by the budget after {left} s (its own limit is 120 s); {running}" in summary
    assert 'not run, for another call: ONLY="te_kernels" bash benchmarks/gpu_tests.sh' in summary
    (suite,) = [s for s in ET.parse(tmp_path / "cut" / "junit.xml").getroot() if s.get("name") == "te_kernels_timeout"]
    assert (suite.get("failures"), suite.get("skipped")) == ("0", "1") and "stopped by the budget" in suite[0][0].get("message")

    own = subprocess.run(["bash", "benchmarks/gpu_tests.sh"], cwd=REPO, env={**env, "OUT": str(tmp_path / "own"),
                         "LIMIT_S": "10"}, capture_output=True, text=True, timeout=120)
    summary = (tmp_path / "own" / "summary.txt").read_text()
    assert own.returncode == 1, (own.returncode, summary)
    assert f"te_kernels: TIMEOUT after 10 s; {running}" in summary and "not run" not in summary
    (suite,) = [s for s in ET.parse(tmp_path / "own" / "junit.xml").getroot() if s.get("name") == "te_kernels_timeout"]
    assert suite.get("failures") == "1"


def test_a_failure_before_the_budget_stopped_a_group_fails_the_run(tmp_path):
    """A group the budget stopped is left for the next call only when nothing in it failed: a test that
    FAILED before the stop is a verdict (it exited 4, "nothing failed", with the failure only in the log
    and the group's junit). Stand-ins as above, the first test failing."""
    env = _stand_ins(tmp_path, first="FAILED")
    r = subprocess.run(["bash", "benchmarks/gpu_tests.sh"], cwd=REPO, env={**env, "OUT": str(tmp_path / "out"),
                       "BUDGET_S": "130"}, capture_output=True, text=True, timeout=120)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert r.returncode == 1, (r.returncode, summary)
    assert re.search(r"te_kernels: FAILED \(1 failed in 45.00s\) before the budget stopped it after \d+ s", summary), summary
    assert 'not run, for another call: ONLY="te_kernels" bash benchmarks/gpu_tests.sh' in summary  # the rest of it
