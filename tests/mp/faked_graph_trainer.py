"""The trainer with `train.cuda_graph_impl=full_iteration` on CPU, the CUDA graph faked, against the eager
trainer in the same process, on the tiny SFT recipe: the step loader (data/step_batch.py, through DataLoader workers), the
static buffers and the static forward step must give the eager run's losses and statistics.

    python tests/mp/faked_graph_trainer.py RUN_DIR CACHE_DIR

A faked capture records what to run; a faked replay re-runs megatron's forward-backward on the
current static buffers (a real replay runs the captured kernels on them). Prints one JSON line
{"eager": [...], "graph": [...], "captures": N, "shapes": [...]} with each step's metrics. Run by
tests/test_cuda_graph.py.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import torch

from megaindex.config import load_config
from megaindex.training import cuda_graph
from megaindex.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
KEYS = ("loss", "grad_norm", "packing_efficiency", "model_tflop")


def run(run_dir: Path, cache: str, graph: bool) -> tuple[list[dict], Trainer]:
    # SFT rows with LongAlign weights: many conversations per row (the count is the sequence count),
    # document statistics that change from step to step
    cfg = load_config(str(REPO / "examples" / "tiny_long_sft.yaml"), [
        f"train.run_dir={run_dir}", f"data.cache_dir={cache}", "checkpoint.pretrained=null",
        "data.micro_batch_size=2", "train.train_iters=5", "train.eval_interval=0", "checkpoint.save_interval=0",
        "log.tensorboard=false", "log.plot=false", "optim.lr_warmup_iters=2", "log.log_interval=1",
        "data.num_workers=2", "data.static_thd_shapes=true",
        *(["train.cuda_graph_impl=full_iteration"] if graph else []),
    ])
    trainer = Trainer(cfg)
    trainer.train()
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: s[k] for k in KEYS} for s in steps], trainer


def fake_graphs() -> None:
    cuda_graph.check_runtime = lambda cfg: None
    cuda_graph.activate_capture_stream = lambda: "the run's stream"
    real = cuda_graph.FullIterationGraph
    cuda_graph.FullIterationGraph = partial(real, device=torch.device("cpu"))

    def capture(self, shape, key):
        def replay():
            shape.logs = self.run(iter(shape.microbatches), key[1])
        shape.graph = type("FakeGraph", (), {"replay": staticmethod(replay)})()
        self.captures += 1

    real._capture = capture


def main() -> int:
    run_dir, cache = Path(sys.argv[1]), sys.argv[2]
    eager, _ = run(run_dir / "eager", cache, graph=False)
    fake_graphs()
    graph, trainer = run(run_dir / "graph", cache, graph=True)
    print(json.dumps({"eager": eager, "graph": graph, "captures": trainer.graph.captures,
                      "shapes": sorted(trainer.graph.shapes), "eager_steps": cuda_graph.EAGER_STEPS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
