"""`megaindex convert from-hf|to-hf`: argument parsing and exit codes for the converters.

`main(argv)` is the entry point (tools/convert_from_hf.py and tools/convert_to_hf.py call it, and
the main CLI wires it as `megaindex convert`). Conversion problems print one line naming the file,
tensor or field and exit 1; nothing partial is left in OUT.
"""

from __future__ import annotations

import argparse
import sys

from megaindex import exit_codes
from megaindex.convert.hf_config import ConversionError

FROM_HF_EPILOG = """\
The output is a megatron dist checkpoint: it holds global tensors, so it loads into ANY TP/PP/VPP
layout and either module layout (Transformer Engine or local). --tp/--pp/--vpp validate that the
model fits the layout you will train with and choose the vocab padding (a multiple of
128 x TP); a layout with other padding still loads (padding rows are zero).
Use it as `checkpoint.pretrained` of a stage-1 recipe."""

TO_HF_EPILOG = """\
--format llama (default) writes a stock LlamaForCausalLM: the Norm-Head is baked into lm_head.weight,
so transformers.AutoModelForCausalLM loads it without remote code and gives identical logits.
--format index keeps Index's layout (IndexForCausalLM, norm_head: true, un-normalised lm_head) and
copies the modeling code and tokenizer from --template-dir (the released Index checkpoint).
--rope-scaling KIND:FACTOR writes a training-free RoPE variant (linear, dynamic NTK, YaRN) for the
training length --train-length (default: the checkpoint's data.seq_length) into config.json; dynamic
NTK reads that length from max_position_embeddings, which is then set to it."""


def _parser(command: str, description: str, epilog: str, source: tuple[str, str], out_help: str) -> argparse.ArgumentParser:
    """A converter's parser with its two positionals: the source (name, help) and OUT."""
    p = argparse.ArgumentParser(prog=f"megaindex convert {command}", description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(source[0], help=source[1])
    p.add_argument("out", help=out_help)
    return p


def _from_hf_parser() -> argparse.ArgumentParser:
    p = _parser("from-hf", "Convert an HF Index-1.9B or Llama-architecture checkpoint into a megaindex checkpoint.",
                FROM_HF_EPILOG, ("hf_dir", "HF checkpoint directory (config.json + safetensors or pytorch_model*.bin)"),
                "output megaindex checkpoint directory")
    p.add_argument("--tp", type=int, default=1, help="target tensor-parallel size (validation, vocab padding)")
    p.add_argument("--pp", type=int, default=1, help="target pipeline-parallel size (validation)")
    p.add_argument("--vpp", type=int, default=None, help="target virtual pipeline stages per PP rank (validation)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="stored dtype (auto = as in the HF files)")
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=128, help="vocab padding unit (x TP), Megatron's rule")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--check", action="store_true", help="after converting, compare fp32 logits with transformers")
    return p


def _to_hf_parser() -> argparse.ArgumentParser:
    p = _parser("to-hf", "Export a megaindex checkpoint (any layout, model or training checkpoint) to HF.",
                TO_HF_EPILOG, ("ckpt", "megaindex checkpoint directory (megaindex.json + config.yaml + dist checkpoint)"),
                "output HF directory")
    p.add_argument("--format", dest="fmt", default="llama", choices=["llama", "index"])
    p.add_argument("--template-dir", default=None, help="HF dir to copy tokenizer (and, for index, modeling) files from")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="stored dtype (auto = as in the checkpoint)")
    p.add_argument("--max-shard-size-gb", type=float, default=2.0, help="largest safetensors shard")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--check", action="store_true", help="after converting, compare fp32 logits with transformers")
    p.add_argument("--rope-scaling", default=None, metavar="KIND:FACTOR",
                   help="write a training-free RoPE variant into config.json: linear:16 | dynamic:8 | yarn:16")
    p.add_argument("--train-length", type=int, default=None,
                   help="the length the model was trained at, for --rope-scaling (default: the checkpoint's data.seq_length)")
    return p


def from_hf(argv: list[str]) -> int:
    a = _from_hf_parser().parse_args(argv)  # before the heavy imports: --help stays fast
    from megaindex.convert.from_hf import convert_from_hf
    from megaindex.convert.parity import check_parity

    out = convert_from_hf(
        a.hf_dir, a.out, tp=a.tp, pp=a.pp, vpp=a.vpp, dtype=a.dtype,
        make_vocab_divisible_by=a.make_vocab_size_divisible_by, force=a.force,
    )
    if a.check:
        check_parity(out, a.hf_dir)
    return 0


def to_hf(argv: list[str]) -> int:
    a = _to_hf_parser().parse_args(argv)
    from megaindex.convert.parity import check_parity
    from megaindex.convert.to_hf import convert_to_hf

    out = convert_to_hf(
        a.ckpt, a.out, fmt=a.fmt, template_dir=a.template_dir, dtype=a.dtype,
        max_shard_bytes=int(a.max_shard_size_gb * 1024**3), force=a.force,
        rope_scaling=a.rope_scaling, train_length=a.train_length,
    )
    if a.check:
        check_parity(a.ckpt, out, rope=a.rope_scaling, train_length=a.train_length)
    return 0


COMMANDS = {"from-hf": from_hf, "to-hf": to_hf}


def main(argv: list[str]) -> int:
    """`megaindex convert from-hf ...` / `megaindex convert to-hf ...` (argv without `convert`)."""
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: megaindex convert {{{'|'.join(COMMANDS)}}} ... (-h for help)", file=sys.stderr)
        return exit_codes.BAD_USAGE
    try:
        return COMMANDS[argv[0]](argv[1:])
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.FAILED
    except Exception as e:
        from megaindex.checkpoint import CheckpointError  # megatron import: only when needed
        from megaindex.safe_pickle import UnsafePickleError

        if isinstance(e, (CheckpointError, UnsafePickleError)):
            print(f"error: {e}", file=sys.stderr)
            return exit_codes.FAILED
        raise
