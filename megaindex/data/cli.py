"""`megaindex data inspect CONFIG_OR_PREFIX --index N [--json]`: look at one packed sample by eye.

Owns the data sub-commands of the CLI (the top-level `megaindex` dispatches `data ...` here; until
then `python -m megaindex.data.cli inspect ...`). The argument is a YAML recipe (its data section is
used as is) or an IndexedDataset prefix / JSONL file (then --tokenizer, --seq-length, --kind, --cp
describe the packing). Prints the token ids, a decoded preview of every piece, cu_seqlens, padded
cu_seqlens, position ids and the loss mask (or LongAlign weights).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from megaindex import exit_codes


def _load(args):
    from megaindex.config import ConfigError, load_config

    target = args.target
    if target.endswith((".yaml", ".yml")):
        cfg = load_config(target, args.override)
    else:
        if not args.tokenizer:
            raise ConfigError("inspecting a dataset prefix or JSONL file needs --tokenizer tokenizer.model")
        cfg = load_config(None, [
            f"data.kind={args.kind}", f"data.data_path=['{target}']", f"data.tokenizer_model={args.tokenizer}",
            f"data.seq_length={args.seq_length}", f"data.global_batch_tokens={args.seq_length}",
            f"parallel.context_parallel_size={args.cp}", "data.split=100,0,0", "data.num_epochs=1",
            *args.override,
        ])
    return cfg


def inspect(args) -> int:
    from megaindex.data.builder import build_datasets
    from megaindex.data.packing import max_seqlen
    from megaindex.data.tokenizer import load_tokenizer

    cfg = _load(args)
    tok = load_tokenizer(cfg.data.tokenizer_model)
    train, _ = build_datasets(cfg, tok, num_samples=(args.index + 1, 0))
    if not 0 <= args.index < len(train):
        print(f"error: --index {args.index} is outside the dataset (0..{len(train) - 1})", file=sys.stderr)
        return exit_codes.BAD_USAGE
    s = train[args.index]
    cu, cup = s["cu_seqlens"].tolist(), s["cu_seqlens_padded"].tolist()
    pieces = []
    for i in range(len(cu) - 1):
        start, n = cup[i], cu[i + 1] - cu[i]
        ids = s["tokens"][start:start + n]
        w = s["loss_mask"][start:start + n]
        trained_labels = s["labels"][start:start + n][w > 0]
        pieces.append({
            "piece": i, "offset": start, "length": n, "padded_length": cup[i + 1] - start,
            "trained_tokens": int((w > 0).sum()), "weight": float(w[w > 0][0]) if (w > 0).any() else 0.0,
            "text": tok.decode(ids), "trained_text": tok.decode(trained_labels),
        })
    report = {
        "index": args.index, "dataset_length": len(train), "seq_length": len(s["tokens"]),
        "num_sequences": int(s["num_sequences"]), "max_seqlen": max_seqlen(s["cu_seqlens_padded"]),
        "cu_seqlens": cu, "cu_seqlens_padded": cup, "pieces": pieces,
        "tokens": s["tokens"].tolist(), "labels": s["labels"].tolist(),
        "position_ids": s["position_ids"].tolist(), "loss_mask": s["loss_mask"].tolist(),
    }
    if args.json:
        json.dump(report, sys.stdout, ensure_ascii=False)
        print()
        return 0
    width = args.preview
    print(f"sample {args.index} of {len(train)}  seq_length {report['seq_length']}  num_sequences {report['num_sequences']}  max_seqlen {report['max_seqlen']}")
    print(f"cu_seqlens        {cu}")
    print(f"cu_seqlens_padded {cup}")
    for p in pieces:
        text = p["text"].replace("\n", "\\n")
        trained = p["trained_text"].replace("\n", "\\n")
        print(f"\n-- piece {p['piece']}: offset {p['offset']}, {p['length']} tokens (padded {p['padded_length']}), "
              f"{p['trained_tokens']} trained, weight {p['weight']:.6g}")
        print(f"   text:    {text[:width]}{' ...' if len(text) > width else ''}")
        print(f"   trained: {trained[:width]}{' ...' if len(trained) > width else ''}")
    torch.set_printoptions(threshold=64, edgeitems=8, linewidth=120)
    for k in ("tokens", "labels", "position_ids", "loss_mask"):
        print(f"\n{k}: {s[k]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="megaindex data", description="data pipeline tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("inspect", help="print one packed sample", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="recipe YAML, IndexedDataset prefix, or JSONL file")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, as for info/train (e.g. data.loss_weighting=longalign)")
    p.add_argument("--index", type=int, default=0, help="sample index (after shuffling)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--tokenizer", help="tokenizer.model (for a prefix / JSONL target)")
    p.add_argument("--kind", choices=["pretrain", "sft"], default="pretrain")
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--cp", type=int, default=1, help="context-parallel size (pieces padded to 2*CP)")
    p.add_argument("--preview", type=int, default=240, help="characters of decoded text per piece")
    p.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the same as a positional override (kept for older command lines), repeatable")
    from megaindex.config_load import parse_args_with_overrides

    args = parse_args_with_overrides(ap, argv)
    args.override = [*args.overrides, *args.set_overrides]
    from megaindex.config import ConfigError
    from megaindex.data.tokenizer import TokenizerError

    try:
        return inspect(args)
    except (ConfigError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.BAD_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
