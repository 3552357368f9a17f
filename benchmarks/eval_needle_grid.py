"""Wall time of a NeedleBench-32K-sized needle grid with forced scoring on the megatron engine.

    python benchmarks/eval_needle_grid.py --out benchmarks/results_eval_needle_grid.json   # one GPU
    python benchmarks/eval_needle_grid.py --checkpoint runs/long-pt/checkpoints            # trained weights
    python benchmarks/eval_needle_grid.py --smoke --out /tmp/smoke.json                    # CPU, seconds
    torchrun --nproc-per-node 2 benchmarks/eval_needle_grid.py ...                         # CP over the GPUs

The grid is NeedleBench single-needle 32K's: lengths 9000, 13000, 17000, 21000, 25000, 29000, 31000,
32000 (here in the model's own tokens, prompt + answer) x depths 0, 10, 21, ..., 100 % x 1 repeat =
88 forced scores. The model is Index-1.9B-32K-shaped (36 x 2048, vocab 65029, Norm-Head, RoPE base
320000, bf16, Transformer Engine) with random weights, or the weights of --checkpoint (the JSON says
which). Haystacks are the real text under tests/fixtures/corpus (no download), tokenized with the
shipped tokenizer (or the checkpoint's); a needle sentence with a random 7-digit number goes in at
the depth, the question and the answer prefix follow, the gold answer is the number. Random weights
score 0: this measures speed, not ability (`megaindex eval` scores ability on held-out documents; the
fixture's held-out split is too short for 32K haystacks with the shipped 8000-piece tokenizer).

Items of one length are packed into THD forwards of up to --pack-tokens tokens (per-document
attention). After one warm-up forward, the script times the whole grid and reports wall time, prefill
tokens/s and per-length seconds; --out writes them with every item's score as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDLEBENCH_LENGTHS = [9000, 13000, 17000, 21000, 25000, 29000, 31000, 32000]
NEEDLEBENCH_DEPTHS = [0, 10, 21, 31, 42, 52, 63, 73, 84, 94, 100]
SYSTEM = "You are a helpful assistant. Answer the question using the document the user gives you.\n"
INTRO = "The document given to you by the user is "
QUESTION = "\nWhat is the special magic number mentioned in the document?\nThe special magic number is"


_DOCS: dict[str, list[list[int]]] = {}


def haystack_tokens(tokenizer, n: int, seed: int) -> list[int]:
    """n tokens of real corpus text: documents shuffled by `seed`, joined by blank lines."""
    if tokenizer.model_path not in _DOCS:
        texts = [json.loads(line)["text"] + "\n\n" for line in (REPO / "tests/fixtures/corpus/pretrain.jsonl").open(encoding="utf-8")]
        _DOCS[tokenizer.model_path] = tokenizer.encode_batch(texts)
    docs = list(_DOCS[tokenizer.model_path])
    random.Random(seed).shuffle(docs)
    ids: list[int] = []
    for d in docs:
        ids += d
        if len(ids) >= n:
            return ids[:n]
    raise SystemExit(f"the fixture corpus holds only {len(ids)} tokens; lengths above that need another haystack")


def needle_item(tokenizer, length: int, depth: int, seed: int) -> tuple[list[int], list[int]]:
    """(prompt, answer) of exactly `length` tokens with the needle at `depth` % of the haystack."""
    rng = random.Random(seed * 1000 + depth)
    number = str(rng.randrange(10**6, 10**7))
    answer = tokenizer.encode(" " + number)
    needle = tokenizer.encode(f"\nThe special magic number is {number}.\n")
    head = tokenizer.encode(SYSTEM + INTRO)
    tail = tokenizer.encode(QUESTION)
    room = length - len(head) - len(tail) - len(needle) - len(answer)
    if room < 1:
        raise SystemExit(f"length {length} is too short for the prompt ({length - room} tokens without haystack)")
    hay = haystack_tokens(tokenizer, room, seed)
    at = room * depth // 100
    return head + hay[:at] + needle + hay[at:] + tail, answer


def build_engine(args):
    """A megatron engine: --checkpoint's weights, or a random-init model of the preset."""
    import torch

    from megaindex.config_load import load_config
    from megaindex.data.tokenizer import IndexTokenizer
    from megaindex.eval.engine import load_engine
    from megaindex.eval.megatron_engine import MegatronEngine, eval_config
    from megaindex.model.rope_variants import parse_rope

    if args.checkpoint:
        engine = load_engine(args.checkpoint, rope=args.rope, max_length=max(args.lengths))
        engine.pack_tokens = args.pack_tokens
        return engine, f"checkpoint {args.checkpoint}"
    from megaindex.distributed import init_distributed, init_single_process
    from megaindex.model.build import build_model

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = load_config(None, [f"model.preset={args.preset}"])
    train_length = cfg.model.max_position_embeddings
    eval_config(cfg, world)
    init_distributed(cfg) if world > 1 else init_single_process()
    torch.manual_seed(1234)
    model = build_model(cfg, pre_process=True, post_process=True)
    tok = IndexTokenizer(args.tokenizer)
    engine = MegatronEngine(model, cfg, tok, train_length=train_length, rope=parse_rope(args.rope),
                            max_length=max(max(args.lengths), train_length), pack_tokens=args.pack_tokens)
    return engine, f"random init ({args.preset} preset, seed 1234)"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="megaindex checkpoint (any layout); default: random init")
    ap.add_argument("--preset", default="index-1.9b-32k", help="model preset for random init")
    ap.add_argument("--tokenizer", default=str(REPO / "tests/fixtures/tokenizer.model"))
    ap.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=NEEDLEBENCH_LENGTHS)
    ap.add_argument("--depths", type=lambda s: [int(x) for x in s.split(",")], default=NEEDLEBENCH_DEPTHS)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--rope", default="naive", help="RoPE variant (naive | linear:F | dynamic:F | yarn:F)")
    ap.add_argument("--pack-tokens", type=int, default=32768, help="tokens per packed forward")
    ap.add_argument("--smoke", action="store_true", help="CPU check in seconds: tiny model, 2 short lengths x 3 depths")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset, args.lengths, args.depths, args.pack_tokens = "tiny", [200, 400], [0, 50, 100], 1024

    import torch

    from megaindex.model.build import use_transformer_engine

    engine, weights = build_engine(args)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    grid = [(n, d, r) for n in args.lengths for d in args.depths for r in range(args.repeats)]
    items = {key: needle_item(engine.tokenizer, key[0], key[1], key[2]) for key in grid}
    engine.forced([items[grid[-1]]])  # warm-up at the longest length: CUDA context, kernels, workspaces
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    results, per_length = [], {}
    sync()
    start = time.perf_counter()
    for n in args.lengths:
        keys = [k for k in grid if k[0] == n]
        t = time.perf_counter()
        scores = engine.forced([items[k] for k in keys])
        sync()
        per_length[n] = round(time.perf_counter() - t, 3)
        for (length, depth, rep), f in zip(keys, scores):
            results.append({"length": length, "depth": depth, "repeat": rep, "exact": f.exact,
                            "logprob": round(f.logprob, 4), "prediction_ids": f.argmax_ids, "answer_ids": items[(length, depth, rep)][1]})
    wall = time.perf_counter() - start
    tokens = sum(len(p) + len(a) for p, a in items.values())
    report = {
        "benchmark": "needle grid, forced scoring (megatron engine)",
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "weights": weights,
        "model": {k: getattr(engine.cfg.model, k) for k in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "rotary_base")},
        "precision": str(next(engine.model.parameters()).dtype).removeprefix("torch."),
        "transformer_engine": use_transformer_engine(engine.cfg),
        "rope": engine.rope.name,
        "lengths": args.lengths, "depths": args.depths, "repeats": args.repeats, "pack_tokens": args.pack_tokens,
        "samples": len(grid),
        "prefill_tokens": tokens,
        "wall_s": round(wall, 3),
        "prefill_tokens_per_s": round(tokens / wall, 1),
        "seconds_per_length": per_length,
        "exact_match": sum(r["exact"] for r in results) / len(results),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "command": "python benchmarks/eval_needle_grid.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": results,
    }
    if rank0:
        print(f"{len(grid)} samples, {tokens} prefill tokens in {wall:.1f} s = {tokens / wall:,.0f} tokens/s "
              f"on {report['device']} x{report['world_size']} ({weights}, {report['precision']}); per length: {per_length}")
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
