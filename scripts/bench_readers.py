"""How long the readers of run folders take on a large sweep (issue 28: `resexp table` on 2,000
runs in under 10 s on the 2-core machine).

    python scripts/bench_readers.py SWEEP [--runs 2000] [--out results/bench/readers_table_2000runs.md]

SWEEP is a small sweep of finished runs (the issue's fixture: `resexp sweep model=plain20,resnet20
seed=0,1,2 data=synthetic model.width=0.25 trainer.precision=fp32 data.train_size=2000
data.test_size=500 trainer.max_iters=20 trainer.log_every=5 trainer.eval_every=10
trainer.checkpoint_every=10 run.root=P run.sweep=base`). Its runs are copied into a scratch folder
as --runs runs, 500 per net (depth 20 and 32 of each kind: config.yaml's model.depth rewritten),
each with its own seed, so that no two are one run; then `resexp table` and `resexp status` are
timed on it, each as its own process, as a user runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

NETS = ((False, 20), (False, 32), (True, 20), (True, 32))


def build(sweep: Path, scratch: Path, runs: int) -> None:
    sources = {}
    for run in sorted(p.parent for p in sweep.glob("*/summary.json")):
        cfg = OmegaConf.load(run / "config.yaml")
        sources.setdefault(bool(cfg.model.get("residual", False)), run)
    per_net = runs // len(NETS)
    for residual, depth in NETS:
        source = sources[residual]
        for seed in range(per_net):
            target = scratch / f"{'resnet' if residual else 'plain'}{depth}_seed{seed}"
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
            cfg = OmegaConf.load(target / "config.yaml")
            cfg.model.depth, cfg.model.name, cfg.seed = depth, f"{'resnet' if residual else 'plain'}{depth}", seed
            OmegaConf.save(cfg, target / "config.yaml")
            summary = json.loads((target / "summary.json").read_text())
            summary["seed"] = seed
            (target / "summary.json").write_text(json.dumps(summary))


def timed(args: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "resexp.cli", *args], capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("results/bench/readers_table_2000runs.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name) / "runs"
        build(args.sweep, scratch, args.runs)
        table_s, table_rc = timed(["table", str(scratch), "-o", str(Path(scratch_name) / "out")])
        status_s, status_rc = timed(["status", str(scratch)])
    lines = [
        f"# Readers of {args.runs} run folders",
        "",
        f"`python scripts/bench_readers.py SWEEP --runs {args.runs}`: the issue-28 fixture's runs copied "
        f"{args.runs // len(NETS)} times per net (plain and ResNet, depth 20 and 32), each a process as a user runs it.",
        f"Measured on the shared 2-core CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores) "
        f"under load, {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "| command | wall time (s) | exit |",
        "|---|---|---|",
        f"| `resexp table` | {table_s:.1f} | {table_rc} |",
        f"| `resexp status` | {status_s:.1f} | {status_rc} |",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
