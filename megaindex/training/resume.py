"""Where a run continues from, and what a changed config means on the way.

Owns three rules of `megaindex train` in a run directory that already holds a run:
* it continues from the checkpoint `checkpoint.resume_point` picks (`latest`, or the newest
  complete step when `latest` is missing, dangling or damaged, saying so), or `checkpoint.load`;
* it never silently starts over: with no checkpoint to continue from, a run directory whose
  metrics or step directories exist is refused unless `train.overwrite=true` (which removes them);
* optimizer and schedule fields that differ from the checkpoint's config apply (as Megatron's
  --override-opt-param-scheduler) and are listed; a changed model numeric that keeps every shape
  (rotary_base, norm_epsilon) is refused on a resume, which continues the same run: a new stage
  starts from the weights with `checkpoint.pretrained`, where the change is the recipe's and noted.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from megaindex import checkpoint
from megaindex.checkpoint import CheckpointError
from megaindex.config import Config
from megaindex.config_load import read_yaml

# Model fields that change the numerics without changing a shape (shapes: checkpoint.ARCH_FIELDS).
MODEL_NUMERICS = ("rotary_base", "norm_epsilon")
# Fields outside `optim` that shape the schedule (the schedule follows the config on resume).
SCHEDULE_FIELDS = ("train.train_iters", "train.train_tokens")


def choose(cfg: Config, save_dir: Path, run_dir: Path, log: Callable[[str], None], rank: int) -> Path | None:
    """The checkpoint to resume from, or None to start fresh (after refusing to start over silently)."""
    if cfg.checkpoint.load:
        return Path(cfg.checkpoint.load)
    if cfg.train.overwrite:
        if rank == 0:
            _clear(save_dir, run_dir, log)
        return None
    path, warnings = checkpoint.resume_point(save_dir)
    for w in warnings:
        log(f"warning: {w}")
    if path is None:
        held = _history(save_dir, run_dir)
        if held:
            raise CheckpointError(
                f"{run_dir} already holds a run ({held}) but no complete checkpoint to continue from; "
                f"pass train.overwrite=true to start over (removes them), or use another train.run_dir."
            )
    return path


def _history(save_dir: Path, run_dir: Path) -> str:
    """What of an earlier run is in the run directory ('' if nothing)."""
    held = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        held.append(f"{metrics.name} with {sum(1 for ln in metrics.open() if ln.strip())} lines")
    steps = checkpoint.step_dirs(save_dir)
    if steps:
        held.append(f"{len(steps)} step directories in {save_dir}")
    return ", ".join(held)


def _clear(save_dir: Path, run_dir: Path, log: Callable[[str], None]) -> None:
    gone = checkpoint.step_dirs(save_dir) + list(save_dir.glob(".step_*.tmp"))
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    (save_dir / checkpoint.LATEST_FILE).unlink(missing_ok=True)
    for name in ("metrics.jsonl", "validation.jsonl"):
        (run_dir / name).unlink(missing_ok=True)
    log(f"train.overwrite: removed {len(gone)} checkpoint directories from {save_dir} and the run's metrics; starting over")


def saved_config(path: Path) -> dict[str, Any]:
    """The resolved config a checkpoint was written with ({} when it has none)."""
    f = Path(path) / checkpoint.CONFIG_FILE
    return (read_yaml(f.read_text(), str(f)) or {}) if f.is_file() else {}


def changes(saved: dict[str, Any], cfg: Config, fields: list[str]) -> list[tuple[str, Any, Any]]:
    """(field, checkpoint value, config value) for each of `fields` the checkpoint's config records
    with another value."""
    mine = cfg.to_dict()
    out = []
    for f in fields:
        section, name = f.split(".")
        if name in (saved.get(section) or {}) and saved[section][name] != mine.get(section, {}).get(name):
            out.append((f, saved[section][name], mine.get(section, {}).get(name)))
    return out


def schedule_fields(cfg: Config) -> list[str]:
    """Every optim field and the schedule-shaping train fields this config has."""
    mine = cfg.to_dict()
    return [f"optim.{k}" for k in mine["optim"]] + [f for f in SCHEDULE_FIELDS if f.split(".")[1] in mine["train"]]


def check_resume(path: Path, cfg: Config, log: Callable[[str], None]) -> None:
    """Refuse a changed model numeric on a resume; list the optimizer/schedule changes that apply."""
    saved = saved_config(path)
    model = changes(saved, cfg, [f"model.{f}" for f in MODEL_NUMERICS])
    if model:
        what = ", ".join(f"{f} {old} -> {new}" for f, old, new in model)
        raise CheckpointError(
            f"resuming {path} with {what}: a resume continues the same run with the same model. Undo the change, "
            f"or start a new stage from these weights with checkpoint.pretrained={path} (fresh optimizer and schedule)."
        )
    applied = changes(saved, cfg, schedule_fields(cfg))
    if applied:
        log("resume: " + ", ".join(f"{f} {old} -> {new}" for f, old, new in applied)
            + " (this config's values apply; the checkpoint's are replaced)")


def note_pretrained(path: Path, cfg: Config, log: Callable[[str], None]) -> None:
    """Starting a new stage: name the model numerics the recipe changes from the source weights."""
    target = checkpoint.latest_checkpoint(path) if (Path(path) / checkpoint.LATEST_FILE).is_file() else Path(path)
    model = changes(saved_config(target), cfg, [f"model.{f}" for f in MODEL_NUMERICS])
    if model:
        log("starting from " + str(path) + " with " + ", ".join(f"{f} {old} -> {new}" for f, old, new in model)
            + " (the recipe's change)")
