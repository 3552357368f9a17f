"""The LM head + loss alone at Index-1.9B-32K's shape, per model.cross_entropy_fusion: time and memory.

    python benchmarks/cross_entropy.py --out $OUT/cross_entropy.jsonl       # one GPU, ~1 min

Builds Index-1.9B-32K (examples/index_1.9b_long_pt_32k.yaml, CP=1) with one transformer layer for
each fusion (none, native, te): the real head (Norm-Head over the 65029-token vocabulary padded to
65152, bf16, padded columns -inf) and the real loss path. On random final hidden states of one
`--seq-length` row it runs `--iters` forward+backward passes of output layer + per-token loss
(weighted and summed as training/loss.py does) and reports per fusion: the median time, the peak
allocated memory above what was held before (GiB and bytes per logit; the unfused kernel keeps an
fp32 softmax copy, TE's overwrites the bf16 logits), and how far its loss and its hidden-state and
head-weight gradients are from the unfused run. One JSON line per fusion to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import result_line

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: megaindex from this checkout, installed or not
    sys.path.insert(1, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(REPO / "examples" / "index_1.9b_long_pt_32k.yaml"))
    ap.add_argument("--seq-length", type=int, default=32768)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--fusions", default="none,native,te")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from megaindex import distributed
    from megaindex.config import load_config
    from megaindex.model.build import build_model
    from megaindex.model.lm_loss import lm_loss_kernel
    from megaindex.training.loss import masked_loss_sum

    S = args.seq_length
    gpu = torch.cuda.is_available()  # CPU: a smoke run of the same code (fp32, no memory figures)
    dev = "cuda" if gpu else "cpu"
    ref = None
    rows = []
    for fusion in args.fusions.split(","):
        cfg = load_config(args.recipe, [
            "model.num_layers=1", f"model.cross_entropy_fusion={fusion}", f"train.precision={'bf16' if gpu else 'fp32'}",
            "parallel.context_parallel_size=1", f"data.seq_length={S}", f"data.global_batch_tokens={S}",
        ])
        distributed.init_distributed(cfg)
        model = build_model(cfg)
        head = model.output_layer
        gen = torch.Generator(device=dev).manual_seed(0)
        dtype = torch.bfloat16 if gpu else torch.float32
        h = torch.randn(S, 1, cfg.model.hidden_size, device=dev, dtype=dtype, generator=gen).requires_grad_()
        labels = torch.randint(0, cfg.model.vocab_size, (1, S), device=dev, generator=gen)
        weight = (torch.rand(1, S, device=dev, generator=gen) > 0.3).float()  # a loss mask
        sync = torch.cuda.synchronize if gpu else (lambda: None)

        def step():
            h.grad, head.weight.grad = None, None
            logits, _ = head(h)
            per_token = model.compute_language_model_loss(labels, logits)
            del logits
            loss = masked_loss_sum(per_token, weight)
            loss.backward()
            return loss.detach()

        step()  # compile / autotune
        h.grad, head.weight.grad = None, None
        sync()
        if gpu:
            torch.cuda.reset_peak_memory_stats()
            held = torch.cuda.memory_allocated()
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            loss = step()
            sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() - held if gpu else None
        logits = S * cfg.padded_vocab_size
        got = {"loss": loss.item(), "h_grad": h.grad.float().clone(), "w_grad": head.weight.grad.float().clone()}
        ref = ref or got
        rel = lambda k: ((got[k] - ref[k]).abs().max() / ref[k].abs().max()).item()
        row = {
            "name": f"cross_entropy_{fusion}", "fusion": fusion, "kernel_used": lm_loss_kernel(model), "device": torch.cuda.get_device_name() if gpu else "cpu",
            "tokens": S, "padded_vocab": cfg.padded_vocab_size, "iters": args.iters,
            "ms_median": round(1000 * statistics.median(times), 2),
            "peak_above_held_gib": round(peak / 2**30, 2) if gpu else None,
            "bytes_per_logit": round(peak / logits, 2) if gpu else None,
            "loss": got["loss"], "loss_rel_diff_vs_none": abs(got["loss"] - ref["loss"]) / abs(ref["loss"]),
            "h_grad_rel_diff_vs_none": rel("h_grad"), "w_grad_rel_diff_vs_none": rel("w_grad"),
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
        }
        result_line.emit(row)
        rows.append(row)
        del model, head, h, got
        if gpu:
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    distributed.destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
