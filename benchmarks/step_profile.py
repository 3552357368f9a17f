"""Where a training step's GPU time goes, from torch-profiler Chrome traces (one per rank).

    python benchmarks/step_profile.py RUN_DIR/profile/trace_steps6-6_rank*.json --out-dir OUT [--slim OUT]

Reads the traces `train.profile_steps=[first, last]` writes (megaindex/training/tracking.py) and
writes OUT/step_profile.md (tables, also printed), OUT/step_profile.json and OUT/step_profile.png
(a stacked bar per rank: the step's wall time by category, then exposed communication and idle).

* **Steps**: the trainer wraps each recorded step in a `megaindex.step#N` range (megaindex/trace_ranges.py;
  `ProfilerStep#N` works too). A step's kernels are those launched inside it; its window runs from
  the range's start to the later of its end and the last kernel's end. A trace without step ranges
  is one window from the first kernel to the last, divided by `--steps` (default: from its name).
* **Categories** come from RULES, one table, first match wins: a kernel-name pattern and/or a pattern
  over the CPU ops the kernel was launched from (its *context*: the ranges and ops enclosing the
  launch, and for a backward kernel also those enclosing the forward op of the same autograd
  sequence number). Unmatched kernels go to `other`, whose top names are listed so a missing rule shows.
* **Per category**: GPU time (sum of kernel durations, ms per step), % of the step's wall time (sums
  over overlapping streams can pass 100%), kernel count, and the *wall share*: each instant of the
  step given to the compute kernels running then (split evenly), else to the communication
  kernels running then (exposed communication), else to `idle`; the wall shares add up to the step.
* **Step**: wall time; GPU busy = the union of compute kernels (everything but NCCL, memcpy/memset
  included); communication = the union of NCCL kernels, hidden (under compute) vs exposed; idle =
  no kernel at all. The largest idle gaps are listed with what the host was doing: the stack of CPU
  ranges/ops covering the gap's middle on the thread that ran the step (and the innermost op of
  any other thread busy then), and all idle time is summed by (innermost megaindex range,
  innermost op) of that thread. The tables and the PNG: benchmarks/step_profile_report.py.
* `--slim DIR` writes DIR/trace_rank<R>.slim.json.gz: the kernels (with their step and context in
  args), the ranges and the CPU ops of 20 us or more; this script reads it back like a full trace.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
from pathlib import Path

import step_profile_report

STEP_RANGE = re.compile(r"^(?:megaindex\.step|ProfilerStep)#(\d+)$")

# (category, rule, kernel-name pattern or None, context pattern or None); first match wins. Order:
# NCCL first (launched from inside any op), then kernels known by name, then generic kernels by the
# op they ran for, then generic torch kernels.
RULES: list[tuple[str, str, str | None, str | None]] = [
    ("comm_p2p", "nccl send/recv (CP ring, pipeline)", r"nccl\w*(SendRecv|Send|Recv)", None),
    ("comm_all_reduce", "nccl all-reduce", r"nccl\w*AllReduce", None),
    ("comm_reduce_scatter", "nccl reduce-scatter (DP grads)", r"nccl\w*ReduceScatter", None),
    ("comm_all_gather", "nccl all-gather (DP params)", r"nccl\w*AllGather", None),
    ("comm_other", "other nccl / userbuffers", r"nccl|userbuffers", None),
    ("attention", "cuDNN fused attention forward (sdpa fprop)", r"(sdpa|cudnn_generated_fort_native).*fprop", None),
    ("attention", "cuDNN fused attention backward (sdpa bprop, dO.O, dQ convert)",
     r"(sdpa|cudnn_generated_fort_native).*bprop|compute_dot_do_o|convert_dq|dot_do_o", None),
    ("attention", "cuDNN fused attention, other sdpa kernels", r"sdpa|cudnn_generated_fort_native", None),
    ("attention", "flash-attention kernels", r"flash_?attn|flash_attention|flash_(fwd|bwd)|flash::|fmha|FlashAttn", None),
    ("attention", "TE CP THD corrections (out/lse/grad)", r"context_parallel::|thd_(out|grad)_correction|thd_lse|thd_read", None),
    ("gemm", "cuBLAS/cuBLASLt/CUTLASS GEMMs", r"nvjet|gemm|gemv|cutlass|cublas|xmma|splitKreduce", None),
    ("optimizer", "multi-tensor Adam / l2norm (grad clip)", r"multi_tensor|adam|l2norm|lamb_", None),
    ("norm", "RMSNorm / LayerNorm kernels (TE, cuDNN, apex)", r"rmsnorm|layernorm|layer_norm|rms_norm|\bln_(fwd|bwd)|norm_(fwd|bwd)", None),
    ("rope", "rotary embedding kernels", r"(?<![a-z])rope|rotary", None),
    ("swiglu", "gated activation kernels", r"swiglu|silu|gated_act|geglu", None),
    ("fp8_cast", "TE FP8 quantization: cast(-transpose), amax, scale update (FP8 runs)",
     r"cast_transpose|cast_fp8|cast_only|quantize|amax|compute_scale_from|partial_cast|delayed_scaling|"
     r"fp8_block_scaling|transformer_engine::\w*transpose|__nv_fp8_e[45]m[23]", None),
    ("cross_entropy", "cross-entropy kernels (TE triton, torch)", r"cross_?entropy|online_softmax|nll_loss|log_softmax", None),
    ("memcpy", "memory copies", r"^Memcpy", None),
    ("memset", "memory sets", r"^Memset", None),
    ("attention", "generic kernels inside TE's CP attention (KV chunk copies, LSE/out merges)", None,
     r"AttnFuncWithCP|attn_forward_func_with_cp|FusedAttnFunc"),
    ("rope", "generic kernels inside RoPE", None, r"RoPE|rotary"),
    ("swiglu", "generic kernels inside megatron's SwiGLU", None, r"SwiGLU|swiglu"),
    ("cross_entropy", "vocab-parallel cross-entropy pieces", None, r"CrossEntropy|cross_entropy"),
    ("cross_entropy", "-inf fill of the padded vocabulary columns before the loss (megaindex head)", None, r"_FillPaddedColumns"),
    ("norm_head", "Norm-Head row normalisation (fwd + bwd)", None, r"megaindex\.norm_head"),
    ("optimizer", "generic kernels in the optimizer phase", None, r"Optimizer\.step|megaindex\.optimizer"),
    ("elementwise", "embedding lookup and its backward (token-id sort, gradient scatter)", None, r"EmbeddingBackward|aten::embedding"),
    ("elementwise", "generic torch / triton kernels", r"at::native|elementwise|reduce_kernel|triton_|CatArray|Fill|Copy|index", None),
]
CATEGORIES = {
    "attention": "cuDNN/flash fused attention fprop+bprop, TE's CP ring corrections and their copies",
    "gemm": "all matrix multiplies (QKV, proj, fc1, fc2, LM head; fwd, dgrad, wgrad)",
    "norm": "RMSNorm kernels (TE's fused norm in LayerNormLinear)",
    "rope": "rotary position embedding (TE fused RoPE, THD)",
    "swiglu": "SwiGLU activation fwd/bwd",
    "fp8_cast": "FP8 runs: quantizing GEMM inputs (cast, cast-transpose), amax and scaling-factor kernels",
    "cross_entropy": "cross-entropy: TE's triton kernels or megatron's vocab-parallel pieces, and the head's -inf fill of the padded vocabulary",
    "norm_head": "Norm-Head: L2-normalising the LM head's rows and its backward",
    "optimizer": "distributed Adam, grad-norm, param copies in the optimizer phase",
    "comm_p2p": "NCCL send/recv: the CP ring's KV exchange",
    "comm_all_reduce": "NCCL all-reduce (loss, grad norm; TP)",
    "comm_reduce_scatter": "NCCL reduce-scatter (DP/CP gradient buckets)",
    "comm_all_gather": "NCCL all-gather (distributed optimizer params)",
    "comm_other": "other NCCL kernels",
    "memcpy": "memcpy (H2D batches, D2H .item(), D2D)",
    "memset": "memset (zeroed grad buffers, workspaces)",
    "elementwise": "generic torch/triton elementwise and reduction kernels not claimed above",
    "other": "kernels no rule names (see the top names)",
}
COMM = [c for c in CATEGORIES if c.startswith("comm_")]
ORDER = list(CATEGORIES)
_COMPILED = [(c, r, re.compile(k, re.I) if k else None, re.compile(x) if x else None) for c, r, k, x in RULES]


class TraceError(Exception):
    """Bad input: a one-line message naming the file."""


def classify(name: str, context: str, cat: str = "kernel") -> tuple[str, str]:
    """(category, rule) of one GPU event; `cat` is the trace's event category."""
    if cat == "gpu_memcpy":
        return "memcpy", "memory copies"
    if cat == "gpu_memset":
        return "memset", "memory sets"
    for category, rule, kpat, xpat in _COMPILED:
        if (kpat is None or kpat.search(name)) and (xpat is None or xpat.search(context)):
            return category, rule
    return "other", "no rule"


