"""Known library warnings stay off the console and land in the run directory's log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import logging, sys, warnings
from megaindex import library_warnings
library_warnings.install()
warnings.warn("Transformer Engine and Apex are not installed. Falling back to Torch optimizers.")
logging.getLogger("megatron.core.models.gpt.gpt_model").warning("GPTModel IS DEPRECATED. Use HybridModel")
warnings.warn("megaindex-side warning that must stay visible")
logging.getLogger("megatron.core.x").warning("an unknown library warning stays visible")
print("held", library_warnings.keep_in(sys.argv[1]))
warnings.warn("Apex is not installed. Falling back to Torch Norm")
"""


def test_known_warnings_go_to_the_run_dir_log(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MEGAINDEX_LIBRARY_WARNINGS", None)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "held 2"
    assert "must stay visible" in r.stderr and "unknown library warning stays visible" in r.stderr
    assert "Apex" not in r.stderr and "DEPRECATED" not in r.stderr
    log = (tmp_path / "library_warnings.log").read_text()
    assert "Falling back to Torch optimizers" in log and "GPTModel IS DEPRECATED" in log and "Torch Norm" in log
