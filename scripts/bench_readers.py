"""How long the readers of run folders take on a large sweep, and their peak memory (issue 28:
`resexp table` on 2,000 runs in under `10 s`, `resexp report` in under `30 s` and `1 GiB`, on the
2-core machine).

    python scripts/bench_readers.py SWEEP [--runs 2000] [--out results/bench/readers_2000runs.md]

SWEEP is a small sweep of finished runs (the issue's fixture: `resexp sweep model=plain20,resnet20
seed=0,1,2 data=synthetic model.width=0.25 trainer.precision=fp32 data.train_size=2000
data.test_size=500 trainer.max_iters=20 trainer.log_every=5 trainer.eval_every=10
trainer.checkpoint_every=10 run.root=P run.sweep=base`). Its runs are copied into a scratch folder
as --runs runs, 500 per net (depth 20 and 32 of each kind: config.yaml's model.depth rewritten),
each with its own seed, so that no two are one run; then `resexp table`, `status`, `figure` and
`report` are timed on it, each as its own process, as a user runs them, with that process's peak
resident memory (os.wait4).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from resexp.rundir import RunDir

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
            copy = RunDir(target)
            summary = copy.read_summary()
            summary.seed = seed
            copy.write_summary(summary)


def timed(args: list[str]) -> tuple[float, int, float]:
    """Wall time (s), exit code and peak resident memory (MiB) of `resexp ARGS` in its own process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "resexp.cli", *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, child.returncode, usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("results/bench/readers_2000runs.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch, out = Path(scratch_name) / "runs", Path(scratch_name) / "out"
        build(args.sweep, scratch, args.runs)
        commands = {"table": ["table", str(scratch), "-o", str(out)], "status": ["status", str(scratch)],
                    "figure": ["figure", str(scratch), "-o", str(out / "figure6.png")],
                    "report": ["report", str(scratch), "-o", str(out / "report")]}
        rows = [(name, *timed(words)) for name, words in commands.items()]
    lines = [
        f"# Readers of {args.runs} run folders",
        "",
        f"`python scripts/bench_readers.py SWEEP --runs {args.runs}`: the issue-28 fixture's runs copied "
        f"{args.runs // len(NETS)} times per net (plain and ResNet, depth 20 and 32), each command a process as a "
        "user runs it.",
        f"Measured on {platform.machine()} with {os.cpu_count()} cores, {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "| command | wall time (s) | peak resident memory (MiB) | exit |",
        "|---|---|---|---|",
        *(f"| `resexp {name}` | {wall:.1f} | {rss:.0f} | {rc} |" for name, wall, rc, rss in rows),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