# ---- reading ------------------------------------------------------------------------------------
def load(path: Path) -> list[dict]:
    if not path.is_file():
        raise TraceError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            data = json.load(f)
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: not a Chrome trace (JSON): {e}") from None
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise TraceError(f"{path}: no traceEvents list: not a torch-profiler Chrome trace")
    return [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and "ts" in e]


GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_CATS = ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver", "python_function")


class Trace:
    """One rank's trace: GPU events with their launch time and context, host events per thread."""

    def __init__(self, path: Path, events: list[dict]):
        self.path = path
        self.gpu = [e for e in events if e.get("cat") in GPU_CATS]
        host = [e for e in events if e.get("cat") in HOST_CATS]
        self.threads: dict = collections.defaultdict(list)
        for e in host:
            self.threads[(e.get("pid"), e.get("tid"))].append(e)
        for evs in self.threads.values():
            evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        self.steps = sorted((e for e in host if e.get("cat") == "user_annotation" and STEP_RANGE.match(e.get("name", ""))),
                            key=lambda e: e["ts"])
        self._contexts()

    def _contexts(self) -> None:
        """Each launch's enclosing host ranges/ops; a backward op also gets its forward op's."""
        stacks: dict[int, tuple[str, ...]] = {}  # id(event) -> names of its ancestors and itself
        fwd_by_seq: dict[int, tuple[str, ...]] = {}
        for evs in self.threads.values():
            open_: list[dict] = []
            for e in evs:
                while open_ and open_[-1]["ts"] + open_[-1].get("dur", 0) <= e["ts"]:
                    open_.pop()
                names = tuple(o["name"] for o in open_) + (e.get("name", ""),)
                stacks[id(e)] = names
                open_.append(e)
                seq = (e.get("args") or {}).get("Sequence number")
                if seq and not any(n.startswith("autograd::engine") for n in names):  # 0: no autograd node
                    fwd_by_seq.setdefault(seq, names)
        launch: dict = {}
        for evs in self.threads.values():
            open_seq: list[tuple[float, int]] = []  # (end, seq) of enclosing backward ops
            for e in evs:
                while open_seq and open_seq[-1][0] <= e["ts"]:
                    open_seq.pop()
                args = e.get("args") or {}
                if e.get("name", "").startswith("autograd::engine::evaluate_function") and args.get("Sequence number"):
                    open_seq.append((e["ts"] + e.get("dur", 0), args["Sequence number"]))
                corr = args.get("correlation")
                if corr is not None and e.get("cat") in ("cuda_runtime", "cuda_driver"):
                    ctx = stacks[id(e)][:-1]  # the ranges and ops around the launch call
                    for _, seq in open_seq:
                        ctx = fwd_by_seq.get(seq, ()) + ctx
                    launch[corr] = (e["ts"], " > ".join(ctx))
        for k in self.gpu:
            args = k.setdefault("args", {})
            if "megaindex_context" not in args:
                ts, ctx = launch.get(args.get("correlation"), (k["ts"], ""))
                args["megaindex_launch_ts"], args["megaindex_context"] = ts, ctx
            args["megaindex_category"], args["megaindex_rule"] = classify(k.get("name", ""), args["megaindex_context"], k.get("cat"))

    def windows(self, steps_hint: int | None) -> tuple[list[tuple[str, float, float, list[dict]]], int]:
        """([(label, start, end, GPU events)] in µs, number of steps they hold)."""
        if self.steps:
            out = []
            for s in self.steps:
                a, b = s["ts"], s["ts"] + s.get("dur", 0)
                label = f"step {STEP_RANGE.match(s['name']).group(1)}"
                ks = [k for k in self.gpu if (k["args"]["megaindex_step"] == label if "megaindex_step" in k["args"]
                                              else a <= k["args"]["megaindex_launch_ts"] <= b)]
                end = max([b] + [k["ts"] + k.get("dur", 0) for k in ks])
                for k in ks:
                    k["args"]["megaindex_step"] = label
                out.append((label, a, end, ks))
            return out, len(out)
        a = min(k["ts"] for k in self.gpu)
        b = max(k["ts"] + k.get("dur", 0) for k in self.gpu)
        m = re.search(r"steps(\d+)-(\d+)", self.path.name)
        n = steps_hint or (int(m.group(2)) - int(m.group(1)) + 1 if m else 1)
        return [(f"{n} steps (no step ranges)", a, b, self.gpu)], n


