"""Run metrics: metrics.jsonl, validation.jsonl, TensorBoard scalars, console progress, loss plot.

Only the logging rank writes. On resume the JSONL files are cut back to the resumed step, so a
resumed run's files read exactly like an uninterrupted run's.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path
from typing import Any

from megaindex import atomic


def _truncate_jsonl(path: Path, keep_through_step: int) -> None:
    """Keep the records up to the resumed step. A line that does not parse (the torn last line of a
    process killed mid-write) is dropped with a warning naming it."""
    if not path.exists():
        return
    kept = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            print(f"warning: {path}:{n}: dropped a torn line (the run was killed while writing it): {line[:60]!r}", flush=True)
            continue
        if step <= keep_through_step:
            kept.append(line)
    atomic.write_text(path, "".join(line + "\n" for line in kept))  # a kill leaves the old file or the new one


class MetricsLogger:
    def __init__(self, run_dir: str | Path, *, enabled: bool, tensorboard: bool, start_step: int, total_steps: int):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.total_steps = total_steps
        self.start_step = start_step
        self.t0 = time.perf_counter()
        self.writer = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.val_path = self.run_dir / "validation.jsonl"
        _truncate_jsonl(self.metrics_path, start_step)
        _truncate_jsonl(self.val_path, start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)

    def _eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        per = (time.perf_counter() - self.t0) / done
        return str(datetime.timedelta(seconds=int(per * (self.total_steps - step))))

    def log_step(self, rec: dict[str, Any], console: bool) -> None:
        if not self.enabled:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    self.writer.add_scalar(f"train/{k}", v, rec["step"])
        if console:
            parts = [f"step {rec['step']}/{self.total_steps}", f"loss {rec['loss']:.4f}", f"lr {rec['lr']:.2e}"]
            if rec.get("grad_norm") is not None:
                parts.append(f"gnorm {rec['grad_norm']:.3f}")
            parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
            if rec.get("tflops_per_gpu") is not None:
                mfu = f" ({100 * rec['mfu']:.1f}% MFU)" if rec.get("mfu") is not None else ""
                parts.append(f"{rec['tflops_per_gpu']:.1f} TFLOP/s/GPU{mfu}")
            if rec.get("mem_gib"):
                parts.append(f"mem {rec['mem_gib']:.1f} GiB")
            if rec.get("skipped_steps"):
                parts.append(f"skipped {rec['skipped_steps']}")
            parts.append(f"ETA {self._eta(rec['step'])}")
            print(" | ".join(parts), flush=True)

    def log_validation(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        with self.val_path.open("a") as f:
            f.write(json.dumps({"step": step, "val_loss": loss}) + "\n")
        if self.writer is not None:
            self.writer.add_scalar("valid/loss", loss, step)
        print(f"validation at step {step}: loss {loss:.4f} (ppl {math.exp(min(loss, 50)):.2f})", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_loss_curve(run_dir: str | Path) -> Path | None:
    """loss.png from metrics.jsonl (and validation.jsonl) in run_dir."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    vrows = []
    if (run_dir / "validation.jsonl").exists():
        vrows = [json.loads(line) for line in (run_dir / "validation.jsonl").read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss", lw=1.2)
    if vrows:
        ax.plot([r["step"] for r in vrows], [r["val_loss"] for r in vrows], "o-", label="validation loss", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out
