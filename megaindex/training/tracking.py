"""Run tracking and provenance: per-phase step timers, an optional W&B / MLflow logger, the torch
profiler window, and the resolved config kept per launch.

* `PhaseTimers` measures where a step's time goes (data wait, forward-backward, optimizer,
  evaluation, checkpoint); `TimedIterator` wraps the data iterators megatron's schedules pull from,
  so the time spent waiting for a batch is separated from the forward-backward it sits inside.
* `build_tracker(cfg)`: None unless `log.tracker` is set; the package is imported only then, and a
  missing one is a one-line error that says how to install it or turn it off.
* `ProfilerWindow`: `train.profile_steps=[first, last]` records those steps with torch.profiler and
  writes a Chrome/Perfetto trace per rank to RUN_DIR/profile/. Each step is one `megaindex.step#N`
  range and its phases `megaindex.<phase>` ranges (`annotate`), so benchmarks/step_profile.py can cut
  the trace into steps and say what the host did while the GPU idled.
* `save_launch_config`: RUN_DIR/config.<UTC time>.yaml for every launch (never overwritten) and
  config.yaml = the newest, so a failed resume cannot hide what an earlier launch ran with.
"""

from __future__ import annotations

import datetime
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from megaindex.config import Config, ConfigError
from megaindex.trace_ranges import annotate


class PhaseTimers:
    """Seconds per phase for the current step; `pop()` returns and clears them."""

    PHASES = ("data_wait_s", "forward_backward_s", "optimizer_s", "eval_s", "checkpoint_s")

    def __init__(self):
        self.t: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.t[name] = self.t.get(name, 0.0) + seconds

    @contextmanager
    def time(self, name: str, *, trace_range: str | None = None, exclude: str | None = None):
        """Add the block's seconds to phase `name` (also when it raises), inside a `megaindex.<trace_range>`
        profiler range (default: the phase without `_s`; several ranges may feed one phase).
        `exclude`: a phase timed inside this block (the data wait inside the forward-backward,
        TimedIterator) whose seconds count there and not twice."""
        excluded = self.t.get(exclude, 0.0) if exclude else 0.0
        with annotate(trace_range or name.removesuffix("_s")):
            start = time.perf_counter()
            try:
                yield
            finally:
                inner = self.t.get(exclude, 0.0) - excluded if exclude else 0.0
                self.add(name, time.perf_counter() - start - inner)

    def pop(self) -> dict[str, float]:
        out = {k: round(self.t.get(k, 0.0), 6) for k in self.PHASES}
        self.t = {}
        return out


class TimedIterator:
    """An iterator that charges the time spent in next() to `timers` as data wait."""

    def __init__(self, it, timers: PhaseTimers):
        self.it, self.timers = it, timers

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            with annotate("data_wait"):
                return next(self.it)
        finally:
            self.timers.add("data_wait_s", time.perf_counter() - start)


# ---- external trackers -------------------------------------------------------------------------
class _WandB:
    def __init__(self, cfg: Config, run_dir: Path):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=cfg.log.tracker_project or "megaindex", name=cfg.name, dir=str(run_dir),
                              config=cfg.to_dict(), resume="allow", id=_run_id(run_dir))

    def log(self, rec: dict[str, Any], step: int) -> None:
        self.run.log({k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, cfg: Config, run_dir: Path):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(cfg.log.tracker_project or "megaindex")
        self.run = mlflow.start_run(run_name=cfg.name)
        flat = {f"{s}.{k}": v for s, sec in cfg.to_dict().items() if isinstance(sec, dict) for k, v in sec.items()}
        mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})

    def log(self, rec: dict[str, Any], step: int) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in rec.items() if k != "step" and isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _run_id(run_dir: Path) -> str:
    """A stable W&B run id per run directory, so a resumed run continues the same W&B run."""
    import hashlib

    return hashlib.md5(str(run_dir.resolve()).encode()).hexdigest()[:16]


TRACKERS = {"wandb": (_WandB, "wandb"), "mlflow": (_MLflow, "mlflow")}


def build_tracker(cfg: Config, run_dir: Path):
    """The configured external tracker, or None (the default). Call on the logging rank only."""
    name = cfg.log.tracker
    if name is None:
        return None
    cls, package = TRACKERS[name]
    try:
        __import__(package)
    except ImportError:
        raise ConfigError(f"log.tracker={name} but the {package} package is not installed; "
                          f"`pip install {package}` or drop log.tracker (TensorBoard and metrics.jsonl need nothing).") from None
    return cls(cfg, run_dir)


# ---- profiler ----------------------------------------------------------------------------------
class ProfilerWindow:
    """torch.profiler over steps [first, last] (1-based, as logged); one trace file per rank."""

    def __init__(self, steps: list[int], run_dir: Path, rank: int):
        if steps and (len(steps) != 2 or not 1 <= steps[0] <= steps[1]):
            raise ConfigError(f"train.profile_steps {steps} must be [first, last] with 1 <= first <= last.")
        self.steps, self.out, self.rank = steps, run_dir / "profile", rank
        self.prof = None
        self.trace: Path | None = None

    def before_step(self, step: int) -> None:
        """`step` is the 1-based step about to run."""
        if self.steps and step == self.steps[0] and self.prof is None:
            import torch

            acts = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts, record_shapes=True, with_stack=False)
            self.prof.__enter__()

    def step_range(self, step: int):
        """The `megaindex.step#<step>` range around a recorded step (benchmarks/step_profile.py cuts the
        trace into steps at these)."""
        return annotate(f"step#{step}") if self.prof is not None else nullcontext()

    def after_step(self, step: int) -> Path | None:
        if self.prof is not None and step >= self.steps[1]:
            return self.close()
        return None

    def close(self) -> Path | None:
        if self.prof is None:
            return None
        self.prof.__exit__(None, None, None)
        self.out.mkdir(parents=True, exist_ok=True)
        self.trace = self.out / f"trace_steps{self.steps[0]}-{self.steps[1]}_rank{self.rank}.json"
        self.prof.export_chrome_trace(str(self.trace))
        self.prof = None
        return self.trace


# ---- provenance --------------------------------------------------------------------------------
def save_launch_config(run_dir: Path, cfg: Config) -> Path:
    """RUN_DIR/config.<UTC time>.yaml (one per launch, kept) and config.yaml (the newest)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    text = cfg.to_yaml()
    path = run_dir / f"config.{stamp}.yaml"
    tmp = run_dir / f".config.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    tmp.write_text(text)
    os.replace(tmp, run_dir / "config.yaml")
    return path
