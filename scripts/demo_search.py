"""The search for a demo setting that shows both halves of Figure 6 on a 2-core CPU (issue 29).

    python scripts/demo_search.py NAME [NAME ...] [--seeds 0,1,2] [--root /tmp/demo_search]

Each NAME is a candidate of CANDIDATES: overrides of `resexp sweep demo`. For each, the sweep runs
(its own run.root, one process, as `make demo` runs it), then `resexp report` on it; the report and
a line of its verdicts and time go to results/demo/search/NAME/ (report.md, search.json), and
results/demo/search/README.md lists every candidate searched so far. The runs themselves stay in
--root (not committed).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "results" / "demo" / "search"
# What each candidate changes of configs/sweep/demo.yaml (width 0.5, batch 64, 500 iterations,
# 10,000 augmented synthetic images, warm-up over 100 iterations).
CANDIDATES: dict[str, list[str]] = {
    "demo_500it": [],
    "train2k_noaug_300it": ["data.train_size=2000", "data.augment=false", "trainer.max_iters=300"],
    "train1k_noaug_300it": ["data.train_size=1000", "data.augment=false", "trainer.max_iters=300"],
    "train1k_noaug_200it": ["data.train_size=1000", "data.augment=false", "trainer.max_iters=200"],
    "train2k_noaug_w025_500it": ["data.train_size=2000", "data.augment=false", "model.width=0.25",
                                 "trainer.max_iters=500"],
}
FAST = ["data.test_size=1000", "trainer.progress=none"]  # the test error is drawn, not tested: half the images


def verdicts(report: str) -> dict[str, str]:
    """The verdict cell of claims (a) and (b) in a report.md."""
    found = {}
    for line in report.splitlines():
        if m := re.match(r"\| \((a|b)\) .*\| ([^|]+) \|$", line):
            found[m.group(1)] = m.group(2).strip()
    return found


def final_errors(report: str) -> dict[str, str]:
    """Each net's final training errors (%) over its seeds, as the report lists them."""
    return {m.group(1): m.group(2) for line in report.splitlines()
            if (m := re.match(r"- (plain-\d+|ResNet-\d+): ([\d., ]+)$", line))}


def run(name: str, seeds: str, root: Path) -> dict:
    overrides = [*CANDIDATES[name], *FAST, f"seed={seeds}", f"run.root={root / name}"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "resexp.cli", "sweep", "demo", *overrides], check=True)
    wall = time.perf_counter() - start
    out = OUT / name
    subprocess.run([sys.executable, "-m", "resexp.cli", "report", str(root / name / "sweeps" / "demo"),
                    "-o", str(out)], check=True)
    for drawn in out.glob("figure*"):  # the committed search keeps the report's text, not its figures
        drawn.unlink()
    report = (out / "report.md").read_text()
    result = {"name": name, "command": f"resexp sweep demo {' '.join(overrides[:-1])}", "seeds": seeds,
              "sweep_wall_s": round(wall, 1), "verdicts": verdicts(report), "final_train_error": final_errors(report)}
    (out / "search.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def write_index() -> None:
    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*/search.json"))]
    lines = ["# The demo search: a setting that shows both halves of Figure 6 on the 2-core CPU", "",
             "`python scripts/demo_search.py NAME ...` (candidates in the script): each candidate's sweep, "
             "`resexp report`'s verdicts on it, and the sweep's wall time on the 2-core CPU (the sweep alone, "
             "one run at a time). Each folder holds the candidate's report.md and search.json.", "",
             "| candidate | overrides of `resexp sweep demo` | seeds | sweep wall time (s) | (a) degradation | "
             "(b) no degradation with shortcuts |", "|---|---|---|---|---|---|"]
    for r in rows:
        changes = " ".join(CANDIDATES.get(r["name"], [])) or "(the demo as it was)"
        lines.append(f"| [{r['name']}]({r['name']}/report.md) | `{changes}` | {r['seeds']} | {r['sweep_wall_s']} | "
                     f"{r['verdicts'].get('a', '-')} | {r['verdicts'].get('b', '-')} |")
    (OUT / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(CANDIDATES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", type=Path, default=Path("/tmp/demo_search"))
    args = parser.parse_args()
    for name in args.names:
        result = run(name, args.seeds, args.root)
        print(json.dumps(result))
        write_index()


if __name__ == "__main__":
    main()