# ---- interval arithmetic ------------------------------------------------------------------------
def union(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(iv):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def length(iv) -> float:
    return sum(b - a for a, b in iv)


def intersect(x, y) -> float:
    """Total overlap of two unions."""
    i = j = 0
    tot = 0.0
    while i < len(x) and j < len(y):
        lo, hi = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        tot += max(0.0, hi - lo)
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return tot


def wall_shares(ks: list[dict], a: float, b: float) -> dict[str, float]:
    """µs of [a, b] per category: compute kernels running split evenly, else exposed comm, else idle."""
    edges = []
    for k in ks:
        s, e = max(a, k["ts"]), min(b, k["ts"] + k.get("dur", 0))
        if e > s:
            edges += [(s, 1, k["args"]["megaindex_category"]), (e, -1, k["args"]["megaindex_category"])]
    edges.sort(key=lambda t: (t[0], t[1]))
    share: dict[str, float] = collections.defaultdict(float)
    comp: collections.Counter = collections.Counter()
    comm: collections.Counter = collections.Counter()
    t = a
    for x, d, cat in edges:
        if x > t:
            active = comp if sum(comp.values()) else comm
            n = sum(active.values())
            if n:
                for c, cnt in active.items():
                    share[c] += (x - t) * cnt / n
            else:
                share["idle"] += x - t
            t = x
        (comm if cat in COMM else comp)[cat] += d
        for ctr in (comp, comm):
            if ctr[cat] == 0:
                del ctr[cat]
    share["idle"] += max(0.0, b - t)
    return share


# ---- analysis -----------------------------------------------------------------------------------
def stacks_at(trace: Trace, tid, times: list[float]) -> list[list[str]]:
    """For each time (any order), the names of the host events on thread `tid` covering it, outermost
    first: one sweep over the thread's events."""
    evs = trace.threads.get(tid, [])
    out: list[list[str]] = [[] for _ in times]
    open_: list[dict] = []
    i = 0
    for j in sorted(range(len(times)), key=times.__getitem__):
        t = times[j]
        while i < len(evs) and evs[i]["ts"] <= t:
            while open_ and open_[-1]["ts"] + open_[-1].get("dur", 0) <= evs[i]["ts"]:
                open_.pop()
            open_.append(evs[i])
            i += 1
        out[j] = [e["name"] for e in open_ if e["ts"] + e.get("dur", 0) >= t]
    return out


def idle_by_host(stacks: list[list[str]], gaps: list[tuple], n: int, k: int = 10) -> list[dict]:
    """Idle time per (innermost megaindex range, innermost host op) the step's thread was in."""
    acc: dict = collections.defaultdict(lambda: [0.0, 0])
    for st, (g, *_rest) in zip(stacks, gaps):
        ranges = [x for x in st if x.startswith("megaindex.") and not STEP_RANGE.match(x)]
        ops = [x for x in st if not x.startswith("megaindex.") and not STEP_RANGE.match(x)]
        key = " > ".join(([ranges[-1]] if ranges else []) + ([ops[-1]] if ops else [])) or "(nothing on the step's thread)"
        acc[key][0] += g
        acc[key][1] += 1
    rows = sorted(acc.items(), key=lambda kv: -kv[1][0])[:k]
    return [{"host": key, "idle_ms": round(us / n / 1000, 3), "gaps": round(c / n, 1)} for key, (us, c) in rows]


def analyse(path: Path, steps_hint: int | None = None, n_gaps: int = 10, events: list[dict] | None = None) -> dict:
    trace = Trace(path, load(path) if events is None else events)
    if not trace.gpu:
        steps = ", ".join(s["name"] for s in trace.steps) or "none"
        raise TraceError(f"{path}: {sum(map(len, trace.threads.values()))} host events, step ranges: {steps}, but no GPU "
                         f"kernels: recorded without CUDA activity (a CPU-only run?); profile on a GPU node")
    wins, n = trace.windows(steps_hint)
    main_tid = next(((s.get("pid"), s.get("tid")) for s in trace.steps), None)
    if main_tid is None:
        main_tid = max(trace.threads, key=lambda t: sum(e.get("cat") == "cuda_runtime" for e in trace.threads[t]), default=None)
    cats = {c: {"gpu_ms": 0.0, "kernels": 0, "wall_share_ms": 0.0} for c in ORDER + ["idle"]}
    rules: dict = collections.defaultdict(lambda: {"category": "", "gpu_ms": 0.0, "kernels": 0})
    names: dict = collections.defaultdict(lambda: {"gpu_ms": 0.0, "kernels": 0, "contexts": collections.Counter()})
    tot = collections.Counter()
    gaps = []
    if not any(w[3] for w in wins):
        raise TraceError(f"{path}: no GPU kernel was launched inside the step ranges ({', '.join(w[0] for w in wins)})")
    for label, a, b, ks in wins:
        tot["wall"] += b - a
        comp = union([(k["ts"], k["ts"] + k.get("dur", 0)) for k in ks if k["args"]["megaindex_category"] not in COMM])
        comm = union([(k["ts"], k["ts"] + k.get("dur", 0)) for k in ks if k["args"]["megaindex_category"] in COMM])
        tot["busy"] += length(comp)
        tot["comm"] += length(comm)
        tot["hidden"] += intersect(comp, comm)
        active = union(comp + comm)
        tot["kernels"] += len(ks)
        for k in ks:
            c, r = k["args"]["megaindex_category"], k["args"]["megaindex_rule"]
            dur = k.get("dur", 0)
            cats[c]["gpu_ms"] += dur
            cats[c]["kernels"] += 1
            rules[r]["category"] = c
            rules[r]["gpu_ms"] += dur
            rules[r]["kernels"] += 1
            nm = names[(c, k.get("name", ""))]
            nm["gpu_ms"] += dur
            nm["kernels"] += 1
            nm["contexts"][_short(k["args"]["megaindex_context"])] += dur  # shown: the context with the most GPU time
        for c, us in wall_shares(ks, a, b).items():
            cats[c]["wall_share_ms"] += us
        edges = [a] + [x for iv in active for x in iv] + [b]
        for s, e in zip(edges[0::2], edges[1::2]):
            if e - s > 0:
                gaps.append((e - s, s, a, label))
    wall = tot["wall"]
    per = lambda us: round(us / n / 1000, 3)  # noqa: E731 (µs in all windows -> ms per step)
    for c in cats.values():
        c["pct_of_step"] = round(100 * c["gpu_ms"] / wall, 2)
        c["wall_share_pct"] = round(100 * c["wall_share_ms"] / wall, 2)
        c["gpu_ms"], c["wall_share_ms"], c["kernels"] = per(c["gpu_ms"]), per(c["wall_share_ms"]), round(c["kernels"] / n, 1)
    for x in rules.values():
        x["gpu_ms"], x["kernels"] = per(x["gpu_ms"]), round(x["kernels"] / n, 1)
    gaps.sort(key=lambda x: (-x[0], x[1]))
    main_stacks = stacks_at(trace, main_tid, [s + g / 2 for g, s, _, _ in gaps])
    mids = [s + g / 2 for g, s, _, _ in gaps[:n_gaps]]
    other_stacks = {tid: stacks_at(trace, tid, mids) for tid in trace.threads if tid != main_tid}
    top_gaps = []
    for i, (g, s, a, label) in enumerate(gaps[:n_gaps]):
        stack = [x for x in main_stacks[i] if not STEP_RANGE.match(x)]
        others = [f"{tid[1]}: {st[i][-1]}" for tid, st in other_stacks.items() if st[i]]
        top_gaps.append({"step": label, "at_ms": round((s - a) / 1000, 3), "ms": round(g / 1000, 3),
                         "host": " > ".join(stack[-5:]) or "(no host event on the step's thread)", "other_threads": others[:2]})
    top = lambda cat, k: sorted(({"name": nm, "gpu_ms": per(v["gpu_ms"]), "kernels": round(v["kernels"] / n, 1),  # noqa: E731
                                  "context": v["contexts"].most_common(1)[0][0]}
                                 for (c, nm), v in names.items() if c == cat), key=lambda d: -d["gpu_ms"])[:k]
    return {
        "trace": str(path), "rank": rank_of(path), "steps": [w[0] for w in wins], "n_steps": n,
        "wall_ms": per(wall), "gpu_busy_ms": per(tot["busy"]), "gpu_busy_pct": round(100 * tot["busy"] / wall, 2),
        "comm_ms": per(tot["comm"]), "comm_hidden_ms": per(tot["hidden"]), "comm_exposed_ms": per(tot["comm"] - tot["hidden"]),
        "idle_ms": cats["idle"]["wall_share_ms"],
        "idle_pct": cats["idle"]["wall_share_pct"], "kernels": round(tot["kernels"] / n, 1),
        "gaps_over_1ms": sum(1 for g in gaps if g[0] >= 1000) / n, "largest_gaps": top_gaps,
        "idle_by_host": idle_by_host(main_stacks, gaps, n),
        "categories": cats, "rules": dict(rules),
        "top_kernels": {c: top(c, 10 if c in ("other", "elementwise") else 5) for c in ORDER},
    }


def _short(ctx: str, keep: int = 4) -> str:
    parts = [p for p in ctx.split(" > ") if p and not STEP_RANGE.match(p)]
    return " > ".join(parts[-keep:])


def rank_of(path: Path) -> int | None:
    m = re.search(r"rank(\d+)", path.name)
    return int(m.group(1)) if m else None


# ---- slim traces and the command -------------------------------------------------------------
def write_slim(trace_events: list[dict], gpu: list[dict], dest: Path, min_host_us: float = 20.0) -> None:
    """The kernels (step, context and category in args), ranges and host ops >= min_host_us, gzipped."""
    keep = [e for e in trace_events if e.get("cat") in ("user_annotation", "cpu_op", "cuda_runtime", "python_function")
            and (e.get("cat") == "user_annotation" or e.get("dur", 0) >= min_host_us)]
    for e in keep:
        e.pop("args", None) if e.get("cat") != "user_annotation" else None
    for k in gpu:
        k["args"] = {a: v for a, v in k["args"].items() if a.startswith("megaindex_") or a in ("stream", "device", "correlation")}
    with gzip.open(dest, "wt") as f:
        json.dump({"traceEvents": keep + gpu}, f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+", type=Path, help="Chrome traces (.json or .json.gz), one per rank")
    ap.add_argument("--out-dir", type=Path, default=None, help="writes step_profile.md/.json/.png here (default: print only)")
    ap.add_argument("--title", default="Step profile")
    ap.add_argument("--steps", type=int, default=None, help="steps in a trace without step ranges (default: from its name)")
    ap.add_argument("--gaps", type=int, default=10, help="largest idle gaps listed per rank")
    ap.add_argument("--slim", type=Path, default=None, help="also write DIR/trace_rank<R>.slim.json.gz")
    args = ap.parse_args(argv)
    results = []
    try:
        for i, path in enumerate(args.traces):
            events = load(path)
            r = analyse(path, args.steps, args.gaps, events=events)
            if r["rank"] is None:
                r["rank"] = i
            results.append(r)
            print(f"{path}: {r['wall_ms']:.1f} ms per step, GPU busy {r['gpu_busy_pct']:.1f}%, idle {r['idle_pct']:.1f}%", flush=True)
            if args.slim:
                args.slim.mkdir(parents=True, exist_ok=True)
                write_slim(events, [e for e in events if e.get("cat") in GPU_CATS], args.slim / f"trace_rank{r['rank']}.slim.json.gz")
            del events
    except TraceError as e:
        print(f"step_profile: {e}", file=sys.stderr)
        return 1
    md = step_profile_report.markdown(results, args.title, ORDER)
    print(md)
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "step_profile.md").write_text(md)
        (args.out_dir / "step_profile.json").write_text(json.dumps(
            {"title": args.title, "ranks": results, "categories": CATEGORIES,
             "rules": [{"category": c, "rule": r, "kernel": k, "context": x} for c, r, k, x in RULES]}, indent=1))
        step_profile_report.plot(results, args.title, args.out_dir / "step_profile.png", ORDER)
        print(f"wrote {args.out_dir}/step_profile.md, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
