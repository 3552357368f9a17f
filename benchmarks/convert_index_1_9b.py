"""Benchmark: convert an Index-1.9B-sized random checkpoint HF -> megaindex -> HF on this machine.

    python benchmarks/convert_index_1_9b.py /work/bench_ckpt [--dtype bf16]

Creates DIR/hf (random bf16 weights with Index-1.9B's shapes: 36 layers, hidden 2048, ffn 5888,
vocab 65029, Norm-Head config) unless it exists, then times each conversion in a fresh child process
(the same command a user runs) and reports its wall time and peak resident memory. Keep DIR outside
the repository: the checkpoint is 4.3 GB in bf16.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
INDEX_1_9B = dict(num_hidden_layers=36, hidden_size=2048, num_attention_heads=16, num_key_value_heads=16,
                  intermediate_size=5888, vocab_size=65029, max_position_embeddings=4096, rms_norm_eps=1e-6,
                  rope_theta=10000.0)


def make_random_checkpoint(path: Path, dtype: torch.dtype) -> None:
    """Write random weights shard by shard (never the whole model in memory)."""
    from megaindex.convert.hf_io import ShardedSafetensorsWriter

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    c = INDEX_1_9B
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: (torch.randn(*shape, generator=g) * 0.02).to(dtype)  # noqa: E731
    w = ShardedSafetensorsWriter(tmp, max_shard_bytes=2 * 1024**3)
    w.add("model.embed_tokens.weight", rand(v, h))
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.add(p + "input_layernorm.weight", torch.ones(h, dtype=dtype))
        for n in "qkvo":
            w.add(p + f"self_attn.{n}_proj.weight", rand(h, h))
        w.add(p + "post_attention_layernorm.weight", torch.ones(h, dtype=dtype))
        w.add(p + "mlp.gate_proj.weight", rand(f, h))
        w.add(p + "mlp.up_proj.weight", rand(f, h))
        w.add(p + "mlp.down_proj.weight", rand(h, f))
    w.add("model.norm.weight", torch.ones(h, dtype=dtype))
    w.add("lm_head.weight", rand(v, h))
    w.finish()
    config = {"architectures": ["IndexForCausalLM"], "model_type": "index", "norm_head": True,
              "tie_word_embeddings": False, "torch_dtype": str(dtype).removeprefix("torch."), **c}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path, help="work directory outside the repository")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    a = ap.parse_args()
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    hf = a.dir / f"hf_{a.dtype}"
    if not hf.exists():
        t = time.time()
        make_random_checkpoint(hf, dtype)
        print(f"[bench] random Index-1.9B-sized checkpoint written to {hf} in {time.time() - t:.0f}s", flush=True)
    size = sum(p.stat().st_size for p in hf.glob("*.safetensors")) / 1024**3
    py = sys.executable
    rows = []
    for name, cmd in (
        ("from-hf", [py, "tools/convert_from_hf.py", str(hf), str(a.dir / f"mg_{a.dtype}"), "--tp", "2", "--pp", "4", "--force"]),
        ("to-hf (llama)", [py, "tools/convert_to_hf.py", str(a.dir / f"mg_{a.dtype}"), str(a.dir / f"back_{a.dtype}"), "--force"]),
    ):
        # each child is measured alone: ru_maxrss of RUSAGE_CHILDREN is the max over children so far,
        # so run every measurement in its own wrapper process
        wrapper = [py, "-c", "import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True); "
                   "print('[bench] peak_rss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)", *cmd]
        start = time.time()
        out = subprocess.run(wrapper, check=True, cwd=REPO, capture_output=True, text=True)
        wall = time.time() - start
        sys.stdout.write(out.stdout[-2000:])
        peak = int(out.stdout.rsplit("[bench] peak_rss_kib", 1)[1].split()[0]) / 1024**2
        rows.append((name, wall, peak))
    print(f"\n[bench] checkpoint: {size:.2f} GiB of {a.dtype} safetensors")
    for name, wall, peak in rows:
        print(f"[bench] {name:15s} wall {wall:7.1f} s   peak RSS {peak:5.2f} GiB")


if __name__ == "__main__":
    main()
