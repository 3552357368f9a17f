"""`megaindex doctor`: what this environment has, and what the trainer will therefore use.

Reports versions (Python, torch, CUDA, cuDNN, NCCL, Transformer Engine, apex, flash-attn,
megatron-core, megaindex), the GPUs, and the decisions the code makes from them: the attention
backend and RoPE path (megaindex.model.build.te_available is the one rule), context parallelism,
the optimizer megatron-core picks, the collective backend. Each missing piece is named with what
it costs. Safe on a CPU box: no CUDA context is needed beyond device queries, nothing is trained,
and megatron-core itself is not imported (only its version is read).
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform
import sys

import torch


def _dist_version(*names: str) -> str | None:
    for n in names:
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            continue
    return None


def _import_error(module: str) -> str | None:
    """None if `module` imports; else the error (a broken install is as good as none)."""
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
        return f"{type(e).__name__}: {e}".splitlines()[0][:300]
    return None


def _component(module: str, *dists: str, try_import: bool = True) -> dict:
    """{installed, version, usable, error} for an optional package."""
    installed = importlib.util.find_spec(module) is not None
    version = _dist_version(*dists) if installed else None
    error = _import_error(module) if installed and try_import else None
    return {"installed": installed, "version": version, "usable": installed and error is None, "error": error}


def _nccl_version() -> str | None:
    try:
        v = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001 - CPU builds have no NCCL
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _gpus() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                    "compute_capability": f"{p.major}.{p.minor}"})
    return out


def _cross_entropy_kernels(use_te: bool) -> str:
    """Which model.cross_entropy_fusion values this machine can run (megaindex.model.lm_loss)."""
    if not use_te:
        return "none, native (megatron); te needs Transformer Engine and a GPU"
    from megaindex.model.lm_loss import te_cross_entropy_kernel

    _, why = te_cross_entropy_kernel()
    if why is None:
        return "none, native (megatron), te (TE Triton kernel over the bf16 logits; what auto, the default, runs)"
    return f"none, native; te unavailable: {why} (auto, the default, runs none)"


def diagnose() -> dict:
    """Everything `megaindex doctor` prints, as a dict (`--json`)."""
    import megaindex

    cuda = torch.cuda.is_available()
    gpus = _gpus()
    # TE on a CPU box: importing transformer_engine.pytorch needs CUDA libraries, so only check presence.
    te = _component("transformer_engine.pytorch" if cuda else "transformer_engine", "transformer-engine",
                    "transformer_engine", "transformer-engine-torch", try_import=cuda)
    apex = _component("apex", "apex", try_import=cuda)
    flash = _component("flash_attn", "flash-attn", "flash_attn", try_import=cuda)
    mcore = _dist_version("megatron-core", "megatron_core")
    cudnn, cudnn_problem = None, None
    if cuda and torch.backends.cudnn.is_available():
        try:
            cudnn = str(torch.backends.cudnn.version())
        except RuntimeError as e:  # e.g. a second cuDNN (another package's) loaded before torch's
            cudnn_problem = f"cuDNN: {e}"
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "nccl": _nccl_version(),
        "transformer_engine": te["version"],
        "apex": apex["version"],
        "flash_attn": flash["version"],
        "megatron_core": mcore,
        "megaindex": getattr(megaindex, "__version__", None) or _dist_version("megaindex"),
    }

    use_te = cuda and te["installed"]  # the rule of megaindex.model.build.te_available
    bf16 = cuda and torch.cuda.is_bf16_supported()
    features = {
        "device": "cuda" if cuda else "cpu",
        "collectives": "nccl" if cuda and torch.distributed.is_nccl_available() else "gloo",
        "precision": "bf16" if bf16 else "fp32",
        "transformer_impl": "transformer_engine" if use_te else "local",
        "attention": ("TE DotProductAttention, THD packed (cuDNN fused / flash), per-document masks by cu_seqlens"
                      if use_te else "reference attention (megaindex.model.reference_attention: one torch SDPA call with a token x token document mask)"),
        "context_parallel": ("TE ring attention (cp_comm_type p2p / a2a / a2a+p2p)" if use_te
                             else "reference CP attention (all-gather K/V; correctness path, not for scale)"),
        "rope": "TE fused RoPE (THD)" if use_te else "unfused RoPE (megatron local)",
        "norm_and_linear": "TE fused RMSNorm + GEMMs (bf16/fp8)" if use_te else "torch RMSNorm + megatron local linear",
        "fp8": "available (TE, Hopper+)" if use_te and gpus and float(gpus[0]["compute_capability"]) >= 9.0 else "unavailable",
        "optimizer": ("TE FusedAdam" if te["usable"] and cuda else "apex FusedAdam" if apex["usable"]
                      else "torch AdamW"),
        "cross_entropy": _cross_entropy_kernels(use_te),
    }

    missing = []
    if not cuda:
        missing.append("CUDA GPU: none visible. This is the CPU development path (gloo, fp32, reference attention): "
                       "correct for tests and tiny recipes, orders of magnitude too slow for the 32K recipes.")
    if not te["installed"]:
        missing.append("Transformer Engine: not installed. No fused THD attention, TE ring context parallelism, fused "
                       "RoPE or FP8; the reference attention builds a token x token mask over the whole packed row and "
                       "all-gathers K/V under CP (memory and time grow with the square of seq_length): not usable at 32K. Install the `gpu` extra or use "
                       "the NGC container (Dockerfile).")
    elif te["error"]:
        missing.append(f"Transformer Engine: installed but does not import ({te['error']}); usually a CUDA/torch "
                       "mismatch. transformer_impl=auto will still pick it and fail: fix the install, or set "
                       "model.transformer_impl=local for the (slow) reference path.")
    if cuda and not apex["installed"]:
        missing.append("apex: not installed. Only matters without TE (optimizer falls back to torch AdamW, a few % slower).")
    if cuda and not flash["installed"]:
        missing.append("flash-attn: not installed. TE then uses its cuDNN fused attention, which handles THD as well; "
                       "only attention_backend=flash is unavailable.")
    if cuda and not bf16:
        missing.append("bf16: this GPU has no bf16 support; the recipes' precision: bf16 will not run.")
    if mcore is None:
        missing.append("megatron-core: not installed; megaindex cannot build models or train. pip install megatron-core==0.19.2.")
    if cudnn_problem:
        missing.append(f"{cudnn_problem} Put torch's bundled cuDNN first (check LD_LIBRARY_PATH and other "
                       "packages that ship libcudnn); a mismatched cuDNN can fail or slow TE's fused attention.")
    return {"versions": versions, "gpus": gpus, "features": features, "missing": missing,
            "python_executable": sys.executable}


def format_report(r: dict) -> str:
    v, f = r["versions"], r["features"]
    lines = ["# versions"]
    lines += [f"  {k:<19} {val if val is not None else '-'}" for k, val in v.items()]
    lines.append(f"  {'python executable':<19} {r['python_executable']}")
    lines.append("\n# GPUs")
    lines += ([f"  {g['index']}: {g['name']}, {g['memory_gib']} GiB, sm {g['compute_capability']}" for g in r["gpus"]]
              or ["  none (CPU only)"])
    lines.append("\n# what the trainer will use")
    lines += [f"  {k:<19} {val}" for k, val in f.items()]
    lines.append("\n# missing, and what it costs")
    lines += [f"  - {m}" for m in r["missing"]] or ["  nothing: full GPU path"]
    return "\n".join(lines)
