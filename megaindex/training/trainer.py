"""The training loop: one recipe YAML in, a trained checkpoint, metrics and a loss plot out.

Reads top to bottom: distributed init -> tokenizer and data -> model chunks wrapped in megatron DDP
-> distributed optimizer + schedule -> resume (or start from pretrained weights) -> steps through
megatron's forward_backward function (no pipelining, 1F1B or interleaved, chosen by megatron from
the layout; or a replay of its captured CUDA graph, training/cuda_graph.py) -> validation,
checkpoints, metrics. Launch with torchrun (`megaindex train CONFIG`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from megaindex import checkpoint, library_warnings
from megaindex.config import Config, ConfigError
from megaindex.data.builder import build_datasets
from megaindex.data.schedule import DataSchedule, data_iterators
from megaindex.data.tokenizer import IndexTokenizer
from megaindex.distributed import init_distributed
from megaindex.model.build import build_model_chunks, params_dtype, use_transformer_engine
from megaindex.plan import step_flops
from megaindex.training import checkpointing, cuda_graph
from megaindex.training import resume
from megaindex.training.loss import DOC_SQ_KEY, LOSS_KEY, REAL_TOKENS_KEY, make_forward_step, make_static_forward_step
from megaindex.training.metrics import MetricsLogger, plot_loss_curve
from megaindex.training.nan_guard import NanGuard, NonFiniteStop  # noqa: F401 (NonFiniteStop: cli)
from megaindex.training.optimizer import build_optimizer, build_scheduler
from megaindex.training.preemption import PreemptionWatcher
from megaindex.training.run_length import resolve_after_data, resolve_before_data, steps_in_data
from megaindex.training.tracking import PhaseTimers, ProfilerWindow, TimedIterator, build_tracker, save_launch_config



class DataExhausted(RuntimeError):
    """The data ran out inside a step (the trainer checks before each step, so this is a guard)."""


@dataclass
class TrainingPosition:
    """Where the run is: what a resume continues from (checkpointed as `progress`)."""

    step: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0

    def as_dict(self) -> dict:
        return {"step": self.step, "consumed_samples": self.consumed_samples, "skipped_steps": self.skipped_steps}


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


class Trainer:
    def __init__(self, cfg: Config):
        cfg = resolve_before_data(cfg)  # train.train_tokens -> train_iters (training/run_length.py)
        self.cfg = cfg
        self.timers = PhaseTimers()  # per-step seconds by phase (training/tracking.py)
        # First, so that a SIGUSR1/SIGTERM during setup is recorded rather than fatal, and so that
        # DataLoader workers inherit the handler (training/preemption.py).
        self.preemption = PreemptionWatcher().install()
        try:
            self._setup(cfg)
        except BaseException:  # a refused or failed launch leaves the process's signal handlers as it found
            self.preemption.restore()  # them: a later fork (preprocess workers) would inherit a SIGTERM that kills nothing
            raise

    def _setup(self, cfg: Config) -> None:
        if cfg.train.cuda_graph_impl == "full_iteration":
            cuda_graph.check_runtime(cfg)  # before NCCL starts (training/cuda_graph.py)
        self.layout = init_distributed(cfg)
        self.device = _device()
        self.rank = dist.get_rank()
        self.run_dir = Path(cfg.train.run_dir)
        self.save_dir = Path(cfg.checkpoint.save or self.run_dir / "checkpoints")
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            library_warnings.keep_in(self.run_dir)
        else:
            library_warnings.discard()

        self.tokenizer = IndexTokenizer(cfg.data.tokenizer_model)
        if self.tokenizer.vocab_size > cfg.model.vocab_size:
            raise ConfigError(
                f"tokenizer {cfg.data.tokenizer_model} has {self.tokenizer.vocab_size} pieces but "
                f"model.vocab_size is {cfg.model.vocab_size}; ids past the vocabulary would be out of range."
            )

        self.dtype = params_dtype(cfg)
        # CUDA graphs: the run's current stream is the capture stream from here on (training/cuda_graph.py)
        self.capture_stream = None
        if cfg.train.cuda_graph_impl == "full_iteration":
            self.capture_stream = cuda_graph.activate_capture_stream()
        self.chunks = build_model_chunks(cfg, layout=self.layout)
        tf_config = self.chunks[0].config
        tf_config.calculate_per_token_loss = True  # loss contract: (sum, count); see training/loss.py
        p = cfg.parallel
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=p.overlap_grad_reduce,
            overlap_param_gather=p.overlap_param_gather,
            use_distributed_optimizer=p.use_distributed_optimizer,
            check_for_nan_in_grad=False,  # the NaN policy below decides what happens
        )
        wrapped = [Float16Module(tf_config, c) if self.dtype == torch.bfloat16 else c for c in self.chunks]
        self.model = [
            DistributedDataParallel(config=tf_config, ddp_config=ddp_config, module=m, disable_bucketing=i > 0)
            for i, m in enumerate(wrapped)
        ]
        tf_config.finalize_model_grads_func = finalize_model_grads
        # megatron's schedules take one function, or one per chunk with virtual pipeline stages
        per_chunk = lambda fns: fns if len(fns) > 1 else fns[0]  # noqa: E731
        tf_config.no_sync_func = per_chunk([m.no_sync for m in self.model])
        if p.overlap_grad_reduce:
            tf_config.grad_sync_func = per_chunk([m.start_grad_sync for m in self.model])
        if p.overlap_param_gather and p.use_distributed_optimizer:
            tf_config.param_sync_func = per_chunk([m.start_param_sync for m in self.model])

        self.train_ds, self.valid_ds = build_datasets(cfg, self.tokenizer)
        cfg, note = resolve_after_data(cfg, self.train_ds)  # null train_iters + data.num_epochs
        self.cfg = cfg
        if note:
            self._log(note)

        self.optimizer = build_optimizer(cfg, self.model, self.dtype)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.progress = TrainingPosition()
        self.async_queue = checkpointing.make_async_queue(cfg)
        self._resume_or_start()
        if self.rank == 0:  # after the resume checks: a refused launch leaves the run's config alone
            save_launch_config(self.run_dir, cfg)  # config.<time>.yaml per launch (kept) + config.yaml (newest)

        self.forward_backward = get_forward_backward_func()
        self.use_data(cfg, self.train_ds)
        self.metrics = MetricsLogger(
            self.run_dir, enabled=self.rank == 0, tensorboard=cfg.log.tensorboard,
            start_step=self.progress.step, total_steps=cfg.train.train_iters,
        )
        self.probe = None  # the optional long-context probe (config `eval:`), scored into metrics.jsonl
        if cfg.eval.interval:
            from megaindex.eval.probe import Probe

            self.probe = Probe(cfg, self.tokenizer)
        self.tracker = build_tracker(cfg, self.run_dir) if self.rank == 0 else None
        self.profiler = ProfilerWindow(cfg.train.profile_steps, self.run_dir, self.rank)

    # ---- setup helpers ------------------------------------------------------------------------
    def _resume_or_start(self) -> None:
        ck = self.cfg.checkpoint
        path = resume.choose(self.cfg, self.save_dir, self.run_dir, self._log, self.rank)
        dist.barrier()  # train.overwrite: rank 0 has cleared the run before anyone reads it
        if path is not None:
            resume.check_resume(path, self.cfg, self._log)
            saved = checkpointing.load_train_checkpoint(path, self.chunks, self.optimizer, self.scheduler, self.cfg,
                                                        layout=self.layout)
            self.progress = TrainingPosition(**saved)
            self._log(f"resumed from {path} at step {self.progress.step}")
        elif ck.pretrained:
            resume.note_pretrained(Path(ck.pretrained), self.cfg, self._log)
            # Loading copies into the params in place, i.e. into DDP's param buffers; the optimizer's
            # fp32 main copies were taken at construction and must be refreshed.
            checkpoint.load_model(self.chunks, ck.pretrained, self.cfg)
            self.optimizer.reload_model_params()
            self._log(f"starting from pretrained weights {ck.pretrained} (fresh optimizer and schedule)")
        t = self.cfg.train
        self.nan_guard = NanGuard(t.nan_policy, t.max_consecutive_skips, self.save_dir,
                                  path if path is not None and path.parent == self.save_dir else None)

    def use_data(self, cfg: Config, train_ds) -> None:
        """Read `train_ds` (built from `cfg`, this run's config or another data section for the same
        model and layout) from `self.progress` on: the forward step (loss weighting, THD shapes),
        the micro-batches per step, the data schedule and the CUDA graphs follow cfg.data. __init__
        binds the run's own data; benchmarks/sft_throughput.py moves one model from stage-1 to stage-2 data."""
        self.cfg, self.train_ds = cfg, train_ds
        self.forward_step = make_forward_step(
            # data.row_layout: THD, or concat rows as [rows, tokens] (sbhd; FP8 attention has no THD kernel)
            packed=cfg.rows_as_thd, longalign=cfg.data.loss_weighting == "longalign", device=self.device, layout=self.layout,
            static_max_seqlen=cfg.data.seq_length if cfg.data.static_thd_shapes and use_transformer_engine(cfg) else None)
        self.graph = None  # train.cuda_graph_impl=full_iteration: steps replay a captured forward-backward
        if self.capture_stream is not None:
            static_step = make_static_forward_step(cfg.data.seq_length)
            self.graph = cuda_graph.FullIterationGraph(
                lambda it, n: self._run(it, n, forward_only=False, forward_step=static_step),
                stream=self.capture_stream, log=self._log)  # its data: one item per step (DataSchedule)
        self.num_microbatches = cfg.num_microbatches(self.layout.world_size)
        self.schedule = DataSchedule(cfg, self.tokenizer, train_ds, self.layout, num_chunks=len(self.model),
                                     wrap=lambda it: TimedIterator(it, self.timers))
        self._enter_phase()

    def _enter_phase(self) -> None:
        """Point the train iterators at the data of the phase the next step belongs to (data/schedule.py)."""
        iters = self.schedule.iterators_at(self.progress.step)
        if iters is not None:
            self.train_iters = iters
            self.data_end_step = self.schedule.data_end_step  # the data runs out there
            if self.cfg.data.context_length_warmup:
                self._log(f"step {self.progress.step + 1}: training on {self.schedule.phase.seq_length}-token sequences")

    def _log(self, msg: str) -> None:
        if self.rank == 0:
            print(msg, flush=True)

    # ---- one step -----------------------------------------------------------------------------
    def _run(self, data_iterator, num_microbatches: int, forward_only: bool, forward_step=None):
        d = self.cfg.data
        return self.forward_backward(
            forward_step_func=forward_step or self.forward_step,
            data_iterator=data_iterator,
            model=self.model,
            num_microbatches=num_microbatches,
            # THD micro-batches are one packed row of mbs*seq_length tokens (data/batch.collate)
            seq_length=d.micro_batch_size * d.seq_length,
            micro_batch_size=1,
            forward_only=forward_only,
        )

    def _reduce_loss(self, losses: list[dict]) -> tuple[float, int, int]:
        """(global loss, global sum of squared document lengths, global real tokens) from this step's
        micro-batches (real tokens: not padding, for the packing efficiency).

        Loss = sum over micro-batches and DP x CP of loss sums / counts. Each (last stage, TP rank 0)
        rank contributes its loss once; document lengths come from CP rank 0 of those (the batch
        before CP slicing), for the attention FLOPs.
        """
        total = torch.zeros(4, dtype=torch.float64, device=self.device)
        if self.layout.is_last_stage and self.layout.tp_rank == 0:
            for rec in losses:
                total[:2] += rec[LOSS_KEY].to(total)
            # on the host; zero on CP ranks > 0 (they hold slices of the same documents)
            total[2] = sum(int(rec[DOC_SQ_KEY]) for rec in losses)
            total[3] = sum(int(rec[REAL_TOKENS_KEY]) for rec in losses)
        dist.all_reduce(total)
        loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
        return loss, int(total[2].item()), int(total[3].item())

    def train_step(self) -> dict:
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        try:  # the data wait inside (TimedIterator) is its own phase
            with self.timers.time("forward_backward_s", exclude="data_wait_s"):
                if self.graph is not None:
                    losses = self.graph(self.train_iters, self.num_microbatches)
                else:
                    losses = self._run(self.train_iters, self.num_microbatches, forward_only=False)
        except StopIteration:  # the loop checks data_end_step first; this is a guard
            raise DataExhausted(f"the training data ran out inside step {self.progress.step + 1}") from None
        # optimizer_s = the loss reduction (its .item() waits for the forward-backward's queued GPU
        # work) + the optimizer, each in its own profiler range (benchmarks/step_profile.py names them)
        with self.timers.time("optimizer_s", trace_range="reduce_loss"):
            loss, doc_sq_sum, real_tokens = self._reduce_loss(losses)
        grad_norm = None
        with self.timers.time("optimizer_s"):
            if math.isfinite(loss):
                self.optimizer.prepare_grads()
                grad_norm = float(self.optimizer.get_grad_norm())
            finite = math.isfinite(loss) and grad_norm is not None and math.isfinite(grad_norm)
            if finite:
                ok, grad_norm, _ = self.optimizer.step()
                grad_norm = float(grad_norm)  # a 0-d tensor on GPU
                if ok:
                    self.scheduler.step(increment=1)
        self.progress.step += 1
        self.progress.consumed_samples += self.cfg.data.global_batch_size
        if not finite:
            self.progress.skipped_steps += 1
        return {"loss": loss, "grad_norm": grad_norm, "finite": finite, "doc_sq_sum": doc_sq_sum, "real_tokens": real_tokens}

    def validate(self) -> float | None:
        if self.valid_ds is None or not self.cfg.train.eval_iters:
            return None
        for m in self.model:
            m.eval()
        it = data_iterators(self.cfg, self.valid_ds, self.layout, len(self.model), 0)  # the same batches every time: comparable losses
        with torch.no_grad():
            losses = self._run(it, self.cfg.train.eval_iters * self.num_microbatches, forward_only=True)
        for m in self.model:
            m.train()
        return self._reduce_loss(losses)[0]

    def save(self, blocking: bool = True) -> Path:
        """Checkpoint now; with async saves (GPU) `blocking=False` returns while the write goes on."""
        path = checkpointing.save_train_checkpoint(
            self.save_dir, self.chunks, self.optimizer, self.scheduler, self.cfg, self.progress.as_dict(),
            layout=self.layout, async_queue=self.async_queue, protect=self.nan_guard.protected(),
        )
        self.nan_guard.saved(path)
        if blocking and self.async_queue is not None:
            checkpoint.finalize_async(self.async_queue, blocking=True)
        self.last_saved_step = self.progress.step
        self._log(f"checkpoint: {path}{'' if blocking or self.async_queue is None else ' (writing in the background)'}")
        return path

    def _stop_on_nan(self) -> None:
        """Nothing is saved; `latest` goes back to the last good checkpoint (nan_guard.py)."""
        if self.async_queue is not None:
            checkpoint.finalize_async(self.async_queue, blocking=True)
        if self.rank == 0:
            self.nan_guard.point_latest_at_good()
        dist.barrier()
        self.preemption.restore()
        self.metrics.close()

    # ---- the loop -----------------------------------------------------------------------------
    def train(self) -> dict:
        try:
            return self._train()
        finally:
            self.preemption.restore()  # also when a step raises (idempotent after the loop's own restore)

    def _train(self) -> dict:
        cfg = self.cfg
        t = cfg.train
        world = self.layout.world_size
        gbs_tokens = cfg.data.global_batch_tokens
        self._log(
            f"training {cfg.name}: {world} ranks (TP {self.layout.tp} x PP {self.layout.pp} x CP {self.layout.cp} x "
            f"DP {self.layout.dp}), {self.num_microbatches} micro-batches/step, {t.train_iters} steps, run dir {self.run_dir}"
        )
        if (self.run_dir / library_warnings.LOG_FILE).is_file():
            self._log(f"known library warnings (Apex/TE missing, deprecations): {self.run_dir / library_warnings.LOG_FILE}")
        last_val = None
        preempted = None
        data_exhausted = False
        self.last_saved_step = None
        while self.progress.step < t.train_iters:
            if self.async_queue is not None:  # complete a background checkpoint write if it is done
                checkpoint.finalize_async(self.async_queue, blocking=False)
            self._enter_phase()
            if self.progress.step >= self.data_end_step:  # same on every rank: same dataset length
                data_exhausted = True
                path = self.save() if self.last_saved_step != self.progress.step else self.save_dir
                self._log(
                    f"the training data ran out after step {self.progress.step} of {t.train_iters} "
                    f"({len(self.train_ds)} samples = {steps_in_data(self.train_ds, cfg)} global batches of "
                    f"{cfg.data.global_batch_size}{f', data.num_epochs={cfg.data.num_epochs}' if cfg.data.num_epochs else ''}); "
                    f"stopped cleanly with a checkpoint ({path}). The LR schedule was planned for {t.train_iters} steps: "
                    f"set train.train_iters=null to let the epochs set the run length, or add data / epochs."
                )
                break
            self.profiler.before_step(self.progress.step + 1)
            start = time.perf_counter()
            with self.profiler.step_range(self.progress.step + 1):
                out = self.train_step()
            dt = time.perf_counter() - start
            step = self.progress.step
            rec = {
                "step": step,
                "consumed_tokens": self.progress.consumed_samples * cfg.data.seq_length,
                "loss": out["loss"],
                "lr": self.optimizer.param_groups[0]["lr"],
                "grad_norm": out["grad_norm"],
                "skipped_steps": self.progress.skipped_steps,
                "seq_length": self.schedule.phase.seq_length,
                "step_time_s": dt,
                "tokens_per_s": gbs_tokens / dt,
                "packing_efficiency": out["real_tokens"] / gbs_tokens,  # real tokens / padded row tokens
                "mem_gib": _memory_gib(),
            }
            flops = step_flops(cfg, gbs_tokens, out["doc_sq_sum"])
            rec["model_tflop"] = flops / 1e12  # the step's model FLOPs (layout-independent)
            if torch.cuda.is_available():
                rec["tflops_per_gpu"] = flops / dt / world / 1e12
                rec["mfu"] = rec["tflops_per_gpu"] / cfg.log.peak_tflops
            if self.probe is not None and self.probe.due(step):
                with self.timers.time("eval_s"):
                    scores = self.probe.run(self.chunks[0])
                rec.update(scores)
                self._log(f"long-context probe at step {step}: " + ", ".join(f"{k[6:]} {v:.1f}" for k, v in scores.items()))
            trace = self.profiler.after_step(step)
            if trace is not None:
                self._log(f"profiler trace of steps {t.profile_steps[0]}-{t.profile_steps[1]}: {trace}")
            try:
                self.nan_guard.after_step(step, out["finite"], out["loss"], out["grad_norm"], cfg.optim.lr)
            except NonFiniteStop:
                self._log_step(rec, True)
                self._stop_on_nan()
                raise
            # Collective (all ranks, every step): the stop step must be the same everywhere.
            preempted = self.preemption.agreed_signal(self.device) if step < t.train_iters else None
            if preempted is not None:
                with self.timers.time("checkpoint_s"):
                    path = self.save()
                self._log_step(rec, True)
                self.preemption.record_stop(preempted, step, path)
                self._log(f"stopped by {preempted.name} after step {step} with a checkpoint; rerun the same command to resume")
                break
            if t.eval_interval and (step % t.eval_interval == 0 or step == t.train_iters):
                with self.timers.time("eval_s"):
                    last_val = self.validate()
                if last_val is not None:
                    self.metrics.log_validation(step, last_val)
            stop_now = t.exit_at_step is not None and step >= t.exit_at_step
            interval = cfg.checkpoint.save_interval
            if interval > 0 and (step % interval == 0 or step == t.train_iters or stop_now):
                with self.timers.time("checkpoint_s"):
                    self.save(blocking=step == t.train_iters or stop_now)
            self._log_step(rec, step % cfg.log.log_interval == 0 or step == t.train_iters)
            if stop_now:
                self._log(f"exit_at_step {t.exit_at_step} reached: stopped with a checkpoint; rerun to resume")
                break
        self.profiler.close()
        if self.tracker is not None:
            self.tracker.close()
        self.preemption.restore()
        self.metrics.close()
        plot = plot_loss_curve(self.run_dir) if self.rank == 0 and cfg.log.plot else None
        return {"run_dir": str(self.run_dir), "checkpoints": str(self.save_dir), "plot": str(plot) if plot else None,
                "final_val_loss": last_val, "preempted": preempted.name if preempted else None,
                "data_exhausted": data_exhausted, **self.progress.as_dict()}

    def _log_step(self, rec: dict, console: bool) -> None:
        """The step's line with its phase timers (data wait, forward-backward, optimizer, eval, checkpoint)."""
        rec.update(self.timers.pop())
        self.metrics.log_step(rec, console=console)
        if self.tracker is not None:
            self.tracker.log(rec, rec["step"])



def train(cfg: Config) -> dict:
    trainer = Trainer(cfg)
    return trainer.train()
