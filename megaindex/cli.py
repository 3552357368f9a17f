"""The `megaindex` command line: `info`, `plan`, `train`, `data`, `convert`, `eval`, `summarize`, `doctor`.

Each subcommand is a thin shell over a library function; heavy imports happen inside the handler
so that `megaindex --help` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from megaindex import exit_codes, library_warnings
from megaindex.config import Config, load_config
from megaindex.config_load import parse_args_with_overrides
from megaindex.rank import is_rank0

DEFAULT_GPUS_PER_NODE = 8


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe YAML (e.g. examples/index_1.9b_long_pt_32k.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5 parallel.context_parallel_size=4")


def _world_size_for_info(cfg: Config, requested: int | None) -> int:
    if requested is not None:
        return requested  # validate() refuses a count below 1
    # One model replica (DP=1): the global batch is always divisible by it.
    return cfg.model_parallel_size


def info(cfg: Config, world_size: int) -> dict:
    """Resolved config, parallel layout, parameter counts and the per-GPU memory estimate."""
    from megaindex.plan import memory_estimate, parameter_counts

    notes = cfg.validate(world_size)
    counts = parameter_counts(cfg)
    mem = memory_estimate(cfg, counts, world_size)
    p = cfg.parallel
    dp = cfg.data_parallel_size(world_size)
    return {
        "config": cfg.to_dict(),
        "layout": {
            "world_size": world_size,
            "tensor_model_parallel_size": p.tensor_model_parallel_size,
            "pipeline_model_parallel_size": p.pipeline_model_parallel_size,
            "virtual_pipeline_model_parallel_size": p.virtual_pipeline_model_parallel_size,
            "context_parallel_size": p.context_parallel_size,
            "data_parallel_size": dp,
            "sequence_parallel": p.sequence_parallel and p.tensor_model_parallel_size > 1,
            "global_batch_size": cfg.data.global_batch_size,
            "micro_batch_size": cfg.data.micro_batch_size,
            "num_microbatches": cfg.num_microbatches(world_size),
            "padded_vocab_size": cfg.padded_vocab_size,
            "batch_p2p_comm": cfg.batch_p2p_comm,
        },
        "model": {
            "rotary_base": cfg.model.rotary_base,
            "seq_length": cfg.data.seq_length,
            "max_position_embeddings": cfg.model.max_position_embeddings,
            "norm_head": cfg.model.norm_head,
        },
        "parameters": dataclasses.asdict(counts),
        "memory_per_gpu_gib": mem.as_gib(),
        "memory_note": mem.note,
        "notes": notes,
    }


def _print_info(cfg: Config, r: dict) -> None:
    lay, par, mem = r["layout"], r["parameters"], r["memory_per_gpu_gib"]
    print(f"# {cfg.name}: resolved config")
    print(cfg.to_yaml().rstrip())
    print("\n# parallel layout")
    print(
        f"  {lay['world_size']} GPUs = TP {lay['tensor_model_parallel_size']} x PP {lay['pipeline_model_parallel_size']}"
        f"{' (VPP ' + str(lay['virtual_pipeline_model_parallel_size']) + ')' if lay['virtual_pipeline_model_parallel_size'] else ''}"
        f" x CP {lay['context_parallel_size']} x DP {lay['data_parallel_size']}; sequence parallel {'on' if lay['sequence_parallel'] else 'off'}"
    )
    print(
        f"  global batch {lay['global_batch_size']} x {r['model']['seq_length']} tokens = "
        f"{lay['num_microbatches']} micro-batches of {lay['micro_batch_size']} per DP rank; vocab padded to {lay['padded_vocab_size']}"
    )
    print("\n# parameters")
    for k in ("total", "non_embedding", "embedding", "output", "norms", "per_gpu"):
        print(f"  {k:<14} {par[k]:>16,}")
    print(f"\n# memory per GPU (estimate, GiB; {r['memory_note']})")
    labels = {"logits": "LM head", "peak_allocated": "= allocated", "overhead": "+ runtime", "total": "= total"}
    for k in ("weights", "grads", "optimizer", "activations", "logits", "peak_allocated", "overhead", "total"):
        print(f"  {labels.get(k, k):<14} {mem[k]:>8.2f}")
    for n in r["notes"]:
        print(f"note: {n}")


def cmd_info(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    world = _world_size_for_info(cfg, args.world_size if args.world_size is not None
                                  else args.nodes * args.gpus_per_node if args.nodes is not None else None)
    r = info(cfg, world)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        _print_info(cfg, r)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Rank the layouts of a recipe on --gpus GPUs that fit --gpu-memory by predicted throughput."""
    from megaindex import planner

    cfg = load_config(args.config, args.overrides)
    doc_length = args.doc_length or cfg.data.seq_length
    nodes = args.nodes or (args.gpus // DEFAULT_GPUS_PER_NODE if args.gpus % DEFAULT_GPUS_PER_NODE == 0 and args.gpus > 0 else 1)
    nodes = max(nodes, 1)
    ranked, refused = planner.rank_layouts(cfg, args.gpus, gpu_memory_gib=args.gpu_memory, nodes=nodes,
                                           doc_length=doc_length)
    if args.json:
        print(json.dumps({"gpus": args.gpus, "nodes": nodes, "gpu_memory_gib": args.gpu_memory,
                          "doc_length": doc_length, "refused": refused,
                          "layouts": [planner.as_dict(c) for c in ranked]}, indent=2))
    else:
        print(planner.format_plan(cfg, args.config, args.gpus, nodes, args.gpu_memory, doc_length, ranked,
                                  refused, args.top))
    return exit_codes.OK if any(c.fits for c in ranked) else exit_codes.FAILED


def cmd_train(args: argparse.Namespace) -> int:
    """Train (under torchrun for several processes); prints where logs, plot and checkpoints are."""
    cfg = load_config(args.config, args.overrides)
    # Check the config for this launch's world size before the ~10 s megatron import (distributed
    # setup checks it again once the groups exist).
    cfg.validate(int(os.environ.get("WORLD_SIZE", "1")))
    from megaindex.training.run_lock import RunDirLock

    # Before the heavy imports: a second trainer on this run directory fails at once.
    lock = RunDirLock(cfg.train.run_dir).acquire() if is_rank0() else None
    try:
        return _train_locked(cfg)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(cfg: Config) -> int:
    from megaindex.distributed import destroy_distributed
    from megaindex.training.trainer import NonFiniteStop, train

    try:
        result = train(cfg)
    except NonFiniteStop as e:
        print(f"megaindex: {e}", file=sys.stderr)
        return exit_codes.NAN_STOP
    finally:
        destroy_distributed()

    if result.get("preempted"):
        # Stopped early with a checkpoint (training/preemption.py); the same command resumes.
        return exit_codes.PREEMPTED
    if is_rank0():
        print(
            f"done: step {result['step']}, skipped {result['skipped_steps']}, final validation loss "
            f"{result['final_val_loss'] if result['final_val_loss'] is None else round(result['final_val_loss'], 4)}\n"
            f"  run dir:     {result['run_dir']} (metrics.jsonl, validation.jsonl, tensorboard/)\n"
            f"  loss plot:   {result['plot']}\n"
            f"  checkpoints: {result['checkpoints']}"
        )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Versions, GPUs and the kernels/parallel features this environment will use."""
    from megaindex.doctor import diagnose, format_report

    report = diagnose()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _delegate(module: str, argv: list[str]) -> int:
    import importlib

    return importlib.import_module(module).main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv  # anywhere on the line: `megaindex train R --debug` works too
    argv = [a for a in argv if a != "--debug"]
    library_warnings.install()  # before the libraries are imported: the console starts with megaindex's lines
    # Subcommands owned by other packages parse their own arguments.
    delegated = {"data": "megaindex.data.cli", "convert": "megaindex.convert.cli", "eval": "megaindex.eval.cli"}
    if argv and argv[0] in delegated:
        return _delegate(delegated[argv[0]], argv[1:])
    if argv and argv[0] == "summarize":  # Index's long-text demo
        return _delegate("megaindex.eval.summarize", argv[1:])

    parser = argparse.ArgumentParser(prog="megaindex", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="resolved config, layout, parameter counts and per-GPU memory (no GPU needed)")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--world-size", type=int, default=None, help="GPUs in the job (default: TP x PP x CP, i.e. DP=1)")
    p.add_argument("--nodes", type=int, default=None, help="nodes (with --gpus-per-node) instead of --world-size")
    p.add_argument("--gpus-per-node", type=int, default=DEFAULT_GPUS_PER_NODE)
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("plan", help="rank the TP x PP x VPP x CP x DP x recompute layouts that fit, by predicted throughput")
    _add_config_args(p)
    p.add_argument("--gpus", type=int, required=True, help="GPUs in the job")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (H100 80GB: 80; H200: 141)")
    p.add_argument("--nodes", type=int, default=None,
                   help=f"nodes the GPUs are spread over (groups spanning nodes use the network; default: "
                        f"{DEFAULT_GPUS_PER_NODE} GPUs per node when --gpus is a multiple of {DEFAULT_GPUS_PER_NODE}, else one node)")
    p.add_argument("--doc-length", type=float, default=None,
                   help="typical document length in tokens, for the attention cost (default: seq_length, one document per row)")
    p.add_argument("--top", type=int, default=5, help="layouts to print")
    p.add_argument("--json", action="store_true", help="every valid layout, machine-readable")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("train", help="train a recipe (launch with torchrun for several GPUs/processes)")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)
    sub.add_parser("summarize", help="Index's long-text demo: `megaindex summarize FILE --model CKPT_OR_HF_DIR [--watch]`")
    p = sub.add_parser("doctor", help="versions, GPUs, attention backend and parallel features this environment will use")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_doctor)
    sub.add_parser("data", help="data tools: `megaindex data inspect CONFIG_OR_PREFIX --index N`")
    sub.add_parser("convert", help="HF converters: `megaindex convert from-hf|to-hf ...`")
    sub.add_parser("eval", help="long-context evaluation: `megaindex eval CKPT --tasks needle,passkey,ppl --out DIR`")

    args = parse_args_with_overrides(parser, argv)
    try:
        return args.func(args)
    except Exception as e:
        code = user_error_code(e)
        if code is None or debug:
            raise
        print(f"megaindex: {e}", file=sys.stderr)
        return code


def user_error_code(e: BaseException) -> int | None:
    """The exit code of an error that is the input's fault (one line, no traceback), else None.

    Only classes whose modules are already imported are checked: nothing heavy is imported here.
    """
    known = {
        "megaindex.config": (("ConfigError", exit_codes.BAD_USAGE),),
        "megaindex.checkpoint": (("CheckpointError", exit_codes.FAILED),),
        "megaindex.safe_pickle": (("UnsafePickleError", exit_codes.FAILED),),
        "megaindex.training.run_lock": (("RunDirBusy", exit_codes.FAILED),),
        "megaindex.convert.hf_config": (("ConversionError", exit_codes.FAILED),),
        "megaindex.data.tokenizer": (("TokenizerError", exit_codes.BAD_USAGE),),
        "megaindex.data.chat": (("ChatFormatError", exit_codes.FAILED),),
    }
    for module, classes in known.items():
        mod = sys.modules.get(module)
        for name, code in classes if mod is not None else ():
            if isinstance(e, getattr(mod, name)):
                return code
    return None


if __name__ == "__main__":
    sys.exit(main())
