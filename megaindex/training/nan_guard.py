"""What a non-finite step does to a run: the NaN policies and the last good checkpoint.

A checkpoint written after step s holds the weights that step s+1 evaluates, so it is known good
only once a later step gives a finite loss on them (skipped steps leave the weights unchanged, so
the first finite step after it counts). `NanGuard` tracks that checkpoint; pruning never removes
it (`protected`), and a stop points `latest` back at it, so the same command (with a lower LR,
which applies on resume) continues from a state that trained.

Policies (train.nan_policy): `skip` drops the update and counts the step, and stops as `stop`
does after train.max_consecutive_skips non-finite steps in a row (a diverged run skips every
step); `stop` stops at the first one. A stop saves nothing: the diverged state never becomes
`latest`.
"""

from __future__ import annotations

from pathlib import Path

from megaindex import checkpoint


class NonFiniteStop(RuntimeError):
    """A NaN/Inf loss or gradient norm stopped the run (nan_policy=stop, or too many skips)."""


class NanGuard:
    def __init__(self, policy: str, max_consecutive_skips: int, save_dir: Path, resumed: Path | None):
        self.policy = policy
        self.max_skips = max_consecutive_skips
        self.save_dir = save_dir
        self.in_a_row = 0
        self.last_saved = resumed.name if resumed is not None else None  # a resumed state trained before
        self.good = self.last_saved

    def protected(self) -> set[str]:
        """Step directories pruning must keep."""
        return {self.good} if self.good else set()

    def saved(self, path: Path) -> None:
        self.last_saved = Path(path).name

    def after_step(self, step: int, finite: bool, loss: float, grad_norm: float | None, lr: float) -> None:
        """Account for step `step`; raise NonFiniteStop (rank 0 repoints `latest`) when the run must stop."""
        if finite:
            self.in_a_row = 0
            self.good = self.last_saved
            return
        self.in_a_row += 1
        if self.policy == "skip" and self.in_a_row < self.max_skips:
            return
        why = ("nan_policy=stop" if self.policy == "stop"
               else f"{self.in_a_row} in a row (train.max_consecutive_skips={self.max_skips})")
        raise NonFiniteStop(f"step {step}: loss {loss}, grad norm {grad_norm} is not finite ({why}); stopped without "
                            f"saving. {self._restart_advice(lr)}")

    def point_latest_at_good(self) -> None:
        """Rank 0, at a stop: `latest` names the last good checkpoint (if there is one)."""
        if self.good and (self.save_dir / self.good).is_dir():
            checkpoint.write_latest(self.save_dir, self.good)

    def _restart_advice(self, lr: float) -> str:
        if not self.good:
            return ("No checkpoint of this run has given a finite loss yet: check the data and lower optim.lr, "
                    "then start over with train.overwrite=true.")
        return (f"{self.save_dir / checkpoint.LATEST_FILE} names {self.good}, the newest checkpoint whose weights gave "
                f"a finite loss; rerun the same command with a lower LR (e.g. optim.lr={lr / 4:.3g}) to continue from it.")
