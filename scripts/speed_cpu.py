"""Training iterations/s of resexp's own loop on this machine, batch 128 (writes results/speed_cpu.md).

Trains each model for real through `resexp.engine.train` on the synthetic set (same shape as
CIFAR-10) and reads the measured it/s from the run's summary.json.

    python scripts/speed_cpu.py [--iters 60] [--models resnet20 resnet56]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

from resexp.config import compose
from resexp.engine.train import train


def measure(model: str, iters: int, root: str) -> dict:
    cfg = compose([f"model={model}", "data=synthetic", f"trainer.max_iters={iters}", f"trainer.eval_every={iters}",
                   f"trainer.log_every={iters}", f"trainer.checkpoint_every={iters}", "trainer.progress=none",
                   f"run.root={root}"])
    return train(cfg)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--out", default="results/speed_cpu.md")
    args = parser.parse_args()
    lines = [
        "# CPU training speed (batch 128, fp32, channels_last)", "",
        f"`python scripts/speed_cpu.py --iters {args.iters}` on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}. The whole run (data on the device, "
        "augmentation, forward, backward, SGD step, one evaluation at the end) is timed by the trainer.", "",
        "| model | it/s | images/s | s/iteration |", "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as root:
        for model in args.models:
            speed = measure(model, args.iters, root)["iters_per_s"]
            lines.append(f"| {model} | {speed:.2f} | {speed * 128:.0f} | {1 / speed:.3f} |")
            print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
